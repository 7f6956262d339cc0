"""Third review of issue 12: a recorder swapped into a ready bay under the same USB serial is issued unread.

Once a recorder's docking ended `done` and it came back in control mode, the agent keeps its attachment
(USB port + the USB serial claimed there) in `_ready_usb`, and the desk (`_idle_for_desk`) issues whatever
recorder answers at that attachment whose *own* latest docking anywhere at this station ended `done`. It never
checks that the recorder answering now is the one the station just offloaded there. Recorders of one batch
often share a factory USB serial (the allow-list may pin the same one to several): an officer pulls the
offloaded recorder A and drops in recorder B, which was offloaded here earlier, then taken without a
check-out and used on a shift. No USB poll sees the attachment change (same port, same USB serial; a swap
between two polls), so B is issued with its shift's recordings never offloaded, to an officer who did not
record them.

The control: the same station without the swap issues A.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from drivers.usb.recorder import RecorderMode
from tests.equipment.test_desk_agent import registry
from tests.station.harness import Station, eventually, simulated_station, spec

WAIT_S = 120.0
SHARED_USB_SERIAL = "EEZ0100000000042"  # one batch, one factory USB serial


async def offloaded_and_back(station: Station, device_serial: str, cycles: int, bay: int, *,
                             readied: int) -> None:
    """Docked, offloaded (`done`), back in control mode from its bay's power cycle and ready for the desk
    (the station's `readied`-th recorder so)."""
    await station.dock_recorder(device_serial, bay)
    await eventually(lambda: station.dock.power_cycles(bay) == cycles, timeout_s=WAIT_S)

    def back() -> bool:
        state = station.bus.recorder_state(device_serial)
        return state.plugged and state.mode is RecorderMode.CONTROL

    await eventually(back, timeout_s=WAIT_S)
    with contextlib.suppress(TimeoutError):
        await station.wait_ledger("device_connected", count=readied, timeout_s=30,
                                  where=lambda d: d.get("after") == "bay power cycle")


@pytest.mark.parametrize("swapped", [False, True], ids=["no swap", "swapped in the ready bay"])
async def test_only_the_recorder_offloaded_at_a_ready_bay_is_issued_from_it(tmp_path: Path,
                                                                            swapped: bool) -> None:
    a = spec(0, files=1, usb_serial=SHARED_USB_SERIAL)
    b = spec(1, files=1, usb_serial=SHARED_USB_SERIAL)
    registry(tmp_path)
    async with simulated_station(tmp_path, [a, b], usb={"poll_interval_s": 1.0},
                                 equipment={"enabled": True, "power_off_ms": 3000}) as station:
        # B is offloaded here, then taken without a check-out ("away") and used on a shift.
        await offloaded_and_back(station, b.device_serial, 1, bay=2, readied=1)
        await station.undock(b.device_serial, 2)
        shift = station.bus.record(b.device_serial, files=2)
        # A is offloaded in bay 1 and waits there for the desk.
        await offloaded_and_back(station, a.device_serial, 1, bay=1, readied=2)
        assert [r.outcome.value for r in station.agent.results] == ["done", "done"]
        if swapped:  # A out, B in, at once: the same port, the same USB serial
            station.bus.swap(a.device_serial, b.device_serial)
        desk = station.agent.desk
        assert desk is not None
        issued = await desk.check_out_by_pin("110001", "2468")
        if not swapped:
            refusals = [d.get("detail") for d in station.ledger("refused")]
            assert issued.assignment is not None, refusals
            assert issued.assignment.device_serial == a.device_serial
            return
        # Unfixed: B is issued, its two recordings of the shift still on it and never offloaded.
        unread_on_b = set(shift) & set(station.bus.volume_files(b.device_serial))
        assert issued.assignment is None or not unread_on_b, (issued.assignment, unread_on_b)
        refusal = [d for d in station.ledger("refused") if d.get("what") == "check-out"][-1]
        assert b.device_serial in refusal["detail"] and "offloaded" in refusal["detail"], refusal
        # B is then docked as what it is (a recorder with files): offloaded, and only then ready.
        await station.wait_results(3, timeout_s=WAIT_S)
        assert station.agent.results[-1].outcome.value == "done"
