"""Final review of issue 10 (rev10b): the give-up span of the station's disk troubles (`disk-slow`, stuck
disk-full copies) was computed over `TryTimes`, which kept only the newest 32 tries of a recording
(`MAX_TRIES_KEPT`, gone). A recording tried more often than 32 times in 48 h (a 4G recorder whose
registration flaps, a device that re-registers at will: every offline-to-online is a pass) never spanned 48 h
in what was kept, so it was never given up: every pass downloaded it again and sealed one more partial raw
PS + MP4 into the store, for ever. The rule must count from the first try of the run, not from the oldest
one kept.

Pure: the downloads' own `given_up_because` over `TryTimes` fed on its clock seams. Control: the same tries
at a pace of fewer than 32 in 48 h give the recording up."""

from __future__ import annotations

from edge.sources.gb28181.downloads import MAX_INTERRUPTED_ATTEMPTS, given_up_because
from edge.sources.gb28181.give_up_span import GIVE_UP_AFTER_S, TryTimes
from edge.sources.gb28181.recordings import INTERRUPTED_DISK_SLOW, SealedDownload
from tests.gb28181.test_review24_disk_full_give_up import RECORDING

HOURS = 3600.0
KEPT_BEFORE = 32  # the newest tries TryTimes kept before the fix (MAX_TRIES_KEPT, gone)
WALL0, MONO0 = 1_790_000_000.0, 1000.0


def _after_tries(count: int, every_s: float) -> tuple[str | None, float]:
    """`count` UDP downloads of RECORDING, each ended disk-slow and sealed, `every_s` apart on both clocks:
    why the next pass would not download it (None: it downloads it again), and the hours the tries span."""
    now = [0.0]
    times = TryTimes(clock=lambda: WALL0 + now[0], monotonic=lambda: MONO0 + now[0])
    sealed: list[SealedDownload] = []
    for n in range(count):
        now[0] = n * every_s
        item = f"raw-{n:04d}"
        sealed.append(SealedDownload(item=item, attempt=n + 1, complete=False,
                                     interrupted=INTERRUPTED_DISK_SLOW, incomplete="disk fell behind"))
        times.tried(RECORDING, item, times.now())
    return given_up_because(sealed, times.of(RECORDING)), (count - 1) * every_s / HOURS


def test_disk_slow_tries_every_90_minutes_for_three_days_are_given_up() -> None:
    # 48 tries 90 minutes apart: 70.5 h of tries, all disk-slow, more than MAX_INTERRUPTED_ATTEMPTS of them
    why, hours = _after_tries(48, 1.5 * HOURS)
    assert hours * HOURS > GIVE_UP_AFTER_S and MAX_INTERRUPTED_ATTEMPTS < 48
    assert why is not None, (
        f"48 disk-slow tries spanning {hours:.1f} h were kept as the newest {KEPT_BEFORE} only "
        f"({(KEPT_BEFORE - 1) * 1.5:.1f} h), so the recording is never given up: each pass seals another "
        "partial copy, for ever")


def test_control_disk_slow_tries_every_two_hours_are_given_up() -> None:
    why, _ = _after_tries(30, 2 * HOURS)  # 30 tries <= KEPT_BEFORE, spanning 58 h
    assert why is not None and "disk falling behind" in why, why
