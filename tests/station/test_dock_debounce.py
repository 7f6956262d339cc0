"""Bay presence is debounced (edge.sources.usb.bay_presence): a bouncing bay switch or a hostile board makes
one ledger entry per settled state, with the number of raw events it stands for, and its LED does not
flicker; a real dock and undock are each recorded; a pull in the middle of a docking is recorded and shown
at once, and its PULLED pattern (and the pulled-early state) survive the bouncing that follows; events
still settling when the board goes are recorded then, as not settled (review R12). Review R5: 300 bounces
made 256 entries; a bay toggled just slower than the settle time made one per toggle, so a bay that
changes too often ([dock.bouncing] of the configuration) is bouncing: one error, a status flag, its own
BOUNCING LED pattern (ATTENTION on a board before dock protocol 3), recording with back-off (bounded a
day), until it holds still; docks and undocks at a person's pace are each still recorded.

The station, the bay board simulator on a real pty and the recorder bus are real (tests.station.harness).
"""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from drivers.serial.dock import BayLed
from edge.config.station import BouncingSection
from edge.custody.ledger import ENTRY_SALT
from edge.sources.usb.bay_leds import led_after_presence
from edge.sources.usb.bay_presence import (
    BAY_BURST_MAX_S,
    BAY_CALM_S,
    BAY_CHANGES_MAX,
    BAY_SETTLE_S,
    BOUNCE_REPORTS_PER_DAY_MAX,
    BayPresenceDebounce,
    Settled,
    bounce_reports_per_day_max,
)
from edge.sources.usb.offload import OffloadOutcome
from edge.station import BayView

from .harness import Station, eventually, simulated_station, spec


def dock_entries(station: Station, bay: int) -> list[tuple[str, dict[str, Any]]]:
    """The bay board's presence entries of `bay`, in ledger order (without the salt the ledger adds)."""
    assert station.agent.store is not None
    return [
        (e.type, {k: v for k, v in e.data.items() if k != ENTRY_SALT})
        for e in station.agent.store.ledger.entries()
        if e.type in ("device_connected", "device_removed") and e.data.get("source") == "dock"
        and e.data.get("bay") == bay
    ]


def raw_events(entries: list[tuple[str, dict[str, Any]]]) -> int:
    return sum(data.get("bay_events", 1) for _type, data in entries)


async def test_a_bouncing_bay_switch_makes_bounded_entries_and_real_dockings_are_kept(tmp_path: Path) -> None:
    async with simulated_station(tmp_path, []) as station:
        # A loaded machine may split the flood in up to 3 entries: with the dock and undock after it, 5
        # changes within the window would make the bay bouncing (tested on its own below), not this test.
        station.agent.bay_presence.changes_max = 8
        # Control first: a real dock on bay 2 is recorded (and shows the bay board is connected).
        station.dock.insert(2, charge_percent=80)
        await station.wait_ledger("device_connected", where=lambda d: d.get("bay") == 2)
        for _ in range(300):  # the reviewer's flood: a switch bouncing 300 times
            station.dock.insert(1, charge_percent=50)
            station.dock.remove(1)
        # Bay 2's undock comes down the same line after the burst and settles after it: once it is
        # recorded, every entry the burst makes is recorded too.
        station.dock.remove(2)
        await station.wait_ledger("device_removed", where=lambda d: d.get("bay") == 2)
        bay1 = dock_entries(station, 1)
        assert 1 <= len(bay1) <= 3, bay1  # one per settled state (a stalled line may split it)
        assert bay1[-1][0] == "device_removed", bay1  # where the bay settled: empty
        # The count is kept (the driver may drop what its queue cannot hold and report the difference
        # as one synthetic event, so not always all 600).
        assert raw_events(bay1) >= 200, bay1
        # The LED did not follow the bounces: the bay settled empty, and shows it once or twice.
        assert len(station.dock.led_history(1)) <= 3, station.dock.led_history(1)
        bay2 = dock_entries(station, 2)
        assert [t for t, _ in bay2] == ["device_connected", "device_removed"], bay2
        assert all("bay_events" not in d for _, d in bay2), bay2
        # Control: a real dock and undock on the bay that bounced are both recorded, one entry each.
        before = len(bay1)
        station.dock.insert(1, charge_percent=60)
        await station.wait_ledger(
            "device_connected", where=lambda d: d.get("bay") == 1 and d["charge_percent"] == 60
        )
        station.dock.remove(1)
        await eventually(lambda: len(dock_entries(station, 1)) == before + 2)
        assert [(t, d.get("bay_events")) for t, d in dock_entries(station, 1)[before:]] == [
            ("device_connected", None), ("device_removed", None)
        ]


