"""`edge run`: the station agent as a long-running service (systemd Type=notify)."""

from __future__ import annotations

import asyncio
import logging
import signal

from edge.config import StationConfig
from edge.sdnotify import SystemdNotifier
from edge.station import StationAgent
from edge.supervise import SupervisorGaveUp

log = logging.getLogger(__name__)


async def run_station(config: StationConfig) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    notifier = SystemdNotifier()
    agent = StationAgent(config)
    log.info(
        "station %s starting: store %s, recorder volumes under %s",
        config.station.id,
        config.station.store_dir,
        config.usb.mount_root,
    )
    try:
        await agent.run(stop, notifier=notifier)
    except SupervisorGaveUp as exc:
        log.error("%s; exiting so that systemd restarts the station", exc)
        return 1
    finally:
        notifier.stopping()
    log.info("station %s stopped", config.station.id)
    return 0
