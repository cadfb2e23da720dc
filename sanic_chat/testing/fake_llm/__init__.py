"""A local LLM server for tests, benchmarks and keyless frontend work.

It speaks three vendors' streaming formats (see :mod:`.formats`):

* OpenAI    ``POST /v1/chat/completions`` (also ``/chat/completions``): SSE of
  ``chat.completion.chunk``, a usage chunk when ``stream_options.include_usage``,
  then ``data: [DONE]``; a ``chat.completion`` JSON when ``stream`` is false.
* Anthropic ``POST /v1/messages``: SSE with ``event:`` lines (message_start,
  content_block_start, ping, content_block_delta..., content_block_stop,
  message_delta, message_stop); a ``message`` JSON when ``stream`` is false.
* Ollama    ``POST /api/chat``: NDJSON until ``"done": true`` (streams unless
  ``"stream": false``, as Ollama does).

Plus ``GET /_fake/stats`` (counters, the last request seen), ``POST /_fake/reset``
and ``GET /healthz``.

The reply is :func:`reply_tokens` of the last user message (directive removed):
deterministic, so a test can compute the exact text it must receive.

Directives: per-request behaviour, as ``key=value`` pairs separated by ``;``,
given in the ``X-Fake-LLM`` request header and/or in the last user message as
``[fake-llm: key=value; ...]`` (the message wins over the header, both win over
the server's defaults)::

    ttft_ms=0              pause before the first token (milliseconds)
    tps=100                tokens per second (0: as fast as possible)
    tokens=5               reply length in tokens (the request's max tokens caps it)
    key=t1                 the stats bucket of this request (default: the fault text)
    fault=status:503       answer this HTTP status with the vendor's error body
                           (429 carries Retry-After: <retry_after>)
    fault=cut:3            after 3 tokens, close the TCP connection mid-body
    fault=stall:2.5        stop sending for 2.5 s before token <at> (default 0), then go on
    fault=malformed:3      after 3 tokens, send a frame that is not valid JSON, then go on
    fault=error:3          after 3 tokens, send the vendor's in-stream error and end
                           (Anthropic: event: error, overloaded_error)
    at=3                   the token index of a stall
    retry_after=0.2        Retry-After of a 429 (seconds)
    error_type=api_error   the in-stream error's type
    fail_first=2           the fault hits only the first 2 attempts of this key

Built on a bare ``asyncio.Protocol`` (:mod:`.http`) and
timer callbacks, no coroutine per stream: one core streams 1,000 concurrent
replies at 40 tokens/s with room to spare.

Outside the runtime path: the server never imports this package; ``sanic-chat
fake-llm`` (:mod:`.cli`), the tests and the benchmarks do.

In tests: ``with FakeLLM(ttft_ms=0, tps=0) as fake: ... fake.base_url ...``
(its own thread), or ``server = await serve_fake_llm(...)`` (the running loop).
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cli import add_arguments, main_from_args, run_fake_llm
    from .directives import DirectiveError, FakeOptions, Fault
    from .server import (
        DIRECTIVE_HEADER,
        FakeLLM,
        FakeLLMServer,
        reply_text,
        reply_tokens,
        serve_fake_llm,
    )

__all__ = [
    "DIRECTIVE_HEADER",
    "DirectiveError",
    "FakeLLM",
    "FakeLLMServer",
    "FakeOptions",
    "Fault",
    "add_arguments",
    "main_from_args",
    "reply_text",
    "reply_tokens",
    "run_fake_llm",
    "serve_fake_llm",
]

# Names are loaded on first use (PEP 562): `sanic-chat serve` builds the command line,
# fake-llm's options included, without loading the fake server itself.
_HOMES = {
    "add_arguments": "cli",
    "main_from_args": "cli",
    "run_fake_llm": "cli",
    "DirectiveError": "directives",
    "FakeOptions": "directives",
    "Fault": "directives",
}


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    module = importlib.import_module(f".{_HOMES.get(name, 'server')}", __name__)
    return getattr(module, name)
