"""Process-wide runtime tuning applied when a worker starts serving.

Python's cyclic garbage collector was the largest source of event-loop stalls
under load: in a 1,000-user benchmark run, at Python's thresholds (700, 10,
10), it ran about 1,070 times a minute for 6.1 s of CPU in all, and its full
collections stopped the loop for up to 407 ms (every task waits out such a
pause). Two measures, measured:

* Always: everything start-up created is *frozen* out of later collections
  (it lives as long as the process anyway), so a full collection scans only
  what serving created.
* Opt-in (``SANIC_CHAT_GC_THRESHOLD=20000,50,100``): collect in larger
  batches. At 1,000 users that cut collections to 25 a minute, about 1 s of
  CPU, pauses up to 91 ms -- but cyclic garbage then waits longer to be freed,
  and in a 30-minute soak at 300 users the server's RSS grew 24 % from the
  run's second quarter to its last (291 to 361 MB) where Python's thresholds
  level off. Latency or memory: the default keeps memory flat.

That soak was run while every reply still left about 20 objects in reference
cycles (httpx's streamed response and its body; an aiopg cursor and its
transaction helper), which only a collection frees: those are gone now
(``providers/http.py:unbind_stream``, ``store/database.py:_Cursor``), which
removes the likeliest cause, but the batched thresholds were not soaked
again. A 40 s probe at 800 users with them spent 0.4 s collecting instead of
2.2 s, with no better p99 first chunk: the loop's other work dominates now.
"""

from __future__ import annotations

import gc
import logging
import resource

__all__ = ["BATCHED_GC_THRESHOLD", "raise_open_files_limit", "tune_garbage_collector"]

log = logging.getLogger(__name__)

#: allocations before a young-generation pass, and young/middle passes before
#: the next older one, for fewer, larger collections (Python's own: 700, 10, 10)
BATCHED_GC_THRESHOLD = (20_000, 50, 100)


def tune_garbage_collector(threshold: tuple[int, int, int] | None = None) -> None:
    """Freeze what exists now out of every future collection, then set
    ``threshold`` (None: keep Python's)."""
    gc.collect()
    gc.freeze()
    if threshold is not None:
        gc.set_threshold(*threshold)
    log.debug(
        "garbage collector: %d objects frozen, threshold %s", gc.get_freeze_count(), threshold
    )


#: never ask for more descriptors than this, even when the hard limit is unlimited
_MOST_OPEN_FILES = 1_048_576


def raise_open_files_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit (where the
    system allows) and return the soft limit now in force.

    Every connection holds a descriptor, and a common default soft limit is
    1,024: a thousand idle or half-open connections would then refuse everyone
    else. Raising the soft limit needs no privilege; the hard limit is the
    operator's (docs/deployment.md says how to set it).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = _MOST_OPEN_FILES if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (OSError, ValueError) as exc:  # e.g. above a kernel-wide maximum
            log.warning(
                "open files: could not raise the limit from %d to %d: %s", soft, wanted, exc
            )
        else:
            log.info("open files: soft limit raised from %d to %d", soft, wanted)
            return wanted
    log.debug("open files: soft limit %s (hard %s)", soft, hard)
    return soft