async def test_a_pull_mid_copy_is_recorded_and_shown_at_once_and_kept_while_the_bay_bounces(
    tmp_path: Path,
) -> None:
    recorder = spec(0, files=4, file_mb=1)
    async with simulated_station(tmp_path, [recorder]) as station:
        station.agent.bay_presence.settle_s = 1.0  # a loaded machine's stall must not split the burst
        pulled: list[bool] = []

        def pull_mid_copy(view: BayView) -> None:
            # From the agent's own progress callback, so that the pull lands in the middle of the copy;
            # the agent's loop waits for it, so every frame below is on the line before it reads one.
            if pulled or view.device_serial != recorder.device_serial or view.progress.files_done < 1:
                return
            pulled.append(True)
            station.dock.remove(1)
            station.bus.unplug(recorder.device_serial)
            for _ in range(100):  # and the bay bounces: a worn switch, a board gone mad
                station.dock.insert(1, charge_percent=50)
                station.dock.remove(1)

        station.agent.on_progress = pull_mid_copy
        await station.dock_recorder(recorder.device_serial, 1)
        await station.wait_results(1)
        assert pulled
        assert station.agent.results[0].outcome is OffloadOutcome.DEVICE_GONE
        await station.wait_ledger("device_removed", where=lambda d: d.get("bay") == 1 and "bay_events" in d)
        entries = dock_entries(station, 1)
        # The dock, then the pull on its own (at once, not merged into the burst), then the burst.
        assert entries[0] == ("device_connected", {"bay": 1, "source": "dock", "charge_percent": 50})
        assert entries[1][0] == "device_removed" and "bay_events" not in entries[1][1], entries
        assert entries[-1][0] == "device_removed" and entries[-1][1]["bay_events"] > 1, entries
        assert raw_events(entries) == 1 + 1 + 200, entries  # every raw event is counted once
        # The bay showed PULLED from the pull on, through the bouncing and the session's own end.
        history = station.dock.led_history(1)
        assert BayLed.COPYING in history and BayLed.PULLED in history, history
        after_pull = history[history.index(BayLed.PULLED):]
        assert set(after_pull) == {BayLed.PULLED}, history
        assert station.dock.led(1) is BayLed.PULLED
        await eventually(lambda: (station.agent.status.bay("1") or {}).get("error_class") == "pulled_early")
        # Control: putting it back (one clean insertion) does change the LED: the bay is ready again.
        told = len(history)
        station.dock.insert(1, charge_percent=55)
        assert await station.led_shows(1, BayLed.IDLE)
        assert station.dock.led_history(1)[told:] == [BayLed.IDLE]


async def test_error_patterns_survive_a_bay_that_bounces_after_them(tmp_path: Path) -> None:
    # The recorders stay in their bays (per USB); the bay switches bounce afterwards, settling present.
    stranger, wrong = spec(1), spec(2, password="999999")
    allow = [{"device_serial": wrong.device_serial, "usb_serial": wrong.usb_serial}]
    async with simulated_station(tmp_path, [stranger, wrong], recorders={"allow": allow}) as station:
        station.agent.bay_presence.settle_s = 1.0  # a loaded machine's stall must not split the bursts
        await station.dock_recorder(stranger.device_serial, 2)
        await station.dock_recorder(wrong.device_serial, 3)
        patterns = {2: BayLed.DENIED, 3: BayLed.PASSWORD}
        for bay, led in patterns.items():
            assert await station.led_shows(bay, led), station.dock.led_history(bay)
        told = {bay: len(station.dock.led_history(bay)) for bay in patterns}
        for _ in range(50):
            for bay in patterns:
                station.dock.remove(bay)
                station.dock.insert(bay, charge_percent=50)
        # The bursts have settled once a clean dock on another bay, after them on the same line, is
        # recorded (it settles last).
        station.dock.insert(5, charge_percent=90)
        await station.wait_ledger("device_connected", where=lambda d: d.get("bay") == 5)
        for bay, led in patterns.items():
            assert station.dock.led(bay) is led, station.dock.led_history(bay)
            assert set(station.dock.led_history(bay)[told[bay]:]) <= {led}, station.dock.led_history(bay)
            assert raw_events(dock_entries(station, bay)) == 1 + 100, dock_entries(station, bay)


