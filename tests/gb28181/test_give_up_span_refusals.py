"""Issue 10's last findings: a recording's give-up span is counted from the failing tries themselves.

1. Copies a quota cut at the same byte (`stuck_disk_full`) gave a recording up once this run had *seen* them
   stuck for 48 h: ten refusals in three hours, then 46 hours with no try at all (the device offline, the
   station idle), and the first pass after the pause gave the recording up without trying it. The span must
   run from the first refusal to the latest one (on the wall and the monotonic clock), so a pause with no
   try never counts as failing; a refusal after it does bridge it (first to latest).
2. A UDP download the station's disk fell behind (`disk-slow`) gave the recording up after ten such
   interruptions with no span at all: ten within an hour gave it up for good. They obey the same span,
   and the given-up entry says over how many hours and how many.
3. The failed downloads (`FailedPasses`) already count from failure to failure: checked here with the same
   scenario.

Real media receiver, RTP over real TCP (the quota) and UDP (the stalled disk) sockets, real pipeline, ffmpeg
and store; the quota is review 28's `SpoolQuota` behind the receiver's `_write_all`, the stall the disk rig's
`StalledDisk`, the station's clocks the downloads' clock seam (`PassClock`), moved on between passes.
Controls: the same refusals spread over 48 h give the recording up."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.gb28181.media import FLUSH_BYTES, EndReason
from edge.gb28181.sessions import EndReason as SessionEnd
from edge.gb28181.sessions import SessionResult
from edge.sources.gb28181 import RecordingRef, Transfer
from edge.sources.gb28181.downloads import (
    FAILED_GIVE_UP_AFTER_S,
    MAX_FAILED_PASSES,
    MAX_INTERRUPTED_ATTEMPTS,
    FailedPasses,
)
from edge.sources.gb28181.give_up_span import FailingSpan, Since, TryTimes
from edge.sources.gb28181.recordings import INTERRUPTED_DISK_SLOW
from tests.gb28181.disk_rig import (
    PassClock,
    StalledDisk,
    as_scheduled,
    given_up_reasons,
    new_spool,
    receiver_ended,
    repeated_recording,
    station_downloads,
    udp_receiver,
)
from tests.gb28181.media_sender import send_udp
from tests.gb28181.test_review24_disk_full_give_up import RECORDING
from tests.gb28181.test_review28_quota_disk_full_loop import quota_passes
from tests.gb28181.test_review28_tight_retry_cut_again import stream

__all__ = ["stream"]  # review 28's module fixture: its long recording

QUOTA = 8 * FLUSH_BYTES  # the spool's quota: every try is refused at the same byte
MINUTES_20 = 20 * 60.0
HOURS = 3600.0
UDP_PORTS = (39300, 39399)
UDP_SSRC = 1100000610


# -- 1. the quota's stuck copies ------------------------------------------------------------------------


async def test_refusals_for_3_hours_then_46_hours_without_a_try_give_nothing_up(
        tmp_path: Path, stream: tuple[int, list[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    _size, packets = stream
    spool, device, clock = quota_passes(tmp_path, packets, monkeypatch, QUOTA)
    async with station_downloads(tmp_path, spool, device.start_download, clock=clock) as downloads:
        # eleven refusals 20 minutes apart: ten copies stuck at the first one's byte, over three hours
        for _ in range(MAX_INTERRUPTED_ATTEMPTS + 1):
            await downloads.download([RECORDING])
            clock.advance(MINUTES_20)
        clock.advance(46 * HOURS)  # the device offline, the station idle: no try at all
        after_pause = await downloads.download([RECORDING])
        given_up_after_pause = given_up_reasons(downloads)
        tries_after_pause = len(device.received)
        # Control: that try was refused again, 49 h after the first stuck one: the refusals span 48 h.
        clock.advance(MINUTES_20)
        last = await downloads.download([RECORDING])
        given_up_at_last = given_up_reasons(downloads)
    assert set(device.ended) == {EndReason.DISK_FULL}, device.ended  # the fault as modelled: the quota
    assert after_pause.given_up == [] and given_up_after_pause == [], (
        f"ten copies were refused at the same byte over three hours, then no try was made for 46 hours; the "
        f"first pass after the pause gave the recording up without trying it: {given_up_after_pause}")
    assert tries_after_pause == MAX_INTERRUPTED_ATTEMPTS + 2, "the pass after the pause tries it again"
    assert last.given_up == [RECORDING] and len(given_up_at_last) == 1, (last, given_up_at_last)
    assert "over 49 h" in given_up_at_last[0], given_up_at_last[0]
    assert len(device.received) == tries_after_pause, "given up: not tried at the last pass"


# -- 2. the station's disk falling behind UDP downloads --------------------------------------------------


@pytest.fixture(scope="module")
def udp_stream(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    return repeated_recording(tmp_path_factory.mktemp("src"), 24, UDP_SSRC)


class SlowDiskDevice:
    """A device streaming the recording over UDP into a real receiver whose disk stalls at every try
    (`StalledDisk`: the first write held until the receiver has ended `disk-slow`); the transfer's facts as
    the scheduler makes them (its own `_interruption` and `completeness`)."""

    def __init__(self, packets: list[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
        self.packets, self.monkeypatch = packets, monkeypatch
        self.ended: list[EndReason] = []

    async def start_download(self, ref: RecordingRef, raw_path: Path) -> Transfer:
        disk = StalledDisk()
        disk.install(self.monkeypatch)
        receiver = await udp_receiver(raw_path, ports=UDP_PORTS, ssrc=UDP_SSRC)
        try:
            await send_udp(self.packets, receiver.local_port, pace_every=16, pace_s=0.005)
            await receiver_ended(receiver)
        finally:
            disk.release()
        outcome = await receiver.close()
        self.ended.append(outcome.ended)
        result = SessionResult(call_id=f"{len(self.ended)}@station", end_reason=SessionEnd.FILE_END,
                               ssrc_offered=UDP_SSRC, ssrc_answered=UDP_SSRC, ssrc_answer_text=str(UDP_SSRC),
                               ssrc_used=UDP_SSRC, file_size_bytes=None, outcome=outcome)
        interrupted, check = as_scheduled(result, ref)
        if interrupted is not None and not check["complete"]:
            check["interrupted"] = interrupted
        return Transfer(outcome, {**result.facts(), **check})


async def _slow_disk_passes(tmp_path: Path, packets: list[bytes], monkeypatch: pytest.MonkeyPatch,
                            every_s: float) -> tuple[SlowDiskDevice, list[RecordingRef], list[str]]:
    """MAX_INTERRUPTED_ATTEMPTS passes, each download ended `disk-slow`, the clocks `every_s` apart, then one
    pass more: the device, the recordings that last pass gave up, and the given-up entries' reasons."""
    device = SlowDiskDevice(packets, monkeypatch)
    clock = PassClock()
    async with station_downloads(tmp_path, new_spool(tmp_path), device.start_download,
                                 clock=clock) as downloads:
        for _ in range(MAX_INTERRUPTED_ATTEMPTS):
            await downloads.download([RECORDING])
            clock.advance(every_s)
        last = await downloads.download([RECORDING])
        reasons = given_up_reasons(downloads)
    assert device.ended[:MAX_INTERRUPTED_ATTEMPTS] == [EndReason.DISK_SLOW] * MAX_INTERRUPTED_ATTEMPTS, (
        device.ended)  # the fault as modelled: the disk falling behind at every try
    return device, last.given_up, reasons


