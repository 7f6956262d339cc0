"""Keep CPython's cyclic garbage collector off what a long-running process made while starting.

Why: each full (oldest-generation) collection walks every object the process holds, and most of them
were made while starting and live as long as the process: the modules, the pydantic configuration
models and their validators, the store's and the server's set-up (about 57 000 objects in the upload
benchmark's uplink process, 76 000 in `edge central run`; 20 to 30 ms of CPU per full collection
here). CPython starts one whenever the objects promoted since the last one exceed a quarter of those,
so a busy agent pays for walking its start-up objects again and again for as long as it runs.

``gc.freeze()`` moves every object tracked at that moment into a permanent generation the collector
never walks. What it costs: a reference cycle among those objects that becomes garbage later is not
reclaimed (until ``gc.unfreeze()``); start-up objects live for the process's lifetime anyway, so that is
nothing here. Garbage already there is collected first (one full collection, once), so none of it is
kept for ever.

What it does not change: the young-generation collections (measured with ``gc.callbacks`` during the
upload benchmark: about 0.06 CPU s per GiB in each process, the same frozen or not; no full collection
ran during a 512 MiB upload either way). Raising the thresholds to make those rarer was measured before
(README, the upload path) within this machine's noise, so they stay CPython's own.

Call it once, from a process's own entry point (the command line), when the process has finished
starting; never from library code that a test process or an embedding program may run, whose objects
it would freeze too.
"""

from __future__ import annotations

import gc
import logging

__all__ = ["freeze_start_up_objects"]

log = logging.getLogger(__name__)


def freeze_start_up_objects(what: str) -> int:
    """Collect the garbage start-up left, then move every object still alive into the collector's
    permanent generation. ``what`` names the process for the log line. Returns how many objects are
    frozen now (``gc.get_freeze_count()``)."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("%s started: %d objects moved out of the cyclic collector's reach", what, frozen)
    return frozen