async def test_events_still_settling_when_the_board_is_lost_are_recorded_then(tmp_path: Path) -> None:
    async with simulated_station(tmp_path, []) as station:
        # Nothing settles by itself in this test: only the board going can hand the burst over.
        station.agent.bay_presence.settle_s = station.agent.bay_presence.burst_max_s = 3600
        await eventually(lambda: station.agent.dock is not None)  # the board is open and read
        station.dock.insert(2, charge_percent=70)
        station.dock.remove(2)
        station.dock.insert(2, charge_percent=71)
        await eventually(lambda: station.agent.bay_presence.settling(2) == 3)
        assert dock_entries(station, 2) == []
        station.dock.silent = True  # the board stops answering: the link is declared lost
        await station.wait_ledger("error", where=lambda d: "dock lost" in d.get("reason", ""))
        assert dock_entries(station, 2) == [("device_connected", {
            "bay": 2, "source": "dock", "charge_percent": 71, "bay_events": 3, "settled": False,
            "cut_by": "board lost",
        })]


async def test_events_still_settling_when_the_station_stops_are_recorded_before_it_stops(
    tmp_path: Path,
) -> None:
    async with simulated_station(tmp_path, []) as station:
        station.agent.bay_presence.settle_s = station.agent.bay_presence.burst_max_s = 3600
        await eventually(lambda: station.agent.dock is not None)  # the board is open and read
        station.dock.insert(3, charge_percent=40)
        await eventually(lambda: station.agent.bay_presence.settling(3) == 1)
    conn = sqlite3.connect(f"file:{tmp_path / 'store' / 'state.db'}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT type, data FROM ledger ORDER BY seq").fetchall()
    finally:
        conn.close()
    types = [t for t, _ in rows]
    docked = [i for i, (t, d) in enumerate(rows) if t == "device_connected" and json.loads(d).get("bay") == 3]
    assert len(docked) == 1 and docked[0] < types.index("station_stopped"), types
    data = json.loads(rows[docked[0]][1])
    assert (data.get("settled"), data.get("cut_by")) == (False, "station stopped"), data  # review R12


# -- the debounce itself ---------------------------------------------------------------------------------


def test_a_burst_settles_once_the_bay_keeps_still_and_counts_its_raw_events() -> None:
    debounce = BayPresenceDebounce(settle_s=0.25, burst_max_s=2.0)
    assert debounce.wait_s(0.0) is None and debounce.due(0.0) == []
    debounce.add(1, True, 50, stamp=1, now=0.00)
    debounce.add(1, False, None, stamp=2, now=0.01)
    debounce.add(1, True, 51, stamp=3, now=0.02)
    debounce.add(2, False, None, stamp=4, now=0.10)
    assert debounce.wait_s(0.02) == pytest.approx(0.25)
    assert debounce.due(0.26) == []  # bay 1 last moved at 0.02: not yet still for 0.25 s
    assert debounce.due(0.27) == [Settled(1, True, 51, 3, 3)]
    assert debounce.settling(1) == 0 and debounce.settling(2) == 1
    assert debounce.due(0.36) == [Settled(2, False, None, 1, 4)]
    assert debounce.wait_s(0.36) is None


def test_a_bay_that_never_keeps_still_is_recorded_unsettled_every_burst_max() -> None:
    debounce = BayPresenceDebounce(settle_s=0.25, burst_max_s=2.0)
    handed: list[Settled] = []
    for i in range(500):  # 5 s of bouncing every 10 ms
        now = i * 0.01
        debounce.add(4, i % 2 == 0, 30, stamp=i + 1, now=now)
        handed += debounce.due(now)
    handed += debounce.due(4.99 + 0.25)
    assert [s.settled for s in handed] == [False, False, True], handed
    assert sum(s.raw_events for s in handed) == 500


