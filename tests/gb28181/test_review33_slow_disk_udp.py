"""Review 33, finding 3: a UDP download that outruns the station's stalled disk is not the recording's fault.

Over UDP the receiver cannot slow the device: when the station's disk stalls longer than the receiver's write
buffer lasts (a loaded box, NFS latency), the session must end before later packets are lost. It ended
`error`, which the scheduler does not take for the station's doing: the copy counted as the recording's
incomplete attempt, and three of those gave the recording up for good (downloads `MAX_INCOMPLETE_ATTEMPTS`),
though the recording was whole on the device and the disk caught up a moment later. Such an end is the
station's interruption: its own reason (`disk-slow`), counted like the other interruptions
(`MAX_INTERRUPTED_ATTEMPTS`), never toward the three incomplete attempts.

Real ffmpeg-made H.264 muxed into PS, RTP over a real UDP socket into a real receiver; the disk's stall is a
write held in the receiver's worker until the session has ended (`StalledDisk`: no timing premise); the
classification is the scheduler's own `_interruption` and `completeness`, the give-up the downloads' own
`given_up_because`. Controls: the same stream with the disk not stalled ends `closed`, complete; three copies
sealed incomplete with no interruption are given up; ten station interruptions are too, once their tries
span 48 h (issue 10's last review: test_give_up_span_refusals)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.gb28181.media import (
    EndReason,
    MediaOutcome,
)
from edge.gb28181.sessions import EndReason as SessionEnd
from edge.gb28181.sessions import SessionResult
from edge.sources.gb28181.downloads import MAX_INCOMPLETE_ATTEMPTS, MAX_INTERRUPTED_ATTEMPTS, given_up_because
from edge.sources.gb28181.give_up_span import FailingSpan, Since, TryTimes
from edge.sources.gb28181.recordings import SealedDownload
from tests.gb28181.disk_rig import StalledDisk, as_scheduled, receiver_ended, repeated_recording, udp_receiver
from tests.gb28181.media_sender import send_udp
from tests.gb28181.test_review24_disk_full_give_up import RECORDING

PORTS = (39200, 39299)
SSRC = 1100000533
STATION_SLOW = "disk-slow"  # the interruption's reason on the ledger (edge.sources.gb28181.recordings)


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    return repeated_recording(tmp_path_factory.mktemp("src"), 32, SSRC)


async def _udp_download(tmp_path: Path, packets: list[bytes], monkeypatch: pytest.MonkeyPatch, *,
                        stalled: bool) -> MediaOutcome:
    """The recording over UDP into a receiver whose write buffer is the least allowed (2 x FLUSH_BYTES);
    `stalled`: its first write is held until the session has ended (else released at once)."""
    disk = StalledDisk()
    disk.install(monkeypatch)
    if not stalled:
        disk.release()
    receiver = await udp_receiver(tmp_path / "rec.ps", ports=PORTS, ssrc=SSRC)
    try:
        await send_udp(packets, receiver.local_port, pace_every=16, pace_s=0.005)  # about 4 MB/s
        if stalled:
            await receiver_ended(receiver)
    finally:
        disk.release()
    return await receiver.close()


def _scheduled(outcome: MediaOutcome) -> tuple[str | None, dict[str, object]]:
    """The scheduler's own classification (device online, station not stopping) and verdict, the session
    ended by the device's MediaStatus 121."""
    result = SessionResult(call_id="review33-3@station", end_reason=SessionEnd.FILE_END, ssrc_offered=SSRC,
                           ssrc_answered=SSRC, ssrc_answer_text=str(SSRC), ssrc_used=SSRC,
                           file_size_bytes=None, outcome=outcome)
    return as_scheduled(result, RECORDING)


async def test_a_udp_download_outrunning_a_stalled_disk_is_the_stations_interruption(
        tmp_path: Path, stream: list[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    outcome = await _udp_download(tmp_path, stream, monkeypatch, stalled=True)
    interrupted, verdict = _scheduled(outcome)
    assert verdict["complete"] is False, verdict  # bytes were lost after the end: never a complete copy
    assert interrupted == STATION_SLOW, (
        f"the station's disk stalled during a UDP download longer than the receiver's write buffer lasts; "
        f"the receiver ended {outcome.ended.value!r} ({outcome.detail}) and the scheduler's `_interruption` "
        f"says {interrupted!r}: the copy is the recording's incomplete attempt, and three such stalls give "
        f"the recording up for good")
    assert outcome.ended.value == STATION_SLOW and "fell more than" in outcome.detail, outcome.detail
    raw = (tmp_path / "rec.ps").read_bytes()
    assert len(raw) == outcome.bytes_written == outcome.bytes, "what was taken is written whole"


async def test_control_the_same_udp_download_with_the_disk_keeping_up_is_complete(
        tmp_path: Path, stream: list[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    outcome = await _udp_download(tmp_path, stream, monkeypatch, stalled=False)
    interrupted, verdict = _scheduled(outcome)
    assert outcome.ended is EndReason.CLOSED and interrupted is None, (outcome.ended, outcome.detail)
    assert "media receiver ended" not in str(verdict.get("incomplete", "")), verdict


def _sealed(attempt: int, *, interrupted: str | None) -> SealedDownload:
    return SealedDownload(f"item-{attempt}", attempt, complete=False, interrupted=interrupted,
                          incomplete="the media receiver ended ...")


def test_three_station_stalls_do_not_give_the_recording_up() -> None:
    slow = [_sealed(n, interrupted=STATION_SLOW) for n in range(1, MAX_INCOMPLETE_ATTEMPTS + 1)]
    assert given_up_because(slow) is None


def test_control_three_incomplete_copies_are_given_up() -> None:
    incomplete = [_sealed(n, interrupted=None) for n in range(1, MAX_INCOMPLETE_ATTEMPTS + 1)]
    assert given_up_because(incomplete) is not None


def _tried(slow: list[SealedDownload], every_s: float) -> FailingSpan | None:
    """The span of their tries (`TryTimes`), `every_s` apart on both clocks."""
    times = TryTimes()
    for n, d in enumerate(slow):
        times.tried(RECORDING, d.item, Since(1_790_000_000.0 + n * every_s, 1000.0 + n * every_s))
    return times.of(RECORDING)


def test_station_stalls_count_like_the_other_interruptions_over_two_days() -> None:
    # Issue 10's last review: like the stuck disk-full copies, only once they span 48 h (first to latest try).
    slow = [_sealed(n, interrupted=STATION_SLOW) for n in range(1, MAX_INTERRUPTED_ATTEMPTS + 1)]
    why = given_up_because(slow, _tried(slow, 6 * 3600.0))
    assert why is not None and "disk falling behind" in why and "over 54 h" in why, why
    assert given_up_because(slow[:-1], _tried(slow, 6 * 3600.0)) is None
    assert given_up_because(slow, _tried(slow, 6 * 60.0)) is None, "ten stalls within an hour"
    assert given_up_because(slow) is None, "tries of an earlier run (no time known): the span starts again"
