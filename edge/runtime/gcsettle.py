"""Garbage-collector settings for the long-running processes (the station agent, ``edge central``).

After start-up the heap holds a few hundred thousand long-lived objects (modules, classes, pydantic
schemas, the app's routes) that the cyclic collector would otherwise walk again on every full
collection for the life of the process. :func:`settle_after_startup` moves them into the permanent
generation (:func:`gc.freeze`) and raises the youngest generation's threshold: the upload path allocates
many short-lived container objects per request (futures, handles, coroutine frames), and with the default
threshold of 700 the collector runs every few hundred of them. Reference counting frees almost all of
them anyway; the collector is kept on (on a larger batch) for the reference cycles some leave behind.
Measured with ``tests/bench/upload.py`` (README, "CPU per GiB").
"""

from __future__ import annotations

import gc
from typing import Final

__all__ = ["GEN0_THRESHOLD", "settle_after_startup"]

# Allocations minus deallocations of container objects between young collections (the default is 700).
# 50 000 of them are a few MiB at most between collections.
GEN0_THRESHOLD: Final = 50_000

_settled = False


def settle_after_startup() -> None:
    """Freeze what start-up built and raise the young generation's threshold (once per process)."""
    global _settled
    if _settled:
        return
    _settled = True
    gc.collect()  # what start-up left as garbage is not frozen for good
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
