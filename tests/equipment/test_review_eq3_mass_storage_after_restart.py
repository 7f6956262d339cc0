"""Third review of issue 12 (a gap the README named): a recorder left in mass-storage mode by a restart.

The agent brings a recorder back to control mode (its bay's power cycle) only after a *control* session's
docking ended `done`. An agent that stops after it switched a recorder to mass storage (mid-offload, or
before the power cycle) finds that recorder's volume when it starts again: a volume session offloads it, ends
`done`, and nothing more happens. The recorder stays in mass-storage mode in its bay, wiped, and the desk
never lists it (it only looks at control-mode recorders): "no recorder ready", for good, and no entry says
why.

Fixed: a volume docking of a recorder that has a control mode (its USB device at the bay's port is in
mass-storage mode, not a mass-storage-only model) that ends `done` power-cycles the bay; the recorder comes
back in control mode as a new docking of its own (logged in, identified, nothing left to copy) and is then
ready like any other. Without the power cycle (`return_to_control = false`) an `error` entry says why it is
not ready. The control: the same recorder docked in control mode while the agent runs is issued.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import pytest

from drivers.usb.recorder import RecorderDriver, RecorderGoneError, RecorderMode, find_recorders
from simulators.dock import DockSimulator
from simulators.recorder.backend import get_backend
from simulators.recorder.bus import RecorderBus
from tests.equipment.test_desk_agent import registry
from tests.station.harness import PASSWORD, simulated_station, spec

WAIT_S = 150.0
PORT = "1-1.1"


def left_in_mass_storage(device_serial: str) -> Callable[[RecorderBus, DockSimulator, Path], None]:
    """Docked in bay 1 and switched to mass storage by a station that then stopped."""

    def before_start(bus: RecorderBus, dock: DockSimulator, socket_path: Path) -> None:
        dock.insert(1, charge_percent=90)
        bus.plug(device_serial, PORT)
        backend = get_backend(socket_path)
        try:
            [handle] = [h for h in find_recorders(backend) if h.location.port_path == PORT]
            with RecorderDriver(handle, backend) as driver, contextlib.suppress(RecorderGoneError):
                driver.login(PASSWORD)
                driver.switch_to_mass_storage()
        finally:
            backend.close()
        assert bus.recorder_state(device_serial).mode is RecorderMode.MASS_STORAGE

    return before_start


@pytest.mark.parametrize("left", [False, True], ids=["docked in control mode", "left in mass storage"])
async def test_a_recorder_left_in_mass_storage_mode_by_a_restart_comes_back_for_the_desk(
        tmp_path: Path, left: bool) -> None:
    recorder = spec(0, files=2)
    registry(tmp_path)
    async with simulated_station(tmp_path, [recorder], usb={"poll_interval_s": 0.5},
                                 equipment={"enabled": True, "power_off_ms": 1000},
                                 before_start=left_in_mass_storage(recorder.device_serial) if left else None
                                 ) as station:
        if not left:
            await station.dock_recorder(recorder.device_serial, 1)
        await station.wait_results(1, timeout_s=WAIT_S)
        assert station.agent.results[0].outcome.value == "done"
        # Back in control mode from its bay's power cycle, and ready (unfixed, left: it never leaves mass
        # storage, and the bay is never power-cycled).
        with contextlib.suppress(TimeoutError):
            await station.wait_ledger("device_connected", timeout_s=WAIT_S,
                                      where=lambda d: d.get("after") == "bay power cycle")
        desk = station.agent.desk
        assert desk is not None
        issued = await desk.check_out_by_pin("110001", "2468")
        refusals = [d.get("detail") for d in station.ledger("refused") if d.get("what") == "check-out"]
        state = station.bus.recorder_state(recorder.device_serial)
        cycles = station.dock.power_cycles(1)
        assert issued.assignment is not None, (issued.reason, refusals, state.mode, cycles)
        assert issued.assignment.device_serial == recorder.device_serial
        # Its files were offloaded once: the docking that brought it back found nothing left to copy.
        assert sum(len(r.items) for r in station.agent.results) == 2


async def test_without_the_power_cycle_the_record_says_why_it_is_not_ready(tmp_path: Path) -> None:
    recorder = spec(0, files=1)
    registry(tmp_path)
    async with simulated_station(tmp_path, [recorder], usb={"poll_interval_s": 0.5},
                                 equipment={"enabled": True, "return_to_control": False},
                                 before_start=left_in_mass_storage(recorder.device_serial)) as station:
        await station.wait_results(1, timeout_s=WAIT_S)
        [entry] = await station.wait_ledger("error", timeout_s=60,
                                            where=lambda d: d.get("stage") == "equipment")
        assert "mass-storage mode" in entry["reason"] and "not ready for check-out" in entry["reason"], entry
        assert entry["bay"] == 1 and entry["usb_port"] == PORT, entry