async def test_ten_disk_slow_interruptions_within_an_hour_give_nothing_up(
        tmp_path: Path, udp_stream: list[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    device, given_up, reasons = await _slow_disk_passes(tmp_path, udp_stream, monkeypatch, every_s=6 * 60.0)
    assert given_up == [] and reasons == [], (
        f"the station's disk fell behind ten UDP downloads within an hour ({INTERRUPTED_DISK_SLOW}): the "
        f"recording was given up for good though the disk could keep up an hour later: {reasons}")
    assert len(device.ended) == MAX_INTERRUPTED_ATTEMPTS + 1, "the last pass tries it again"


async def test_control_ten_disk_slow_interruptions_over_two_days_give_it_up(
        tmp_path: Path, udp_stream: list[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    device, given_up, reasons = await _slow_disk_passes(tmp_path, udp_stream, monkeypatch, every_s=6 * HOURS)
    assert given_up == [RECORDING] and len(reasons) == 1, (given_up, reasons)
    assert len(device.ended) == MAX_INTERRUPTED_ATTEMPTS, "given up: not tried at the last pass"
    # 10 tries 6 h apart: the first to the latest span 54 h, on both clocks
    assert "disk falling behind" in reasons[0] and "over 54 h" in reasons[0], reasons[0]
    assert f"{MAX_INTERRUPTED_ATTEMPTS} " in reasons[0], reasons[0]


# -- 3. the failed downloads -----------------------------------------------------------------------------


def _failed_passes_after(failures_s: list[float], look_at_s: float) -> tuple[bool, bool]:
    """`FailedPasses` with failures of RECORDING at these seconds (both clocks): whether one of them gave it
    up, and whether it is given up (not asked) at `look_at_s`."""
    now = [0.0]
    passes = FailedPasses(clock=lambda: 1_790_000_000.0 + now[0], monotonic=lambda: 1000.0 + now[0])
    gave_up = False
    for at in failures_s:
        now[0] = at
        gave_up |= passes.failed(RECORDING).given_up_at is not None
    now[0] = look_at_s
    return gave_up, passes.given_up(RECORDING)


def test_failures_for_3_hours_then_46_hours_without_a_try_give_nothing_up() -> None:
    failures = [n * 3 * HOURS / (MAX_FAILED_PASSES - 1) for n in range(MAX_FAILED_PASSES)]
    gave_up, given_up = _failed_passes_after(failures, look_at_s=49 * HOURS)
    assert not gave_up and not given_up, "a pause with no try counted as failing: the recording is not asked"


def test_control_failures_spread_over_two_days_give_it_up() -> None:
    failures = [n * FAILED_GIVE_UP_AFTER_S / (MAX_FAILED_PASSES - 1) for n in range(MAX_FAILED_PASSES)]
    gave_up, given_up = _failed_passes_after(failures, look_at_s=failures[-1] + HOURS)
    assert gave_up and given_up


# -- the rule itself, on both clocks ---------------------------------------------------------------------


def failing_span(refusals: list[Since]) -> FailingSpan | None:
    """The span `TryTimes` keeps of RECORDING's counted tries ended at `refusals`, in that order."""
    times = TryTimes()
    for n, ended in enumerate(refusals):
        times.tried(RECORDING, f"raw-{n}", ended)
    return times.of(RECORDING)


def test_a_wall_clock_stepped_forward_between_refusals_gives_nothing_up_early() -> None:
    # two days on the wall clock, an hour on the monotonic one: not failing for 48 h
    span = failing_span([Since(1_790_000_000.0, 1000.0), Since(1_790_000_000.0 + 49 * HOURS, 1000.0 + HOURS)])
    assert span is not None and not span.passed()
    # control: 49 h on both
    span = failing_span([Since(1_790_000_000.0, 1000.0),
                         Since(1_790_000_000.0 + 49 * HOURS, 1000.0 + 49 * HOURS)])
    assert span is not None and span.passed() and span.count == 2 and round(span.hours()) == 49


def test_a_wall_clock_stepped_back_before_the_first_refusal_starts_the_span_again() -> None:
    wall, mono = 1_790_000_000.0, 1000.0
    refusals = [Since(wall, mono), Since(wall - 30 * 86400, mono + 24 * HOURS),
                Since(wall - 30 * 86400 + 25 * HOURS, mono + 49 * HOURS)]
    span = failing_span(refusals)
    assert span is not None and span.first == refusals[1] and span.count == 2 and not span.passed()
