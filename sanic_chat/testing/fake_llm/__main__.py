"""``python -m sanic_chat.testing.fake_llm``: the same as ``sanic-chat fake-llm``."""

import argparse

from . import __doc__ as _doc
from .cli import add_arguments, main_from_args

_parser = argparse.ArgumentParser(prog="fake-llm", description=(_doc or "").splitlines()[0])
add_arguments(_parser)
raise SystemExit(main_from_args(_parser.parse_args()))
