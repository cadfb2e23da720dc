"""Exponential backoff with jitter, for the loops that reconnect to Redis.

The first wait is ``min_s``, each failure doubles it up to ``max_s``; a success
(``reset``) starts over. Each sleep is jittered to 50-100 % of the current delay so
that every worker of every node does not reconnect in the same instant after an outage.
"""

from __future__ import annotations

import asyncio
import random

__all__ = ["Backoff"]


class Backoff:
    def __init__(self, min_s: float = 0.05, max_s: float = 5.0) -> None:
        self.min_s = min_s
        self.max_s = max_s
        self.delay_s = min_s
        #: failures since the last reset
        self.failures = 0

    def reset(self) -> None:
        self.delay_s = self.min_s
        self.failures = 0

    def failed(self) -> float:
        """Count one failure; the (jittered) seconds to wait before the next try."""
        self.failures += 1
        wait = self.delay_s * random.uniform(0.5, 1.0)
        self.delay_s = min(self.delay_s * 2, self.max_s)
        return wait

    async def sleep(self) -> None:
        """Count one failure and wait before the next try."""
        await asyncio.sleep(self.failed())
