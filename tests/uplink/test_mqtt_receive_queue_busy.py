"""End to end over MQTT with the central's receive queue full (review 10): the real station uplink, a real
Mosquitto and a real central whose share of the queue per station is one message. What the station sends
beyond it is answered busy at once (a fin 0x97, a request 503 server_busy) and acknowledged, the station
sends it again later, and every item arrives with its receipt, registered once."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from edge.central.app import MQTT_RECEIVER
from edge.central.mqtt_receiver import MqttReceiver
from edge.central.registration import Caller
from edge.mqtt.filetransfer import FinCommand
from edge.uplink.service import UplinkService
from tests.uplink.test_mqtt_end_to_end import WAIT_S, all_receipted, e2e, media
from tests.uplink.test_refusals import uplink_running

__all__ = ["media"]


async def test_a_station_over_its_share_of_the_receive_queue_is_told_busy_sends_again_and_everything_arrives(
    tmp_path: Path, media: Path
) -> None:
    async with e2e(tmp_path, mqtt={"queue_per_station": 1}) as rig:
        items = await rig.ingest(media, "room-1")
        receiver = rig.central.app[MQTT_RECEIVER]
        assert isinstance(receiver, MqttReceiver) and receiver.api is not None
        # The first queued message (a request or a fin) is held until the station was told busy at least
        # once: the station's share (1) is taken meanwhile, so its next fin or request is over it.
        told_busy = threading.Event()
        held = threading.Event()
        store = receiver.store
        real_carry_out = store.carry_out

        def carry_out(station: str, command: Any, payload: bytes) -> Any:
            if isinstance(command, FinCommand) and not held.is_set():
                held.set()
                told_busy.wait(WAIT_S)
            return real_carry_out(station, command, payload)

        store.carry_out = carry_out  # type: ignore[method-assign]
        api = receiver.api
        for op, real in list(api._ops.items()):

            async def gated(caller: Caller, body: dict[str, Any], real: Any = real) -> Any:
                if not held.is_set():
                    held.set()
                    await asyncio.to_thread(told_busy.wait, WAIT_S)
                return await real(caller, body)

            api._ops[op] = gated

        async def watch() -> None:
            while receiver.counts.busy < 1:
                await asyncio.sleep(0.02)
            told_busy.set()

        watcher = asyncio.create_task(watch())
        service = UplinkService(rig.config(), rig.store)
        try:
            async with uplink_running(service):
                async with asyncio.timeout(WAIT_S):
                    await watcher
                assert await service.wait_drained(WAIT_S), rig.states()
        finally:
            told_busy.set()
            watcher.cancel()
        assert receiver.counts.busy >= 1
        all_receipted(rig, items)
        # Busy was an answer, not a refusal: nothing was abandoned or refused at the central.
        assert rig.central.parts.merkle.size() == len(items)
