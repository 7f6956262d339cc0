"""A bay's power cycle on the simulated dock, made real on the simulated recorder bus.

The dock board (protocol 4 `PWR`) cuts a bay's power: its charger and the VBUS of the bay's USB connector.
To the recorder in the bay that is an unplug and a plug: it drops off the bus (a mass-storage volume is
unmounted) and enumerates again in its initial mode, control mode. `bay_power_to_bus` is the
`DockSimulator(on_power_cycle=...)` hook that does exactly that to the `RecorderBus` recorder plugged at the
bay's USB port; an empty port is a bay with nothing on its connector. `bay_power_to_bus_socket` does the same
through a running bus server's socket (`python -m simulators dock --recorder-bus SOCKET`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from simulators.recorder.bus import BusClient, BusClientError, RecorderBus

__all__ = ["bay_power_to_bus", "bay_power_to_bus_socket"]

log = logging.getLogger(__name__)


def bay_power_to_bus(bus: RecorderBus, port_of_bay: Callable[[int], str]) -> Callable[[int, int], None]:
    def cycle(bay: int, off_ms: int) -> None:
        port = port_of_bay(bay)
        plugged = [r.device_serial for r in bus.recorders() if r.plugged and r.port_path == port]
        if not plugged:
            log.info("bay %d: power cycled with no recorder on USB port %s", bay, port)
            return
        serial = plugged[0]
        bus.unplug(serial)
        time.sleep(off_ms / 1000)
        try:
            bus.plug(serial, port)
        except Exception as exc:  # another recorder took the port meanwhile: it stays out
            log.warning("bay %d: recorder %s not plugged back on %s: %s", bay, serial, port, exc)

    return cycle


def bay_power_to_bus_socket(client: BusClient,
                            port_of_bay: Callable[[int], str]) -> Callable[[int, int], None]:
    def cycle(bay: int, off_ms: int) -> None:
        port = port_of_bay(bay)
        try:
            plugged = [r["device_serial"] for r in client.call("recorders")
                       if r.get("plugged") and r.get("port_path") == port]
            if not plugged:
                log.info("bay %d: power cycled with no recorder on USB port %s", bay, port)
                return
            client.call("unplug", serial=plugged[0])
            time.sleep(off_ms / 1000)
            client.call("plug", serial=plugged[0], port_path=port)
        except BusClientError as exc:
            log.warning("bay %d: power cycle on the recorder bus failed: %s", bay, exc)

    return cycle
