"""The station's segment planner: segments fit the packet limit, carry their offset and SHA-256, are read
one at a time, and after a reconnect exactly the unacknowledged ones are sent again."""

from __future__ import annotations

import hashlib
import os
import random
import tracemalloc
from pathlib import Path

import pytest

from edge.mqtt.filetransfer import (
    FinCommand,
    InitCommand,
    Mode,
    ReasonCode,
    SegmentCommand,
    parse_command_topic,
    publish_packet_bytes,
)
from edge.mqtt.segments import (
    Action,
    PlanError,
    SegmentPlan,
    TransferProgress,
    action_for,
    iter_segments,
    plan_segments,
    read_segment,
    segment_bytes_for,
)

FILE_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"


def _write(path: Path, size: int, seed: int = 1) -> bytes:
    data = random.Random(seed).randbytes(size)
    path.write_bytes(data)
    return data


@pytest.mark.parametrize("limit", [300, 1000, 4096, 65536, 1024 * 1024, 268435455])
@pytest.mark.parametrize("file_size", [1, 999, 10**6, 5 * 10**12])
@pytest.mark.parametrize("properties", [0, 150])
def test_every_segment_packet_fits_and_the_largest_possible_is_chosen(
    limit: int, file_size: int, properties: int
) -> None:
    size = segment_bytes_for(FILE_ID, file_size, limit, properties_bytes=properties)
    plan = SegmentPlan(FILE_ID, file_size, size)
    # The worst topic: the last segment's offset (the longest number) with a checksum level.
    last_offset, _ = plan.bounds(plan.count - 1)
    for offset in (0, last_offset):
        topic = SegmentCommand(FILE_ID, offset, "f" * 64, Mode.ASYNC).topic
        assert publish_packet_bytes(topic, size, properties_bytes=properties) <= limit
    worst = SegmentCommand(FILE_ID, file_size - 1, "f" * 64, Mode.ASYNC).topic
    # One byte more would not fit the worst segment: the limit is used, not wasted.
    assert publish_packet_bytes(worst, size + 1, properties_bytes=properties) > limit


def test_a_limit_too_small_for_the_topic_is_refused_naming_the_sizes() -> None:
    with pytest.raises(PlanError, match=r"limit of 100 bytes leaves no room.*take 1\d\d bytes"):
        segment_bytes_for(FILE_ID, 10**6, 100)
    # Control: a little more room gives a one-byte segment.
    topic_cost = publish_packet_bytes(SegmentCommand(FILE_ID, 10**6 - 1, "0" * 64, Mode.ASYNC).topic, 0)
    assert segment_bytes_for(FILE_ID, 10**6, topic_cost + 1) == 1


def test_preferred_size_caps_the_segment() -> None:
    assert segment_bytes_for(FILE_ID, 10**6, 1024 * 1024, preferred_bytes=4096) == 4096


def test_segments_cover_the_file_exactly_with_their_sha256(tmp_path: Path) -> None:
    path = tmp_path / "item.mp4"
    data = _write(path, 10_007)
    plan = plan_segments(FILE_ID, len(data), 1200, mode=Mode.SYNC)
    fd = os.open(path, os.O_RDONLY)
    try:
        segments = list(iter_segments(fd, plan, range(plan.count)))
    finally:
        os.close(fd)
    assert b"".join(s.data for s in segments) == data
    expected_offset = 0
    for segment in segments:
        assert segment.offset == expected_offset
        assert segment.command.checksum == hashlib.sha256(segment.data).hexdigest()
        # The topic the sender publishes parses back to the same command.
        assert parse_command_topic(segment.command.topic) == segment.command
        assert publish_packet_bytes(segment.command.topic, len(segment.data)) <= 1200
        expected_offset += len(segment.data)
    assert plan.fin_command(hashlib.sha256(data).hexdigest()) == FinCommand(
        FILE_ID, len(data), hashlib.sha256(data).hexdigest(), Mode.SYNC
    )
    assert plan.init_command() == InitCommand(FILE_ID, Mode.SYNC)


def test_an_empty_file_has_no_segments() -> None:
    plan = SegmentPlan(FILE_ID, 0, 1000)
    assert plan.count == 0
    progress = TransferProgress(plan)
    assert progress.complete and list(progress.missing()) == []


def test_a_file_shorter_than_its_plan_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "item.mp4"
    _write(path, 5000)
    plan = SegmentPlan(FILE_ID, 5000, 1000)
    os.truncate(path, 4500)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert len(read_segment(fd, plan, 3).data) == 1000  # control: before the cut
        with pytest.raises(PlanError, match="ends at 4500 bytes, the plan says 5000"):
            read_segment(fd, plan, 4)
    finally:
        os.close(fd)


