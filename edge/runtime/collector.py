"""Keep CPython's cyclic garbage collector off what a long-running process made while starting.

Why: the station agent and `edge central run` allocate steadily while they move bytes (a chunk's
request, its answer, its ledger entry...), so the collector runs often, and each of its full (oldest
generation) passes walks every object the process holds: the modules, the pydantic configuration
models and their validators, the store's and the server's set-up, tens of thousands of objects that
live as long as the process. Measured with perf during the upload benchmark: about 4 % of each
process's CPU in ``gc_collect_main``, ``visit_decref`` and ``visit_reachable``, nearly all of it
scanning those start-up objects again and again.

``gc.freeze()`` moves every object tracked at that moment into a permanent generation the collector
never walks. What it costs: a reference cycle among those objects that becomes garbage later is not
reclaimed (until ``gc.unfreeze()``); start-up objects live for the process's lifetime anyway, so that is
nothing here. Garbage already there is collected first, so none of it is kept for ever.

Call it once, from a process's own entry point (the command line), when the process has finished
starting; never from library code that a test process or an embedding program may run, whose objects
it would freeze too. The collector's thresholds stay CPython's own.
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
