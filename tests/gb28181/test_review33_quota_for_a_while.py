"""Review 33, finding 4: giving a recording up after MAX_INTERRUPTED_ATTEMPTS stuck disk-full copies
(`stuck_disk_full`: a write refused with room showing, no further than an earlier copy) is permanent, and it
needed no time at all. A quota full only for a while (the store backing up while the uplink is down, a
user quota an operator raises in the morning) refuses every try at the same byte for a few hours; passes
every 20 minutes make ten such copies in under four hours, and the recording, which could be had a day
later, is given up for good. The stuck copies must span at least FAILED_GIVE_UP_AFTER_S (48 h) on the
station's wall clock and on its monotonic clock (as the failed-download give-up, review 21), and the
ledger's given-up entry says over how long.

Real media receiver with its guard, RTP over a real TCP connection, real pipeline, ffmpeg and store; the
quota is the receiver's `_write_all` seam (review 28's `SpoolQuota`: write(2) takes what fits, then
EDQUOT); the station's clocks are the downloads' clock seam, moved on between passes. Controls: the same
quota with passes 6 h apart (ten stuck copies over 54 h) gives the recording up, the entry naming the span;
the wall clock stepped two days ahead while the monotonic clock saw hours gives nothing up."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.gb28181.media import FLUSH_BYTES, EndReason
from edge.sources.gb28181.downloads import FAILED_GIVE_UP_AFTER_S, MAX_INTERRUPTED_ATTEMPTS
from tests.gb28181.disk_rig import given_up_reasons, station_downloads
from tests.gb28181.test_review24_disk_full_give_up import RECORDING
from tests.gb28181.test_review28_quota_disk_full_loop import quota_passes
from tests.gb28181.test_review28_tight_retry_cut_again import stream

__all__ = ["stream"]  # review 28's module fixture: its long recording

PASSES = MAX_INTERRUPTED_ATTEMPTS + 3
QUOTA = 8 * FLUSH_BYTES  # the spool's quota: every try is refused at the same byte
MINUTES_20 = 20 * 60.0
HOURS_6 = 6 * 3600.0


async def _passes(tmp_path: Path, stream: tuple[int, list[bytes]], monkeypatch: pytest.MonkeyPatch, *,
                  every_s: float, wall_every_s: float | None = None) -> tuple[int, list[str]]:
    """PASSES passes over RECORDING under the quota, the station's clocks `every_s` apart (the wall clock
    `wall_every_s`, when given): how many downloads were made, and the reasons of the given-up entries."""
    _size, packets = stream
    spool, device, clock = quota_passes(tmp_path, packets, monkeypatch, QUOTA)
    async with station_downloads(tmp_path, spool, device.start_download, clock=clock) as downloads:
        for _ in range(PASSES):
            await downloads.download([RECORDING])
            clock.advance(every_s, wall_s=wall_every_s)
        given_up = given_up_reasons(downloads)
    assert set(device.ended) == {EndReason.DISK_FULL}, device.ended  # the fault as modelled: the quota
    assert all(refused == "EDQUOT" for refused, _free in device.refused), device.refused
    return len(device.received), given_up


async def test_a_quota_full_for_a_few_hours_does_not_give_the_recording_up(
        tmp_path: Path, stream: tuple[int, list[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    downloads, given_up = await _passes(tmp_path, stream, monkeypatch, every_s=MINUTES_20)
    span_h = (PASSES - 1) * MINUTES_20 / 3600
    assert given_up == [] and downloads == PASSES, (
        f"a quota refused every try at the same byte for {span_h:.1f} h (passes every 20 minutes); after "
        f"{downloads} downloads the recording was given up for good, though the quota could free a day "
        f"later: {given_up}")


async def test_control_a_quota_refusing_over_two_days_gives_the_recording_up(
        tmp_path: Path, stream: tuple[int, list[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    downloads, given_up = await _passes(tmp_path, stream, monkeypatch, every_s=HOURS_6)
    assert downloads < PASSES and len(given_up) == 1, (downloads, given_up)
    assert f"{FAILED_GIVE_UP_AFTER_S / 3600:.0f} h" in given_up[0], given_up[0]


async def test_a_wall_clock_step_alone_gives_nothing_up(
        tmp_path: Path, stream: tuple[int, list[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    # the monotonic clock sees 20 minutes a pass, the wall clock six hours (a clock stepped ahead, again)
    downloads, given_up = await _passes(tmp_path, stream, monkeypatch, every_s=MINUTES_20,
                                        wall_every_s=HOURS_6)
    assert given_up == [] and downloads == PASSES, (downloads, given_up)
