"""Review 11: what a signed command reply binds, and what `edge central command` (send_command) takes.

1. The reply names the station and the SHA-256 of the request payload, but not the topic (op) the payload
   was delivered on. A copy of the central's exact payload published on another op's topic of the same
   station (by a process on the broker path: what signed replies are meant to defeat) is refused by the
   station as `wrong-topic` *before* its signature is checked, and that refusal is signed and carries the
   same request id and request SHA-256. The central takes it as the station's answer to its command and
   reports a refusal (exit 1), while the genuine delivery executes: the station did tag the item. The
   operator is told "refused" for a command that took effect.

2. An unsigned (version 1) reply with the request's id ends the wait at once (CommandTimeout, exit 69),
   although the module says a reply that does not verify is reported and the wait goes on; the station's
   own signed reply that comes right after is thrown away. Anyone who can write the station's reply
   topic can so turn every command into "no authentic reply".

Real Mosquitto with the shipped ACL, the real command handler and StationStore, the real send_command.
Controls: the same command without the misrouted copy / the unsigned forgery is taken (ok).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge.central.mqtt_command import Broker, send_command
from edge.custody.canonical import canonical_json
from edge.custody.keys import StationKey
from edge.ingest.store import StationStore
from edge.ingest.tagging import current_case
from edge.mqtt.client import InboundMessage
from edge.mqtt.command_handler import CommandHandler, CommandSettings
from edge.mqtt.commands import Command, CommandOp, Reply, new_request_id, utc_rfc3339
from tests.mqtt.broker import CENTRAL_ID, TOPIC_PREFIX, MosquittoBroker, TestPki
from tests.mqtt.test_client import running
from tests.mqtt.test_commands_broker import STATION, STATUS_DOC, sealed_item, station_handler, subscribed

TIMEOUT_S = 20.0


def _tag(item: str, case_number: str) -> Command:
    return Command(new_request_id(), CommandOp.TAG, STATION, utc_rfc3339(datetime.now(UTC)),
                   {"item": item, "changes": {"case_number": case_number}, "by": "clerk"})


async def _send(broker: MosquittoBroker, pki: TestPki, command: Command, central: StationKey,
                store: StationStore) -> Reply:
    settings = broker.client_settings(pki.client(CENTRAL_ID))
    return await send_command(Broker(settings, TOPIC_PREFIX), command, central,
                              station_keys={store.key.key_id: store.key.public_key()}, timeout_s=TIMEOUT_S)


@asynccontextmanager
async def misrouting_station(broker: MosquittoBroker, pki: TestPki, store: StationStore, central_pub: Any,
                             clock: list[datetime], route: dict[str, bool]) -> AsyncIterator[asyncio.Event]:
    """The station's command handler (as tests/mqtt/test_commands_broker.station_handler builds it), with
    the broker path handing it, while ``route["misroute"]``, a copy of each tag request on the status
    topic just before the request itself."""
    settings = broker.client_settings(pki.client(STATION))
    async with running(settings) as (client, _):
        handler = CommandHandler(CommandSettings(STATION, TOPIC_PREFIX, window_s=300), store=store,
                                 central_key=central_pub, client=client, status=lambda: STATUS_DOC,
                                 now=lambda: clock[0])
        genuine = handler.handle
        done = asyncio.Event()  # set once a misrouted request's genuine delivery was handled too

        async def misrouted_copy_first(message: InboundMessage) -> None:
            if route["misroute"] and message.topic.endswith("/command/tag"):
                copy = InboundMessage(message.topic.rsplit("/", 1)[0] + "/status", message.payload,
                                      message.qos, False, False, message.response_topic,
                                      message.correlation_data)
                await genuine(copy)
                await genuine(message)
                done.set()
                return
            await genuine(message)

        handler.handle = misrouted_copy_first  # type: ignore[method-assign]  # run() subscribes self.handle
        task = asyncio.create_task(handler.run())
        try:
            await subscribed(client)
            yield done
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_a_signed_wrong_topic_refusal_of_a_misrouted_copy_is_not_taken_for_the_command(
    tmp_path: Path, broker: MosquittoBroker, pki: TestPki
) -> None:
    central = StationKey.generate()
    store = StationStore(tmp_path / "store", STATION)
    clock = [datetime.now(UTC)]
    try:
        item = await sealed_item(tmp_path, store)
        route = {"misroute": False}
        async with misrouting_station(broker, pki, store, central.public_key(), clock, route) as handled:
            # Control: the command alone is executed and its reply taken.
            reply = await _send(broker, pki, _tag(item, "C-1"), central, store)
            assert reply.ok and reply.signed, reply
            assert current_case(store, item)["case_number"] == "C-1"

            route["misroute"] = True
            reply = await _send(broker, pki, _tag(item, "C-2"), central, store)
            await asyncio.wait_for(handled.wait(), TIMEOUT_S)
            # The station executed the command (the genuine delivery) ...
            assert current_case(store, item)["case_number"] == "C-2"
            # ... so the reply the central takes must not say it was refused.
            assert reply.ok, f"the central took {reply.error}: {reply.detail}"
    finally:
        store.close()


async def test_an_unsigned_reply_does_not_end_the_wait_for_the_stations_signed_one(
    tmp_path: Path, broker: MosquittoBroker, pki: TestPki
) -> None:
    central = StationKey.generate()
    store = StationStore(tmp_path / "store", STATION)
    clock = [datetime.now(UTC)]
    try:
        async with station_handler(broker, pki, store, central.public_key(), clock) as (client, handler):
            ledger_head = Command(new_request_id(), CommandOp.LEDGER_HEAD, STATION,
                                  utc_rfc3339(datetime.now(UTC)), {})
            # Control: the station's own reply is taken.
            reply = await _send(broker, pki, ledger_head, central, store)
            assert reply.ok and reply.signed

            real_reply = handler._reply

            async def unsigned_forgery_first(message: InboundMessage, reply: bytes) -> None:
                request_id = json.loads(message.payload)["command"]["request_id"]
                forged: dict[str, Any] = {"v": 1, "request_id": request_id, "ok": False,
                                          "error": "refused", "detail": "forged"}
                await client.publish(f"{TOPIC_PREFIX}/stations/{STATION}/command-reply",
                                     canonical_json(forged))
                await real_reply(message, reply)

            handler._reply = unsigned_forgery_first  # type: ignore[method-assign]
            again = Command(new_request_id(), CommandOp.LEDGER_HEAD, STATION, utc_rfc3339(datetime.now(UTC)),
                            {})
            reply = await _send(broker, pki, again, central, store)
            assert reply.ok and reply.signed and reply.key_id == store.key.key_id
    finally:
        store.close()


async def test_a_replayed_reply_for_a_command_that_executed_is_not_reported_as_refused(
    tmp_path: Path, broker: MosquittoBroker, pki: TestPki
) -> None:
    """QoS 1 is at least once: the station's reply to the first delivery is lost (published while the
    connection dropped: logged and dropped, edge.mqtt.command_handler) and the broker delivers the request
    again. The station answers `replayed`, ok false, saying in prose only that the first delivery
    "executed". The central takes it as a refusal (Reply.ok false: `edge central command` exits 1, "the
    station refused it") although the command took effect; whether it did is in no member a program can
    read. Control: the same command answered once is ok."""
    central = StationKey.generate()
    store = StationStore(tmp_path / "store", STATION)
    clock = [datetime.now(UTC)]
    try:
        item = await sealed_item(tmp_path, store)
        async with station_handler(broker, pki, store, central.public_key(), clock) as (_client, handler):
            reply = await _send(broker, pki, _tag(item, "C-1"), central, store)
            assert reply.ok  # control
            real_reply = handler._reply
            lost = {"first": True}

            async def first_reply_lost(message: InboundMessage, reply: bytes) -> None:
                if lost["first"]:
                    lost["first"] = False
                    await handler.handle(message)  # the broker's second delivery of the same request
                    return
                await real_reply(message, reply)

            handler._reply = first_reply_lost  # type: ignore[method-assign]
            reply = await _send(broker, pki, _tag(item, "C-2"), central, store)
            assert current_case(store, item)["case_number"] == "C-2"  # it took effect
            # The station refuses to run it twice (ok false), and says, signed, that the first delivery
            # executed: the central reports it as done earlier (exit 0), not as refused.
            assert reply.took_effect and reply.executed_earlier, \
                f"the central reports a refusal: {reply.error}: {reply.detail}"
    finally:
        store.close()
