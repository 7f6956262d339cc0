"""Review 21 (MEDIUM): the allowance for a device clock's ordinary drift is lost at an agent restart.

A measurement may differ from the open stretch's offset by `CLOCK_STEP_TOLERANCE_S` (+ the round trip)
plus `CLOCK_DRIFT_S_PER_DAY` for each day since the last measurement that matched it; beyond, the clock
stepped by itself and the stretch is closed. That last match was kept in memory only: after a restart the
restored stretch had no allowance at all, so a week of a crystal's ordinary drift (10 s: ~17 ppm) read as
a step, whose window (not measured in this run) went back to the setting that began the stretch, and every
recording made since that setting lost its offset (`device_clock_unknown`: ambiguous).

The platform's own save and load of the history (edge.gb28181.platform, edge.gb28181.clock_history, real
files) around the registry's measurements, at station times a week apart (the registry takes the station
time of each measurement; the platform passes the answer's)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge.gb28181 import clock_history
from edge.gb28181.platform import GbPlatform
from edge.gb28181.registry import CLOCK_STEP_TOLERANCE_S, ClockStep

from .platform_peer import FakeClock, Ledger, platform_settings

DEVICE = "34020000001320000061"
SET_AT = 1_790_000_000.0  # the station set the device's clock then (it was an hour ahead)
WEEK_S = 7 * 86400.0
DRIFT_S = 10.0  # a week of ~17 ppm: beyond the step tolerance, within the drift allowed (2 s a day)


def _platform(history: Path, ledger: Ledger | None = None) -> GbPlatform:
    return GbPlatform(platform_settings({DEVICE: "x"}), record=ledger or Ledger(), clock_trusted=lambda: True,
                      clock=FakeClock(), clock_history_dir=history)


def _first_run(history: Path) -> GbPlatform:
    """The run that set the clock and measured it right after (each saved, as the platform does)."""
    platform = _platform(history)
    platform._load_clock_history(DEVICE)
    platform.registry.clock_measured(DEVICE, 3600.0, "m0", station_now_s=SET_AT - 60)
    platform.registry.clock_set(DEVICE, SET_AT)
    platform._save_clock_history(DEVICE)
    assert platform.registry.clock_measured(DEVICE, 0.3, "m1", station_now_s=SET_AT + 60) is None
    platform._save_clock_history(DEVICE)
    return platform


def _a_week_later(platform: GbPlatform) -> tuple[ClockStep | object, int | None, str | None]:
    """The device measured a week after, drifted `DRIFT_S`; the reading of a recording it made three days
    after the setting."""
    now_s = SET_AT + WEEK_S
    measured = platform.registry.clock_measured(DEVICE, 0.3 + DRIFT_S, "m2", station_now_s=now_s)
    reading = platform.registry.clock_reading_at(DEVICE, SET_AT + 3 * 86400, now_s=now_s)
    offset_ms = None if reading.offset_s is None else round(reading.offset_s * 1000)
    return measured, offset_ms, None if reading.unknown is None else reading.unknown.value


def test_a_weeks_drift_after_a_restart_is_not_a_step(tmp_path: Path) -> None:
    history = tmp_path / "gb28181-clocks"
    _first_run(history)
    ledger = Ledger()
    restarted = _platform(history, ledger)  # the agent restarted: the history is all it knows
    restarted._load_clock_history(DEVICE)
    measured, offset_ms, why = _a_week_later(restarted)
    assert not isinstance(measured, ClockStep), (
        f"after a restart, a week's ordinary drift ({DRIFT_S:g} s, tolerance {CLOCK_STEP_TOLERANCE_S:g} s + "
        f"2 s a day) reads as a clock step: {measured}")
    assert why is None and offset_ms is not None and abs(offset_ms - (0.3 + DRIFT_S) * 1000) < 1, (
        f"a recording made three days after the setting loses its offset after a restart: {why}")
    assert not ledger.of("error")  # the history was read


def test_control_the_same_drift_without_a_restart_is_not_a_step(tmp_path: Path) -> None:
    platform = _first_run(tmp_path / "gb28181-clocks")
    measured, offset_ms, why = _a_week_later(platform)
    assert measured is None and why is None and offset_ms is not None


def test_control_a_step_after_a_restart_is_still_a_step_with_its_window_from_the_last_match(
        tmp_path: Path) -> None:
    """The allowance does not hide a real step: an hour's jump a week after is one, and its window begins
    at the last measurement that matched (the first run's, from the history), not at the restart."""
    history = tmp_path / "gb28181-clocks"
    _first_run(history)
    restarted = _platform(history)
    restarted._load_clock_history(DEVICE)
    step = restarted.registry.clock_measured(DEVICE, -3600.0, "m2", station_now_s=SET_AT + WEEK_S)
    assert isinstance(step, ClockStep) and step.after_s == SET_AT + 60 and step.before_s == SET_AT + WEEK_S


def test_the_history_keeps_when_each_stretch_was_last_matched(tmp_path: Path) -> None:
    history = tmp_path / "gb28181-clocks"
    _first_run(history)
    document = json.loads((history / f"{DEVICE}.json").read_bytes())
    assert document["version"] == 3
    assert [e["matched_at_s"] for e in document["epochs"]] == [SET_AT - 60, SET_AT + 60]


def test_a_version_2_file_is_read_with_no_match_known(tmp_path: Path) -> None:
    """A file of the previous format (no `matched_at_s`) is read: its stretches are restored, and since
    when each was last matched is unknown, so no drift is allowed for the first measurement (the behaviour
    of version 2 itself, once); that measurement writes version 3."""
    history = tmp_path / "gb28181-clocks"
    history.mkdir(mode=0o700)
    (history / f"{DEVICE}.json").write_text(json.dumps({
        "version": 2, "device_id": DEVICE, "history_from_s": None, "utc_offset_minutes": 480,
        "epochs": [{"offset_s": 3600.0, "started_at_device_s": None, "ended_at_device_s": SET_AT + 3600.0},
                   {"offset_s": 0.3, "started_at_device_s": SET_AT, "ended_at_device_s": None}]}))
    epochs, _ = clock_history.load(history, DEVICE, utc_offset_minutes=480) or ([], None)
    assert [e.offset_s for e in epochs] == [3600.0, 0.3] and all(e.matched_at_s is None for e in epochs)
    restarted = _platform(history)
    restarted._load_clock_history(DEVICE)
    assert restarted.registry.clock_measured(DEVICE, 0.5, "m2", station_now_s=SET_AT + WEEK_S) is None
    restarted._save_clock_history(DEVICE)
    document = json.loads((history / f"{DEVICE}.json").read_bytes())
    assert document["version"] == 3 and document["epochs"][-1]["matched_at_s"] == SET_AT + WEEK_S


def _v3(**epoch: object) -> bytes:
    item: dict[str, object] = {"offset_s": 0.3, "started_at_device_s": SET_AT, "ended_at_device_s": None,
                               "matched_at_s": SET_AT}
    item.update(epoch)
    return json.dumps({"version": 3, "device_id": DEVICE, "history_from_s": None, "utc_offset_minutes": 480,
                       "epochs": [item]}).encode()


@pytest.mark.parametrize("damage", [
    _v3(matched_at_s="1790000000"), _v3(matched_at_s=True), _v3(matched_at_s=float("inf")),
    _v3(matched_at_s=SET_AT, offset_s=None),  # matched by a measurement, with no offset
    _v3().replace(b'"matched_at_s"', b'"matched_at"'),  # a field of no version
    _v3().replace(b'"version": 3', b'"version": 2'),  # version 2 had no matched_at_s
    _v3().replace(b'"version": 3', b'"version": true'),
    _v3().replace(b'"version": 3', b'"version": 4'),
])
def test_a_damaged_version_3_history_is_refused(damage: bytes) -> None:
    with pytest.raises(clock_history.ClockHistoryError):
        clock_history.decode(DEVICE, damage, utc_offset_minutes=480)


def test_control_an_intact_version_3_history_is_read() -> None:
    (epoch,), _ = clock_history.decode(DEVICE, _v3(), utc_offset_minutes=480)
    assert epoch.matched_at_s == SET_AT and epoch.offset_s == 0.3
