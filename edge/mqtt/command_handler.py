"""The station's side of the central's commands over MQTT (codec: edge.mqtt.commands; README "MQTT").

The station subscribes `<prefix>/stations/<S>/command/+` through its `MqttClient`. Each request is checked
in this order: size and shape, signature by the central key pinned at enrollment, station, topic, freshness
against the station clock, args, request id never seen before; then executed. Whatever happens, the
request gets one reply and one `command` ledger entry saying what the station did with it:

    {"outcome": "executed", "request_id", "op", "command": COMMAND, "signature", "central_key_id",
     "result": {...}}                                   (tag: in the same transaction as its `tagged` entry)
    {"outcome": "refused", "error": code, "detail", "request_id"?, "op"?, "payload_sha256",
     "payload_bytes", "command"?, "signature"?}         (command and signature only when they verified)

A refused request changes nothing else. Authentic and fresh request ids are kept in the station's state
(`mqtt_command_ids` in state.db), written in the transaction of the command's entry, also across restarts:
the newest `MAX_SEEN_REQUEST_IDS` of them, by the order they were taken, never by a clock. Pruning by the
station's wall clock let a forward jump (a wrong time source, then corrected) erase every id, and a replay
fresh again by the corrected clock ran a second time; only the central signs commands, so a count this far
beyond any day's commands keeps every id that could be fresh again. Execution and that record are one
transaction for tag and the read-only ops; a re-upload runs `edge uplink retry`'s requeue (its own
transaction, its `requeued` entry naming the request id) just before: a crash between the two leaves the
item queued and the id unrecorded, and a replay then finds the item no longer rejected and is refused, so
it still runs at most once.

Refusals of requests that did not verify, and of replays, are recorded at a bounded rate
(`REFUSALS_RECORDED_PER_MINUTE`): only the station itself and the central may write to its command topics
(broker ACL), but a station process gone wrong must not fill its own ledger; the refusals not recorded are
counted in the next one that is (`unrecorded_refusals_before`), and every one is logged and replied.

Each reply is signed by the station's ledger key and names the station, the SHA-256 of the request it
answers and the op of the topic that request came on (edge.mqtt.commands, "replies"): the central checks
it against the key it enrolled and its command's op. A redelivery of a request already handled is refused
as `replayed`, its reply naming the first delivery's outcome (``first_outcome``: executed or refused).

Replies go to the request's MQTT 5 response topic with its correlation data when that topic is the
station's command-reply topic or under it, else (and under 3.1.1) to `<prefix>/stations/<S>/command-reply`.
A reply that cannot be published is logged and dropped (the command already took effect, or did not):
the handler never fails a message, so the broker never delivers it again.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.custody.canonical import canonical_json, sha256_hex
from edge.custody.errors import CustodyError
from edge.custody.keys import key_id_of
from edge.custody.ledger import EntryType
from edge.custody.text import printable
from edge.ingest.store import StationStore
from edge.ingest.tagging import TagError, append_tag
from edge.mqtt.client import InboundMessage, MqttClient, MqttError
from edge.mqtt.commands import (
    ITEM_ID,
    MAX_CORRELATION_BYTES,
    CommandError,
    CommandOp,
    CommandRefused,
    FirstOutcome,
    ReceivedCommand,
    ReplySigner,
    check_addressed,
    check_authentic,
    command_subscription,
    encode_reply,
    op_of_topic,
    parse_command,
    reply_topic_for,
)
from edge.uplink.requeue import RequeueError, requeue_rejected

__all__ = ["REFUSALS_RECORDED_PER_MINUTE", "CommandHandler", "CommandSettings", "ensure_schema"]

log = logging.getLogger(__name__)

REFUSALS_RECORDED_PER_MINUTE = 30
# Request ids kept (module docstring): ~100 bytes each in state.db; months of any agency's commands.
MAX_SEEN_REQUEST_IDS = 50_000
REPLY_TIMEOUT_S = 10.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS mqtt_command_ids (
    request_id TEXT PRIMARY KEY,       -- 32 hex digits, from an authentic command
    issued_at TEXT NOT NULL,           -- the command's issued_at
    seen_at REAL NOT NULL,             -- station time (epoch seconds) it was first seen
    outcome TEXT NOT NULL              -- executed or refused
) STRICT
"""


