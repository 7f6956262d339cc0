"""Review 14: the multi-part answer assembler after review 12's fixes.

1. Its new per-answer bound (`max_answer_bytes` 4 MiB, about 5 400 record items as these are written)
   hands a legitimate RecordInfo answer of a busy recorder out incomplete: the parts after the bound are
   then dropped ("matches no query", the waiter is resolved), and nothing in the platform asks for the rest
   (`Platform.query_record_info` only logs a warning; no caller splits the time range). The recordings
   past the bound are never listed, so never downloaded, and no ledger entry says so.
2. review 12's `test_the_assemblers_default_bounds_keep_its_memory_within_256_mib` feeds one part of 10 000
   items, which passes the per-answer bound at once: the answer is handed out before anything is measured,
   `one_answer_bytes` stays 0 and the test asserts 0 <= 256 MiB, which cannot fail. The test here measures
   what the assembler really holds when one source fills it to its bound, part by part.
"""

from __future__ import annotations

import contextlib
import gc
import tracemalloc

import pytest

from drivers.gb28181.manscdp import ManscdpError, MultipartAssembler
from tests.gb28181.test_review12_manscdp import part, record

SOURCE = "34020000001320000001"
PER_MESSAGE = 10  # what devices put in one RecordInfo MESSAGE over UDP (and the simulator's default)


@pytest.mark.parametrize("records", [4000, 6000], ids=["control-4000", "busy-recorder-6000"])
def test_a_busy_recorders_record_info_answer_is_assembled_whole(records: int) -> None:
    # One legitimate device, one query, SumNum parts of 10 in order: far within the per-source bound
    # (64 MiB) and the Annex N per-message limit (10 000 per message, not per answer).
    assembler = MultipartAssembler(timeout_s=60)
    answer = None
    sent = 0
    for first in range(0, records, PER_MESSAGE):
        items = tuple(record(i) for i in range(first, min(first + PER_MESSAGE, records)))
        answer = assembler.add(SOURCE, part(77, records, items), now_s=0.0)
        sent += len(items)
        if answer is not None:
            break
    assert answer is not None
    assert (answer.complete, len(answer.items), sent) == (True, records, records), (
        f"a device answering {records} records: handed out complete={answer.complete} with "
        f"{len(answer.items)} after {sent} were sent; the remaining parts are then dropped")


@pytest.mark.timeout(600)
def test_what_one_source_makes_the_assembler_hold_is_measured_and_within_its_estimate() -> None:
    # One source opens as many answers as it may (SumNum never reached) and fills each, part by part, to
    # just below the point where the assembler would hand it out (then it would free it): what stays held
    # is the worst this source can make it hold for the timeout.
    assembler = MultipartAssembler(timeout_s=60)
    part_items = 100
    margin = 2 * part_items * 2048  # two parts' worth of estimate, well above what one part costs
    gc.collect()
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        index = 0
        with contextlib.suppress(ManscdpError):
            for sn in range(1, 1000):
                answer_start = assembler.held_bytes
                while (assembler.held_bytes - answer_start + margin < 4 * 1024 * 1024
                       and assembler.held_bytes + margin < 64 * 1024 * 1024):
                    items = tuple(record(i) for i in range(index, index + part_items))
                    index += part_items
                    assert assembler.add(SOURCE, part(sn, 10**12, items), now_s=0.0) is None
                if assembler.held_bytes + margin >= 64 * 1024 * 1024:
                    break  # the source's bytes are full
        del items
        gc.collect()
        measured = tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()
    estimated = assembler.held_bytes
    assert measured > 16 * 1024 * 1024, f"only {measured} bytes measured: the test filled nothing"
    assert measured <= estimated <= 64 * 1024 * 1024, (measured, estimated)
    # All sources together are held to max_total_bytes of estimate, which is above the real figure.
    assert 256 * 1024 * 1024 * measured / estimated <= 256 * 1024 * 1024
