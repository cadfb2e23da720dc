"""The built-in offline model: pseudo text, one chunk per token, paced like a real one.

The reply is deterministic in the conversation's last user message (same prompt,
same reply) so tests and screenshots are stable, yet varies between prompts.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncGenerator

from ..core.ports import Chunk, CompletionRequest
from ..core.records import Usage

__all__ = ["DemoProvider", "demo_reply_words"]

_VOCABULARY = (
    "the a of to and in that is for it as with on this be by at from or an are "
    "stream token reply model answer question idea chat message server socket "
    "offset chunk resume conversation history user browser quick simple clear "
    "because therefore however indeed perhaps likely certainly often sometimes "
    "think note consider suppose remember explain describe show build test run "
    "small large fast slow early late first last next every each other same "
    "river mountain garden window lantern harbor meadow compass thunder ember "
    # not only ASCII: offsets count code points, and clients must agree
    "café naïve über déjà 🙂 🚀 日本"
).split()


def demo_reply_words(prompt: str, count: int) -> list[str]:
    """``count`` words seeded from ``prompt``: echo-ish, mixing the prompt's own
    words with a fixed vocabulary, with a full stop every so often."""
    seed = int.from_bytes(hashlib.sha256(prompt.encode("utf-8")).digest()[:8], "big")
    rng = random.Random(seed)
    echo = [w.strip(".,;:!?\"'()[]{}") for w in prompt.split()]
    echo = [w for w in echo if w]
    words: list[str] = []
    sentence_start = True
    for i in range(count):
        if echo and rng.random() < 0.3:
            word = echo[rng.randrange(len(echo))].lower()
        else:
            word = _VOCABULARY[rng.randrange(len(_VOCABULARY))]
        if sentence_start:
            word = word[:1].upper() + word[1:]
            sentence_start = False
        if i == count - 1 or rng.random() < 0.08:
            word += "."
            sentence_start = True
        words.append(word)
    return words


class DemoProvider:
    """Streams ``reply_tokens`` words after ``ttft_ms``, at ``tokens_per_second``.
    Each chunk is a word and the space that follows it (the last has none)."""

    provider = "demo"

    def __init__(
        self,
        name: str = "demo",
        *,
        ttft_ms: float = 150,
        tokens_per_second: float = 40,
        reply_tokens: int = 60,
    ) -> None:
        self.name = name
        self.ttft_ms = ttft_ms
        self.tokens_per_second = tokens_per_second
        self.reply_tokens = reply_tokens

    async def stream(self, request: CompletionRequest) -> AsyncGenerator[Chunk, None]:
        prompt = next((t.content for t in reversed(request.messages) if t.role == "user"), "")
        count = self.reply_tokens
        if request.max_tokens is not None:
            count = min(count, request.max_tokens)
        words = demo_reply_words(prompt, count)
        input_tokens = sum(len(t.content.split()) for t in request.messages)
        loop = asyncio.get_running_loop()
        interval = 1.0 / self.tokens_per_second if self.tokens_per_second > 0 else 0.0
        # Pace against a schedule, not with a fixed sleep per token, so that
        # event-loop lag does not accumulate into a slower stream.
        start = loop.time() + self.ttft_ms / 1000.0
        for i, word in enumerate(words):
            delay = start + i * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                await asyncio.sleep(0)
            yield Chunk(text=word if i == len(words) - 1 else word + " ")
        finish = "length" if count < self.reply_tokens else "stop"
        yield Chunk(
            usage=Usage(input_tokens=input_tokens, output_tokens=len(words)),
            finish_reason=finish,
        )

    async def aclose(self) -> None:
        return None