def ensure_schema(conn: sqlite3.Connection) -> None:
    conn.execute(_SCHEMA)


@dataclass(frozen=True)
class CommandSettings:
    station: str
    topic_prefix: str
    window_s: float = 300.0
    """A command is executed only when its issued_at is within this of the station clock."""


class CommandHandler:
    """Checks, executes, records and answers the central's commands; see the module docstring."""

    def __init__(
        self,
        settings: CommandSettings,
        *,
        store: StationStore,
        central_key: Ed25519PublicKey,
        client: MqttClient,
        status: Callable[[], Mapping[str, Any]],
        officers_sync: Callable[[], dict[str, Any]] | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.store = store
        self.central_key = central_key
        self.central_key_id = key_id_of(central_key)
        self.client = client
        self.status = status
        self.officers_sync = officers_sync
        """Asks the uplink to fetch the officer list now (`officers-sync`); None: no uplink to ask."""
        self.now = now
        self._monotonic = monotonic
        self._refusal_budget = float(REFUSALS_RECORDED_PER_MINUTE)
        self._refusal_budget_at = monotonic()
        self.unrecorded_refusals = 0
        with store.transaction() as conn:
            ensure_schema(conn)

    def __repr__(self) -> str:
        return f"CommandHandler(station={self.settings.station!r}, central_key={self.central_key_id!r})"

    async def run(self) -> None:
        """Subscribe, then stay (a supervised task): the client delivers requests to `handle`."""
        s = self.settings
        await self.client.subscribe(command_subscription(s.topic_prefix, s.station), self.handle,
                                    timeout_s=365 * 86400)
        log.info("MQTT commands: subscribed for station %s (central key %s)", s.station, self.central_key_id)
        await asyncio.Event().wait()

    async def handle(self, message: InboundMessage) -> None:
        """One request: never raises for anything the request holds (a failure here would make the broker
        deliver it again)."""
        s = self.settings
        topic_op = op_of_topic(s.topic_prefix, s.station, message.topic) or ""
        received: ReceivedCommand | None = None
        try:
            received = parse_command(message.payload, topic_op=topic_op)
            received = check_authentic(received, self.central_key)
            args = check_addressed(received, station=s.station, now=self.now(), window_s=s.window_s)
            answer = self._execute(received, args)
        except CommandRefused as refused:
            answer = self._refuse(refused, message.payload, topic_op, refused.command or received)
        except (CustodyError, sqlite3.Error, OSError) as exc:
            # The store failed: nothing was committed (each outcome is one transaction).
            log.exception("MQTT command on %s: the station failed while handling it", message.topic)
            request_id = received.request_id if received is not None and received.authentic else None
            answer = _Answer(request_id, error=CommandError.FAILED, detail=f"station store: {exc}")
        # The reply names the op of the topic the payload came on: a refused misrouted copy of a command's
        # payload is then no answer to the command itself (edge.mqtt.commands, "replies").
        answer = replace(answer, op=topic_op or None)
        await self._reply(message, self._signed(answer, message.payload))

    def _signed(self, answer: _Answer, payload: bytes) -> bytes:
        """The reply, signed by the station's ledger key (read now: a rotation changes it)."""
        key = self.store.key
        return encode_reply(
            answer.request_id, station=self.settings.station, op=answer.op,
            request_sha256=sha256_hex(payload), signer=ReplySigner(key.key_id, key.sign),
            result=answer.result, error=answer.error, detail=answer.detail,
            first_outcome=answer.first_outcome,
        )

    # -- execution ----------------------------------------------------------------------------------------

    def _execute(self, received: ReceivedCommand, args: dict[str, Any]) -> _Answer:
        command = received.command
        earlier = self._seen(command.request_id)
        if earlier is not None:
            # A duplicate delivery after a lost acknowledgement looks the same: the detail says what became
            # of the first one, so that the central knows whether it took effect.
            outcome, seen_at = earlier
            when = datetime.fromtimestamp(seen_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            raise CommandRefused(
                CommandError.REPLAYED, f"request {command.request_id} was received before, at {when}, and "
                f"{outcome}", received,
                first_outcome=FirstOutcome(outcome) if outcome in set(FirstOutcome) else None,
            )
        # A re-upload runs the requeue's own transaction first (module docstring).
        requeued = self._requeue(received, args) if command.op is CommandOp.REUPLOAD else None
        try:
            with self.store.transaction() as conn:
                self._remember(conn, received, "executed")
                if command.op is CommandOp.TAG:
                    entry = append_tag(self.store, args["item"], args["changes"],
                                       by=f"central:{args['by']} (command {command.request_id})")
                    result: dict[str, Any] = {"item": args["item"], "seq": entry.seq, "hash": entry.hash,
                                              "changes": args["changes"]}
                elif command.op is CommandOp.REUPLOAD:
                    assert requeued is not None
                    result = requeued
                elif command.op is CommandOp.LEDGER_HEAD:
                    result = self._ledger_head(conn)
                elif command.op is CommandOp.OFFICERS_SYNC:
                    if self.officers_sync is None:
                        raise CommandRefused(CommandError.REFUSED, "this station has no uplink to the "
                                             "central to fetch the officer list over", received)
                    result = self.officers_sync()
                else:
                    result = dict(self.status())
                entry = self.store.ledger.append(
                    EntryType.COMMAND, args.get("item"),
                    {**self._authentic_record(received), "outcome": "executed",
                     "result": _recorded_result(command.op, result)},
                )
        except TagError as exc:
            raise CommandRefused(CommandError.REFUSED, str(exc), received) from None
        except (CustodyError, sqlite3.Error, OSError) as exc:
            if requeued is None:
                raise  # nothing took effect: the caller answers "failed"
            # The re-upload took effect in its own transaction (its `requeued` entry names this request);
            # only the command's own record failed. A reply "failed" would be a signed untruth (review 15):
            # the reply says executed, and what could not be recorded. A redelivery is then refused by the
            # requeue itself (the item is no longer rejected), so it still runs at most once.
            log.exception("MQTT command %s %s: the re-upload was done, but its command entry could not be "
                          "recorded", command.op.value, command.request_id)
            return _Answer(command.request_id, result={
                **requeued, "command_entry": printable(f"not recorded: {exc}")[:200]})
        log.info("MQTT command %s %s executed (ledger seq %d)", command.op.value, command.request_id,
                 entry.seq)
        return _Answer(command.request_id, result=result)

    def _requeue(self, received: ReceivedCommand, args: dict[str, Any]) -> dict[str, Any]:
        command = received.command
        operator = {"central_command": command.request_id, "central_key_id": self.central_key_id}
        try:
            done = requeue_rejected(self.store, [args["item"]], operator=operator, reason=args["reason"])
        except RequeueError as exc:
            raise CommandRefused(CommandError.REFUSED, str(exc), received) from None
        requeued = done[0]
        return {"item": requeued.item, "seq": requeued.seq, "refusal_code": requeued.refusal_code,
                "refusal_seq": requeued.refusal_seq}

    def _ledger_head(self, conn: sqlite3.Connection) -> dict[str, Any]:
        seq, hash_hex = self.store.ledger.head()
        row = conn.execute(
            "SELECT seq, hash, received FROM witnessed_heads ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        witnessed = None if row is None else {
            "seq": int(row[0]), "hash": str(row[1]), "received_at": str(row[2])
        }
        return {"local": {"seq": seq, "hash": hash_hex}, "witnessed": witnessed}

    # -- refusals -----------------------------------------------------------------------------------------

    def _refuse(
        self, refused: CommandRefused, payload: bytes, topic_op: str, received: ReceivedCommand | None
    ) -> _Answer:
        authentic = received is not None and received.authentic
        request_id = received.request_id if received is not None else None
        log.warning("MQTT command refused (%s): %s", refused.code.value, refused.detail)
        record: dict[str, Any] = {
            "outcome": "refused",
            "error": refused.code.value,
            "detail": refused.detail,
            "op": topic_op if topic_op in {o.value for o in CommandOp} else None,
            "payload_sha256": sha256_hex(payload),
            "payload_bytes": len(payload),
        }
        if received is not None and authentic:
            record.update(self._authentic_record(received))
        elif request_id is not None:
            record["request_id"] = request_id  # as claimed: nothing vouches for it
        # An authentic command is recorded whatever its fate, once; what anyone with write access to the
        # topic can repeat (forgeries, garbage, replays of a command seen before) at a bounded rate.
        if (authentic and refused.code is not CommandError.REPLAYED) or self._refusal_may_be_recorded():
            if self.unrecorded_refusals:
                record["unrecorded_refusals_before"] = self.unrecorded_refusals
                self.unrecorded_refusals = 0
            with self.store.transaction() as conn:
                # An authentic, fresh command refused for what it asks is used up: sent again, it is a replay.
                if received is not None and authentic and refused.code not in (
                    CommandError.REPLAYED, CommandError.STALE, CommandError.WRONG_STATION
                ) and self._seen(received.request_id) is None:
                    self._remember(conn, received, "refused")
                item = received.command.args.get("item") if received is not None and authentic else None
                self.store.ledger.append(EntryType.COMMAND, item if _is_item(item) else None, record)
        else:
            self.unrecorded_refusals += 1
        return _Answer(request_id, error=refused.code, detail=refused.detail,
                       first_outcome=refused.first_outcome)

    def _refusal_may_be_recorded(self) -> bool:
        now = self._monotonic()
        self._refusal_budget = min(
            float(REFUSALS_RECORDED_PER_MINUTE),
            self._refusal_budget + (now - self._refusal_budget_at) * REFUSALS_RECORDED_PER_MINUTE / 60.0,
        )
        self._refusal_budget_at = now
        if self._refusal_budget >= 1.0:
            self._refusal_budget -= 1.0
            return True
        return False

    def _authentic_record(self, received: ReceivedCommand) -> dict[str, Any]:
        return {
            "request_id": received.request_id,
            "op": received.command.op.value,
            "command": received.document,
            "signature": received.signature_b64,
            "central_key_id": self.central_key_id,
        }

    # -- seen request ids ---------------------------------------------------------------------------------

    def _seen(self, request_id: str) -> tuple[str, float] | None:
        """(outcome, station time first seen) of a request id kept in the state, None if never seen."""
        row = self.store.conn.execute(
            "SELECT outcome, seen_at FROM mqtt_command_ids WHERE request_id = ?", (request_id,)
        ).fetchone()
        return None if row is None else (str(row[0]), float(row[1]))

    def _remember(self, conn: sqlite3.Connection, received: ReceivedCommand, outcome: str) -> None:
        now = self.now().timestamp()
        conn.execute(
            "INSERT INTO mqtt_command_ids (request_id, issued_at, seen_at, outcome) VALUES (?, ?, ?, ?)",
            (received.request_id, received.command.issued_at, now, outcome),
        )
        # By insertion order (rowid grows; only the oldest are deleted), never by a clock.
        conn.execute(
            "DELETE FROM mqtt_command_ids WHERE rowid <= (SELECT MAX(rowid) FROM mqtt_command_ids) - ?",
            (MAX_SEEN_REQUEST_IDS,),
        )

    # -- replies ------------------------------------------------------------------------------------------

    async def _reply(self, message: InboundMessage, reply: bytes) -> None:
        s = self.settings
        topic, honoured = reply_topic_for(s.topic_prefix, s.station, message.response_topic)
        if message.response_topic is not None and not honoured:
            log.warning("MQTT command: response topic %s is not the station's command-reply topic; replying "
                        "on %s", printable(message.response_topic)[:200], topic)
        correlation = message.correlation_data
        if correlation is not None and len(correlation) > MAX_CORRELATION_BYTES:
            correlation = None
        try:
            await self.client.publish(
                topic, reply, qos=1, correlation_data=correlation, timeout_s=REPLY_TIMEOUT_S
            )
        except MqttError as exc:
            log.warning("MQTT command reply to %s not published: %s", topic, exc)


@dataclass(frozen=True)
class _Answer:
    """What a reply says, before it is signed."""

    request_id: str | None
    result: Mapping[str, Any] | None = None
    error: CommandError | None = None
    detail: str | None = None
    first_outcome: FirstOutcome | None = None
    op: str | None = None
    """The op level of the topic the request came on (set by `CommandHandler.handle`)."""


def _is_item(value: object) -> bool:
    return isinstance(value, str) and ITEM_ID.fullmatch(value) is not None


def _recorded_result(op: CommandOp, result: Mapping[str, Any]) -> dict[str, Any]:
    """What the `command` entry keeps of the result: the status document is not evidence (and is
    large); its digest is kept, the rest as replied."""
    if op is CommandOp.STATUS:
        return {"status_sha256": sha256_hex(canonical_json(dict(result)))}
    return dict(result)
