"""Failed downloads (no session, no byte) are counted per recording toward a give-up (`FailedPasses`). Two
recordings listed with the same channel, times and path but another FileSize are two recordings (review
26): the failures of one must not give the other up (review 28's doubtful note). Control: the same
recording listed again (same FileSize) is the one given up."""

from __future__ import annotations

from dataclasses import replace

from edge.sources.gb28181.downloads import FAILED_GIVE_UP_AFTER_S, MAX_FAILED_PASSES, FailedPasses
from tests.gb28181.test_review24_disk_full_give_up import RECORDING

FIRST = replace(RECORDING, file_size_bytes=1000)


def _given_up_after_first_fails(other_size: int) -> tuple[bool, bool]:
    now = [0.0]
    passes = FailedPasses(clock=lambda: now[0], monotonic=lambda: now[0])
    step = FAILED_GIVE_UP_AFTER_S / (MAX_FAILED_PASSES - 1)
    for _ in range(MAX_FAILED_PASSES):
        passes.failed(FIRST)
        now[0] += step
    now[0] -= step  # still within the day after the give-up
    return passes.given_up(FIRST), passes.given_up(replace(RECORDING, file_size_bytes=other_size))


def test_another_file_size_under_the_same_identity_is_not_given_up_with_it() -> None:
    first, other = _given_up_after_first_fails(2000)
    assert first and not other


def test_control_the_same_file_size_is_the_same_recording() -> None:
    assert _given_up_after_first_fails(1000) == (True, True)
