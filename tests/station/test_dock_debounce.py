"""Bay presence is debounced (edge.station BAY_SETTLE_S): a bouncing bay switch or a hostile board makes
one ledger entry per burst, with the number of raw events it stands for, and a real dock and undock are
each recorded. Review R5: 300 bounces made 256 entries."""

from __future__ import annotations

from pathlib import Path

from tests.station.harness import simulated_station


async def test_a_bouncing_bay_switch_makes_one_entry_and_real_dockings_are_kept(tmp_path: Path) -> None:
    async with simulated_station(tmp_path, []) as station:
        # Control first: a real dock on bay 2 is recorded (and shows the bay board is connected).
        station.dock.insert(2, charge_percent=80)
        await station.wait_ledger("device_connected", where=lambda d: d["bay"] == 2)
        for _ in range(300):  # 0.3 s of a switch bouncing at 1 kHz
            station.dock.insert(1, charge_percent=50)
            station.dock.remove(1)
        # Bay 2's undock comes down the same line after the burst and settles after it: once it is
        # recorded, every entry the burst makes is recorded too.
        station.dock.remove(2)
        await station.wait_ledger("device_removed", where=lambda d: d["bay"] == 2)
        bay1 = [("connected", d) for d in station.ledger("device_connected") if d["bay"] == 1]
        bay1 += [("removed", d) for d in station.ledger("device_removed") if d["bay"] == 1]
        assert 1 <= len(bay1) <= 3, bay1  # one per burst (a stalled line may split it)
        assert sum(d.get("bay_events", 1) for _kind, d in bay1) >= 200, bay1  # the count is kept
        bay2 = [d for d in station.ledger("device_connected") + station.ledger("device_removed")
                if d["bay"] == 2]
        assert len(bay2) == 2 and all("bay_events" not in d for d in bay2), bay2
        # Control: a real dock and undock on the bay that bounced are both recorded, one entry each.
        before = len(station.ledger("device_connected"))
        station.dock.insert(1, charge_percent=60)
        await station.wait_ledger("device_connected", before + 1)
        station.dock.remove(1)
        await station.wait_ledger("device_removed", where=lambda d: d["bay"] == 1 and "bay_events" not in d)
        docked = [d for d in station.ledger("device_connected")
                  if d["bay"] == 1 and d["charge_percent"] == 60]
        assert docked and "bay_events" not in docked[-1], docked