def test_reading_a_segment_costs_one_segment_whatever_the_file_size(tmp_path: Path) -> None:
    """Memory is bounded by the segment, not the file: 64 MiB costs what 4 MiB costs (control: reading the
    whole file shows up in the same measurement)."""

    def peak_of_sending(size: int) -> int:
        path = tmp_path / f"f{size}"
        with path.open("wb") as out:
            block = os.urandom(1 << 20)
            for _ in range(size >> 20):
                out.write(block)
        plan = SegmentPlan(FILE_ID, size, 256 * 1024)
        fd = os.open(path, os.O_RDONLY)
        tracemalloc.start()
        try:
            for segment in iter_segments(fd, plan, range(plan.count)):
                del segment
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            os.close(fd)
            path.unlink()

    small, large = peak_of_sending(4 << 20), peak_of_sending(64 << 20)
    assert large < 2 * small + (64 << 10)
    assert large < 2 * 256 * 1024 + (256 << 10)
    # Control: the measurement sees a whole-file read.
    path = tmp_path / "control"
    path.write_bytes(b"\0" * (16 << 20))
    tracemalloc.start()
    try:
        path.read_bytes()
        whole = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert whole >= 16 << 20


# -- resume --------------------------------------------------------------------------------------------


def test_after_a_reconnect_exactly_the_unacknowledged_segments_are_resent() -> None:
    plan = SegmentPlan(FILE_ID, 10 * 1000 + 1, 1000)  # 11 segments, the last of 1 byte
    progress = TransferProgress(plan)
    assert list(progress.missing()) == list(range(11))
    acked = [0, 1, 2, 5, 8, 10]
    for index in acked:
        offset, _ = plan.bounds(index)
        assert progress.apply(SegmentCommand(FILE_ID, offset, "a" * 64), ReasonCode.SUCCESS) is Action.DONE
    # A duplicate result (a resend answered twice) changes nothing.
    assert not progress.acknowledge(5000)
    assert list(progress.missing()) == [3, 4, 6, 7, 9]
    assert not progress.complete
    # The progress survives a station restart.
    again = TransferProgress(plan, progress.to_bytes())
    assert list(again.missing()) == [3, 4, 6, 7, 9] and again.acknowledged == 6
    for index in (3, 4, 6, 7, 9):
        again.acknowledge(plan.bounds(index)[0])
    assert again.complete and list(again.missing()) == []


def test_missing_finds_the_one_gap_of_a_mostly_acknowledged_plan() -> None:
    plan = SegmentPlan(FILE_ID, 8 * 10**6, 1000)  # 8000 segments, one bit each: 1000 bytes of progress
    progress = TransferProgress(plan, b"\xff" * 999 + b"\x7f")
    assert list(progress.missing()) == [7999]
    assert progress.acknowledged == 7999


def test_results_follow_the_documented_reason_codes() -> None:
    segment = SegmentCommand(FILE_ID, 0)
    fin = FinCommand(FILE_ID, 10)
    init = InitCommand(FILE_ID)
    assert action_for(segment, ReasonCode.SUCCESS) is Action.DONE
    assert action_for(segment, ReasonCode.RETRANSMIT_ALL) is Action.RESEND_ALL
    assert action_for(segment, ReasonCode.RESEND) is Action.RESEND_COMMAND
    assert action_for(fin, ReasonCode.RESEND) is Action.RESEND_ALL
    assert action_for(init, ReasonCode.RESEND) is Action.RESEND_COMMAND
    assert action_for(segment, ReasonCode.CANCEL) is Action.CANCEL
    assert action_for(segment, ReasonCode.QUOTA_EXCEEDED) is Action.PAUSE_AND_RESEND


def test_a_resend_all_result_forgets_every_acknowledgement() -> None:
    plan = SegmentPlan(FILE_ID, 3000, 1000)
    progress = TransferProgress(plan)
    for offset in (0, 1000, 2000):
        progress.acknowledge(offset)
    assert progress.complete
    assert progress.apply(FinCommand(FILE_ID, 3000, "b" * 64), ReasonCode.RESEND) is Action.RESEND_ALL
    assert list(progress.missing()) == [0, 1, 2]
    progress.acknowledge(1000)
    # A failed segment is no longer counted as stored.
    assert progress.apply(SegmentCommand(FILE_ID, 1000), ReasonCode.RESEND) is Action.RESEND_COMMAND
    assert list(progress.missing()) == [0, 1, 2]


def test_results_that_do_not_fit_the_plan_are_refused() -> None:
    plan = SegmentPlan(FILE_ID, 3000, 1000)
    progress = TransferProgress(plan)
    with pytest.raises(PlanError, match="not the start of a segment"):
        progress.apply(SegmentCommand(FILE_ID, 1500), ReasonCode.SUCCESS)
    with pytest.raises(PlanError, match="not the start of a segment"):
        progress.acknowledge(3000)
    with pytest.raises(PlanError, match="applied to the transfer of"):
        progress.apply(SegmentCommand("other", 0), ReasonCode.SUCCESS)
    with pytest.raises(PlanError, match="fin result for 2999 bytes"):
        progress.apply(FinCommand(FILE_ID, 2999), ReasonCode.SUCCESS)
    assert progress.acknowledged == 0
    with pytest.raises(PlanError, match="saved progress has 2 bytes"):
        TransferProgress(plan, b"\x00\x00")
    with pytest.raises(PlanError, match="beyond the plan"):
        TransferProgress(plan, b"\x08")