def test_a_pull_is_taken_at_once_and_the_board_going_drains_the_rest() -> None:
    debounce = BayPresenceDebounce()
    debounce.add(1, True, 50, stamp=1, now=0.0)
    debounce.add(1, False, None, stamp=2, now=0.001)
    assert debounce.take(1) == Settled(1, False, None, 2, 2)
    assert debounce.take(1) is None
    debounce.add(1, True, 50, stamp=3, now=0.002)
    debounce.add(3, True, 20, stamp=4, now=0.003)
    # Nobody saw them settle: handed over unsettled (review R12).
    assert debounce.drain() == [Settled(1, True, 50, 1, 3, False), Settled(3, True, 20, 1, 4, False)]
    assert debounce.wait_s(0.0) is None
    with pytest.raises(ValueError, match="settle_s"):
        BayPresenceDebounce(settle_s=3, burst_max_s=1)


def test_a_settled_state_never_overwrites_a_led_decided_after_it() -> None:
    for error in (BayLed.PULLED, BayLed.DENIED, BayLed.PASSWORD, BayLed.FULL, BayLed.PARTIAL, BayLed.RECEIPT,
                  BayLed.ERROR, BayLed.DONE):
        for present in (True, False):
            assert led_after_presence(present, error, decided_since=True) is None
    # Controls: with nothing decided since, the settled state acts.
    assert led_after_presence(False, BayLed.COPYING, decided_since=False) is BayLed.PULLED
    assert led_after_presence(False, BayLed.PULLED, decided_since=False) is BayLed.PULLED
    assert led_after_presence(False, BayLed.DONE, decided_since=False) is BayLed.IDLE
    assert led_after_presence(True, BayLed.PULLED, decided_since=False) is BayLed.IDLE  # put back
    assert led_after_presence(True, BayLed.PULLED, decided_since=False,
                              before_pull=BayLed.COPYING) is BayLed.COPYING  # the board only bounced
    for shown in (BayLed.DENIED, BayLed.PASSWORD, BayLed.FULL, BayLed.PARTIAL, BayLed.COPYING, None):
        assert led_after_presence(True, shown, decided_since=False) is None  # an insertion keeps them


# -- a bay toggled just slower than the settle time, and bursts cut by the board going (review R5, R12) ---


def _toggle_every(
    gap_s: float, duration_s: float, debounce: BayPresenceDebounce | None = None
) -> list[Settled]:
    """Bay 1 toggled every `gap_s` for `duration_s`, scheduled as `edge.station` does (wake at `wait_s`,
    then `due`)."""
    debounce = debounce or BayPresenceDebounce()
    out: list[Settled] = []
    now, present, stamp = 0.0, True, 0
    while now < duration_s:
        stamp += 1
        debounce.add(1, present, 50, stamp=stamp, now=now)
        present = not present
        next_event = now + gap_s
        while (wait := debounce.wait_s(now)) is not None and now + wait <= next_event:
            now += wait
            out.extend(debounce.due(now))
        now = next_event
    return out


def test_a_fast_bounce_makes_one_entry_per_burst_max_at_most() -> None:
    settled = _toggle_every(0.010, 20.0)
    assert len(settled) <= 20.0 / BAY_BURST_MAX_S + 1


def test_a_bay_toggled_just_slower_than_the_settle_time_makes_bounded_entries() -> None:
    settled = _toggle_every(BAY_SETTLE_S + 0.01, 20.0)
    assert len(settled) <= 20.0 / BAY_BURST_MAX_S + 1, f"{len(settled)} entries in 20 s for one bay"


async def test_a_bay_toggled_just_slower_than_the_settle_time_through_the_station_is_bounded(
    tmp_path: Path,
) -> None:
    toggles, gap_s = 20, 0.3
    async with simulated_station(tmp_path, []) as station:
        await eventually(lambda: station.agent.dock is not None)
        for n in range(toggles):  # the sleeps pace the hostile board (the stimulus), they prove nothing
            if n % 2 == 0:
                station.dock.insert(1, charge_percent=50)
            else:
                station.dock.remove(1)
            await asyncio.sleep(gap_s)
        station.dock.insert(5, charge_percent=90)  # settles after bay 1's last toggle
        await station.wait_ledger("device_connected", where=lambda d: d.get("bay") == 5)
        entries = dock_entries(station, 1)
        bound = int(toggles * gap_s / BAY_BURST_MAX_S) + 1
        assert len(entries) <= bound, f"{len(entries)} entries for {toggles} toggles in {toggles * gap_s} s"


