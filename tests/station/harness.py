"""A simulated docking station for agent-level tests: recorder bus + socket, dock pty, real agent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drivers.serial.dock import BayLed
from drivers.serial.dock_protocol import PROTOCOL_VERSION
from edge.config.station import StationConfig
from edge.custody.ledger import ENTRY_SALT
from edge.sources.usb.volumes import display_name
from edge.station import StationAgent
from simulators.bay_power import bay_power_to_bus
from simulators.dock import DockSimulator
from simulators.recorder.backend import get_backend
from simulators.recorder.bus import RecorderBus, RecorderBusServer, RecorderSpec
from simulators.recorder.device import UsbSerialFault
from tests.mounting import require_volume_mounts

PASSWORD = "246810"


def spec(i: int, **overrides: Any) -> RecorderSpec:
    values: dict[str, Any] = {
        "device_serial": f"{3300001 + i}",
        "usb_serial": f"EEZ01{i + 1:011d}",
        "officer_no": f"{110001 + i}",
        "officer_name": "张伟",
        "unit_code": "330100000000",
        "unit_name": "杭州市综合行政执法局",
        "password": PASSWORD,
        "files": 3,
        "file_mb": 0.2,
        "seed": i,
    }
    values.update(overrides)
    return RecorderSpec(**values)


def station_config(
    root: Path, specs: list[RecorderSpec], dock_port: str = "", **sections: Any
) -> StationConfig:
    password_file = root / "recorder-password"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o600)
    raw: dict[str, Any] = {
        "station": {"id": "TEST-STATION", "store_dir": str(root / "store"), "clock": "trusted"},
        "usb": {
            "backend": "simulator",
            "simulator_socket": str(root / "sim" / "bus.sock"),
            "poll_interval_s": 0.1,
            "mount_root": str(root / "media"),
            "volume_timeout_s": 20,
        },
        "dock": {"port": dock_port},
        "bays": [{"number": i + 1, "usb_port": f"1-1.{i + 1}"} for i in range(8)],
        "recorders": {
            "default_password": f"file:{password_file}",
            # Pinned: the password goes only to a USB serial the allow-list names.
            "allow": [{"device_serial": s.device_serial, "usb_serial": s.usb_serial} for s in specs],
        },
        "offload": {"min_free_bytes": 0, "concurrency": 4},
        # Most agent tests have no central; those about witnessing set their own policy.
        "wipe": {"policy": "after-verify"},
    }
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return StationConfig.model_validate(raw)


async def eventually(condition: Callable[[], bool], timeout_s: float = 20) -> None:
    """Return once `condition()` holds; TimeoutError after `timeout_s`.

    For state that offers no change signal (the ledger, the uplink's breaker): the condition is checked
    until it holds, so no fixed delay ever stands in for the event itself.
    """
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.02)


@dataclass
class Station:
    bus: RecorderBus
    dock: DockSimulator
    agent: StationAgent
    config: StationConfig

    async def dock_recorder(self, device_serial: str, bay: int) -> None:
        self.dock.insert(bay, charge_percent=50)
        self.bus.plug(device_serial, f"1-1.{bay}")

    async def undock(self, device_serial: str, bay: int, timeout_s: float = 20) -> None:
        """Pull the recorder out of its bay and wait until the station saw it leave: its USB device
        and, if it was mounted, its volume (a person takes seconds to dock it again)."""
        state = self.bus.recorder_state(device_serial)
        where = self.bus.mount_point(device_serial)
        # The station polls USB: a recorder plugged in and pulled out between two polls was never
        # seen and leaves no removal to wait for. A person docks for longer than a poll: wait until
        # the station has seen it before pulling it out.
        async with asyncio.timeout(timeout_s):
            while (state.port_path, state.usb_serial) not in self.agent._present_usb:
                await asyncio.sleep(0.02)
        volumes_before = len(self.volume_removals(where))
        usb_before = len(self.usb_removals(state.usb_serial))
        await asyncio.get_running_loop().run_in_executor(None, self.bus.unplug, device_serial)
        self.dock.remove(bay)
        async with asyncio.timeout(timeout_s):
            while len(self.usb_removals(state.usb_serial)) == usb_before or (
                state.mounted and len(self.volume_removals(where)) == volumes_before
            ):
                await asyncio.sleep(0.02)

    def usb_removals(self, usb_serial: str) -> list[dict[str, Any]]:
        return [e for e in self.ledger("device_removed") if e.get("usb_serial") == usb_serial]

    def volume_removals(self, where: Path | None) -> list[dict[str, Any]]:
        name = None if where is None else display_name(where)
        removed = self.ledger("device_removed")
        return [e for e in removed if e.get("source") == "volume" and e["volume"] == name]

    async def wait_results(self, count: int, timeout_s: float = 60) -> None:
        async with asyncio.timeout(timeout_s):
            while len(self.agent.results) < count:
                await asyncio.sleep(0.05)
            await self.agent.idle()

    async def led_shows(self, bay: int, led: BayLed, timeout_s: float = 20) -> bool:
        """Whether `bay` shows `led` within `timeout_s`, woken by the bay board simulator as it changes
        (the agent sets LEDs asynchronously, and only once the bay board is connected)."""
        return await asyncio.to_thread(self.dock.wait_for_led, bay, led, timeout_s)

    async def wait_ledger(
        self,
        type_: str,
        count: int = 1,
        timeout_s: float = 20,
        where: Callable[[dict[str, Any]], bool] = lambda data: True,
    ) -> list[dict[str, Any]]:
        """The data of the ledger's `type_` entries matching `where`, once there are at least `count`."""
        entries: list[dict[str, Any]] = []

        def enough() -> bool:
            nonlocal entries
            entries = [data for data in self.ledger(type_) if where(data)]
            return len(entries) >= count

        await eventually(enough, timeout_s)
        return entries

    def ledger(self, type_: str) -> list[dict[str, Any]]:
        """The data of the entries of ``type_``, without the salt every entry carries (ledger format 2)."""
        assert self.agent.store is not None
        return [{k: v for k, v in e.data.items() if k != ENTRY_SALT}
                for e in self.agent.store.ledger.entries() if e.type == type_]


@asynccontextmanager
async def simulated_station(
    root: Path,
    specs: list[RecorderSpec],
    *,
    agent_config: StationConfig | None = None,
    dock_protocol: int = PROTOCOL_VERSION,
    before_start: Callable[[RecorderBus, DockSimulator, Path], None] | None = None,
    **sections: Any,
) -> AsyncIterator[Station]:
    """`before_start(bus, dock, socket_path)`: run (in a thread) once the bus and dock serve, before the
    agent starts: what a station that stopped and starts again finds in its bays."""
    require_volume_mounts()  # the bus mounts volumes for real
    bus = RecorderBus(root / "sim" / "state", root / "media")
    loop = asyncio.get_running_loop()
    for s in specs:
        await loop.run_in_executor(None, bus.add_recorder, s)
    server = RecorderBusServer(bus, root / "sim" / "bus.sock")
    # The bay board's power cycle (protocol 4 PWR) unplugs and plugs the recorder on the bay's USB port.
    dock = DockSimulator(bays=8, seed=3, protocol=dock_protocol,
                         on_power_cycle=bay_power_to_bus(bus, lambda bay: f"1-1.{bay}"))
    server.start()
    dock.start()
    if before_start is not None:
        await loop.run_in_executor(None, before_start, bus, dock, root / "sim" / "bus.sock")
    config = agent_config or station_config(root, specs, dock.tty_path, **sections)
    agent = StationAgent(config)
    stop = asyncio.Event()
    runner = asyncio.create_task(agent.run(stop))
    try:
        async with asyncio.timeout(20):
            await agent.ready.wait()
        yield Station(bus, dock, agent, config)
    finally:
        stop.set()
        try:
            await runner
        finally:
            server.stop()
            dock.stop()
            bus.close()


@dataclass
class PluggedPair:
    """A good recorder at USB port 1-1.1 and one with a USB serial fault at 1-1.2, on a simulated bus served
    over its socket, and the pyusb backend the driver enumerates them through."""

    bus: RecorderBus
    backend: Any
    good: RecorderSpec
    faulty: RecorderSpec


@contextmanager
def plugged_pair(root: Path, fault: UsbSerialFault) -> Iterator[PluggedPair]:
    bus = RecorderBus(root / "state", root / "media")
    good, faulty = spec(0, files=0), spec(1, usb_serial_fault=fault, files=0)
    for s in (good, faulty):
        bus.add_recorder(s)
    server = RecorderBusServer(bus, root / "bus.sock")
    server.start()
    backend = get_backend(root / "bus.sock")
    try:
        bus.plug(good.device_serial, "1-1.1")
        bus.plug(faulty.device_serial, "1-1.2")
        yield PluggedPair(bus, backend, good, faulty)
    finally:
        backend.close()
        server.stop()
        bus.close()
