"""Test tools shipped with sanic-chat, outside its runtime path: the server never
imports this package (an import contract in pyproject.toml checks it).

:mod:`sanic_chat.testing.fake_llm`: a local LLM server speaking the OpenAI, Anthropic
and Ollama streaming formats, with faults on demand (``sanic-chat fake-llm``).
"""
