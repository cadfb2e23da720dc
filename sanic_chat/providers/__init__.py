"""Model providers: the models file (:mod:`.catalog`), the built-in demo model,
and OpenAI, Anthropic and Ollama streaming clients over httpx."""

from .catalog import ConfigError, ModelCatalog, load_catalog
from .demo import DemoProvider
from .spec import ModelSpec

__all__ = ["ConfigError", "DemoProvider", "ModelCatalog", "ModelSpec", "load_catalog"]