def test_a_burst_cut_by_the_board_going_is_not_called_settled() -> None:
    debounce = BayPresenceDebounce(settle_s=0.25, burst_max_s=2.0)
    for n in range(30):  # bouncing for 0.3 s: still bouncing when the link dies
        debounce.add(1, n % 2 == 0, 50, stamp=n + 1, now=n * 0.01)
    (cut,) = debounce.drain()
    assert cut.raw_events == 30
    assert not cut.settled, "a bay still bouncing when the board went is recorded as settled"


def test_a_bay_bouncing_for_a_day_costs_bounded_entries_and_keeps_its_count() -> None:
    for gap_s in (BAY_SETTLE_S + 0.01, 0.1):  # just slower than the settle time; within it
        debounce = BayPresenceDebounce()
        day = 86400.0
        handed = _toggle_every(gap_s, day, debounce)
        started = [s for s in handed if s.bouncing == "started"]
        assert len(started) == 1 and started[0].changes == BAY_CHANGES_MAX + 1, started[:3]
        assert len(handed) <= BAY_CHANGES_MAX + 1 + BOUNCE_REPORTS_PER_DAY_MAX, (gap_s, len(handed))
        assert all(not s.settled for s in handed[handed.index(started[0]):]), handed[-3:]
        assert debounce.bouncing(1)
        # It holds still: after BAY_CALM_S it is a bay again, its settled state handed over, acted on.
        last = day + gap_s
        (ended,) = [s for s in debounce.due(last + BAY_CALM_S) if s.bouncing == "ended"]
        assert ended.settled and not debounce.bouncing(1)
        raw = math.ceil(day / gap_s)
        # Every raw event counted once (those of the handover that started it come again in its reports).
        assert sum(s.raw_events for s in handed if s.bouncing != "started") + ended.raw_events == raw
        assert debounce.wait_s(last + BAY_CALM_S) is None


def test_docks_and_undocks_at_human_speed_are_each_recorded_and_settled() -> None:
    # Control: a recorder docked and undocked every 30 s for an hour, each with a switch bounce, is one
    # settled entry per change, never bouncing.
    debounce = BayPresenceDebounce()
    handed: list[Settled] = []
    stamp = 0
    for n in range(120):
        now = n * 30.0
        for i in range(3):  # the bounce of the switch itself
            stamp += 1
            debounce.add(2, (n + i) % 2 == 0, 60, stamp=stamp, now=now + i * 0.003)
        handed += debounce.due(now + 0.006 + BAY_SETTLE_S)
    assert len(handed) == 120 and all(s.settled and s.bouncing is None for s in handed)
    assert [s.present for s in handed] == [n % 2 == 0 for n in range(120)]
    # And a person fumbling (dock, pull, dock again within a few seconds) is still three entries.
    debounce = BayPresenceDebounce()
    for n, now in enumerate((0.0, 3.0, 6.0)):
        debounce.add(3, n % 2 == 0, 40, stamp=n + 1, now=now)
        assert [(s.present, s.settled, s.bouncing) for s in debounce.due(now + BAY_SETTLE_S)] == [
            (n % 2 == 0, True, None)
        ]


@pytest.mark.parametrize(("protocol", "shown"), [(3, BayLed.BOUNCING), (2, BayLed.ATTENTION)])
async def test_a_bouncing_bay_is_one_error_a_status_flag_and_its_pattern_until_it_holds_still(
    tmp_path: Path, protocol: int, shown: BayLed
) -> None:
    # From the configuration: bouncing after 5 changes too many (4 by default); held still 3 s, a bay
    # again (30 s by default; far longer than a loaded machine stalls the stimulus below).
    bouncing = {"changes_max": 5, "calm_s": 3.0}
    async with simulated_station(
        tmp_path, [], dock_protocol=protocol, dock={"bouncing": bouncing}
    ) as station:
        await eventually(lambda: station.agent.dock is not None)
        for n in range(20):  # the sleeps pace the hostile board (the stimulus), they prove nothing
            if n % 2 == 0:
                station.dock.insert(1, charge_percent=50)
            else:
                station.dock.remove(1)
            await asyncio.sleep(0.3)
            if n == 12:  # bouncing since its fifth change, and still toggling: flagged in the status
                await eventually(lambda: (station.agent.status.bay("1") or {}).get("bouncing") is True)
        (ended,) = await station.wait_ledger(
            "device_removed", where=lambda d: d.get("bay") == 1 and d.get("bouncing") == "ended"
        )
        assert "settled" not in ended and ended["bay_events"] >= 0  # settled, acted on
        assert station.agent.store is not None
        errors = [e.data for e in station.agent.store.ledger.entries()
                  if e.type == "error" and e.data.get("bay") == 1]
        assert len(errors) == 1 and "bouncing" in errors[0]["reason"], errors
        assert errors[0]["changes"] == 5 + 1
        assert "holds still for 3 s" in errors[0]["reason"]
        entries = dock_entries(station, 1)
        assert raw_events(entries) == 20 - 0, entries  # no raw event lost, none counted twice
        # Held still, empty: ready again. The LED command follows the committed entry, so await it.
        await eventually(lambda: station.dock.led_history(1)[-1] is BayLed.IDLE)
        history = station.dock.led_history(1)
        # The board is told the bouncing bay's own pattern (a protocol 2 board the nearest it knows), once:
        # no LED command per toggle once bouncing.
        assert history.count(shown) == 1, history
        assert {BayLed.BOUNCING, BayLed.ATTENTION} - {shown} - set(history), history
        assert (station.agent.status.bay("1") or {}).get("bouncing") is False
        # Control: once it held still, a real dock is recorded as one settled entry again.
        before = len(entries)
        station.dock.insert(1, charge_percent=60)
        await eventually(lambda: len(dock_entries(station, 1)) == before + 1)
        assert dock_entries(station, 1)[-1] == (
            "device_connected", {"bay": 1, "source": "dock", "charge_percent": 60}
        )


@pytest.mark.parametrize("changes_max", [3, 4, 7])
def test_the_configured_change_limit_decides_when_a_bay_is_bouncing(changes_max: int) -> None:
    """[dock.bouncing] changes_max: that many settled changes within the window are a person's, one more
    makes the bay bouncing (the control: the same toggling one change short is not)."""
    bouncing = BouncingSection(changes_max=changes_max, window_s=20.0, calm_s=5.0)
    debounce = BayPresenceDebounce(bouncing=bouncing)
    handed: list[Settled] = []
    now = 0.0
    for n in range(changes_max + 1):
        debounce.add(2, n % 2 == 0, None, stamp=n + 1, now=now)
        now += BAY_SETTLE_S + 0.05  # just slower than the settle time: each toggle settles on its own
        handed += debounce.due(now)
        if n < changes_max:
            assert not debounce.bouncing(2), (n, handed)
    assert [s.bouncing for s in handed] == [None] * changes_max + ["started"]
    assert handed[-1].changes == changes_max + 1
    # Held still for the configured calm_s: a bay again.
    (ended,) = debounce.due(now + 5.0)
    assert ended.bouncing == "ended" and not debounce.bouncing(2)


def test_the_configured_back_off_bounds_the_reports_of_a_bay_bouncing_for_a_day() -> None:
    bouncing = BouncingSection(report_first_s=30.0, report_max_s=600.0)
    debounce = BayPresenceDebounce(bouncing=bouncing)
    assert (debounce.report_first_s, debounce.report_max_s) == (30.0, 600.0)
    reports = 0
    now = 0.0
    for n in range(int(86400 / 0.3)):  # toggling every 0.3 s for a day
        debounce.add(5, n % 2 == 0, None, stamp=n + 1, now=now)
        now += 0.3
        reports += sum(1 for s in debounce.due(now) if s.bouncing == "ongoing")
    assert debounce.bouncing(5)
    assert reports <= bounce_reports_per_day_max(bouncing) == 5 + 144
    assert reports >= 86400 / 600.0 - 5  # recorded all day all the same, at the configured pace
