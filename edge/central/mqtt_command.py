"""`edge central command`: command a station over MQTT (README "MQTT"; codec: edge.mqtt.commands).

    edge central command --config central.toml [--broker mqtts://broker:8883] [--identity DIR] \\
        [--ca FILE] [--topic-prefix P] STATION OP [ITEM] [options] [--json] [--timeout S]

The broker, the broker identity, its CA and the topic prefix come from the configuration's ``[mqtt]``
section (``broker_url``, ``client_bundle_dir``, ``ca_file``, ``topic_prefix``) when it has one; each
option overrides its setting (``--identity`` without ``--ca`` and without ``[mqtt]``: ``DIR/ca.crt``).
Without ``[mqtt]``, ``--broker`` and ``--identity`` are required and the prefix is ``evidence``.

The command is signed with the central's signing key (the key every station pinned at enrollment; it
signs receipts too), published on `<prefix>/stations/<STATION>/command/<OP>` with the central's broker
identity (the client certificate in DIR, whose CN is the central's id: the broker's ACL gives it
`<prefix>/#`), and the station's reply is awaited and printed. MQTT 5 (default): the request names the
response topic `<prefix>/stations/<STATION>/command-reply/<request id>` and carries the request id as
correlation data. MQTT 3.1.1: the reply comes on `<prefix>/stations/<STATION>/command-reply`, told apart
by its request id.

The reply counts only when the station signed it (edge.mqtt.commands, "replies") with the key the station
is enrolled with now (the index's record of the station: a station signs replies with its current key
only, so a retired or lost key, even one a rotation names, is never taken), naming the station, the
SHA-256 of the request just sent and the op of the topic it came on. Between a station's key rotation and
its re-enrolment with the new key its replies do not verify: they are reported ("not the key station S is
enrolled with now ... re-enrolled") and the command ends in 69; re-enrol the station. A reply that does not
verify is reported on stderr and the wait goes on (the station's own reply may still come). A station from
before signed replies answers unsigned: that is reported and does not end the wait either (the station's
signed reply may follow; at the deadline exit 69 says an unsigned one came), unless
``--allow-unsigned-reply``, which takes the first unsigned reply (printed as unsigned).

Everything from the reply that is printed (error, detail, result) is escaped (edge.custody.text): the
station's text never drives the operator's terminal.

Exit status: 0 the station executed it, or the request was a redelivery of one it executed earlier (a
`replayed` reply whose signed ``first_outcome`` is executed: printed as such); 1 the station refused it
(the reply's error and detail are printed); 69 no authentic reply in time, or only an unsigned one (the
command may still have run: ask `ledger-head`, or read the station's `command` ledger entries); 2 bad
arguments (an unknown or revoked station); 78 configuration, signing key, index or broker identity
unusable. The index is opened read-only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.central.backends import database_exists, open_central_index
from edge.central.config import (
    CentralConfig,
    ConfigError,
    MqttSection,
    SqliteIndexConfig,
    load_central_config,
)
from edge.central.identity import load_signing_key
from edge.central.index import CentralIndexError
from edge.central.sqlite.index import SqliteIndex
from edge.central.storage import Index
from edge.config.station import MQTT_BROKER_URL_OR_EMPTY, MQTT_DEFAULT_PORT, MQTT_TOPIC_PREFIX
from edge.custody.canonical import sha256_hex
from edge.custody.errors import CustodyError
from edge.custody.keys import StationKey, key_id_of
from edge.custody.text import json_printable, printable
from edge.mqtt.client import (
    ConnectionState,
    InboundMessage,
    MqttClient,
    MqttError,
    MqttSettings,
    ProtocolVersion,
)
from edge.mqtt.client_ids import fresh_client_id
from edge.mqtt.commands import (
    Command,
    CommandOp,
    Reply,
    ReplyNotAuthentic,
    command_reply_topic,
    command_request_topic,
    new_request_id,
    parse_reply,
    sign_command,
    utc_rfc3339,
    validated_args,
    verify_reply,
)
from edge.pki.bundle import BUNDLE_CA_CERT
from edge.pki.names import IdentityError
from edge.pki.tls import broker_ssl_context
from edge.runtime.exit_codes import ExitCode
from edge.uplink.policy import Backoff

__all__ = [
    "CommandTimeout",
    "Connection",
    "add_command_parser",
    "cmd_central_command",
    "command_connection",
    "send_command",
    "station_reply_keys",
]

# The stations' default [mqtt] topic_prefix (and the central's).
DEFAULT_TOPIC_PREFIX = "evidence"
# Sessions of this short-lived client: the broker forgets them soon after it disconnects (MQTT 5).
_SESSION_EXPIRY_S = 60


class CommandTimeout(Exception):
    """No authentic reply from the station in time (or only an unsigned one, not allowed)."""


@dataclass(frozen=True)
class Broker:
    settings: MqttSettings
    topic_prefix: str


async def send_command(
    broker: Broker,
    command: Command,
    key: StationKey,
    *,
    station_keys: Mapping[str, Ed25519PublicKey],
    timeout_s: float,
    allow_unsigned: bool = False,
) -> Reply:
    """Sign, publish, and wait for the station's reply signed by one of ``station_keys`` (see the module
    docstring). Raises `CommandTimeout`, or `MqttError` when the broker refuses the connection or the
    publish."""
    settings = broker.settings
    payload = sign_command(command, key.sign)
    request_sha256 = sha256_hex(payload)
    not_taken: list[str] = []
    unsigned: list[Reply] = []
    v5 = settings.protocol is ProtocolVersion.V5
    base = command_reply_topic(broker.topic_prefix, command.station)
    reply_topic = f"{base}/{command.request_id}" if v5 else base
    # The station may speak 3.1.1 (it then replies on the base topic whatever the request named): listen
    # on both, and tell the reply apart by its request id.
    reply_filter = f"{base}/#"
    answered: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()

    async def on_reply(message: InboundMessage) -> None:
        topic = printable(message.topic)[:300]
        try:
            reply = parse_reply(message.payload)
        except ValueError as exc:
            print(f"warning: ignored a reply on {topic}: {printable(str(exc))}", file=sys.stderr)
            return
        if reply.request_id != command.request_id or answered.done():
            return
        try:
            verify_reply(reply, station=command.station, op=command.op, request_sha256=request_sha256,
                         keys=station_keys)
        except ReplyNotAuthentic as exc:
            if not reply.signed:
                if allow_unsigned:
                    print(f"warning: station {command.station}'s reply is not signed (taken: "
                          "--allow-unsigned-reply)", file=sys.stderr)
                    answered.set_result(reply)
                    return
                # Not the end of the wait: anyone who can write the reply topic can send one, and the
                # station's signed reply may follow (module docstring).
                unsigned.append(reply)
                print(f"warning: an unsigned reply on {topic} was not taken (waiting for the station's "
                      "signed one)", file=sys.stderr)
                return
            not_taken.append(printable(str(exc)))
            print(f"warning: a reply on {topic} was not taken: {printable(str(exc))}", file=sys.stderr)
            return
        answered.set_result(reply)

    client = MqttClient(settings, backoff=Backoff(0.5, 2.0))
    runner = asyncio.create_task(client.run(), name="central-command-mqtt")
    try:
        async with asyncio.timeout(timeout_s):
            status = await client.wait_for(
                lambda s: s.state in (ConnectionState.CONNECTED, ConnectionState.REFUSED), timeout_s
            )
            if status.state is ConnectionState.REFUSED:
                raise MqttError(f"the broker refused the connection: {status.reason}")
            await client.subscribe(reply_filter, on_reply, timeout_s=timeout_s)
            await client.publish(
                command_request_topic(broker.topic_prefix, command.station, command.op),
                payload,
                response_topic=reply_topic if v5 else None,
                correlation_data=command.request_id.encode("ascii") if v5 else None,
            )
            return await answered
    except TimeoutError:
        rejected = f"; {len(not_taken)} reply(ies) did not verify: {not_taken[-1]}" if not_taken else ""
        if unsigned:
            rejected += (
                f"; {len(unsigned)} unsigned reply(ies) came (a station from before signed replies, or a "
                f"forgery; the last said ok={unsigned[-1].ok}): not taken. Upgrade the station, or accept "
                "an unsigned reply once with --allow-unsigned-reply"
            )
        raise CommandTimeout(
            f"no authentic reply from station {command.station} within {timeout_s:g} s (request "
            f"{command.request_id}){rejected}"
        ) from None
    finally:
        await client.close()
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError, MqttError):
            await runner


def broker_settings(
    *, broker_url: str, identity_dir: Path, ca_file: Path | None, central_id: str, protocol: ProtocolVersion
) -> MqttSettings:
    """Client settings for the central's broker identity: TLS with the client certificate of
    `identity_dir` (client.crt, client.key; ca.crt unless `ca_file`)."""
    if not broker_url or not re.fullmatch(MQTT_BROKER_URL_OR_EMPTY, broker_url):
        raise ValueError(f"--broker: expected mqtts://host[:port], found {broker_url[:100]!r}")
    rest = broker_url.removeprefix("mqtts://")
    if rest.startswith("["):
        host, _, port_text = rest[1:].partition("]")
        port_text = port_text.removeprefix(":")
    else:
        host, _, port_text = rest.partition(":")
    port = int(port_text) if port_text else MQTT_DEFAULT_PORT
    if not 1 <= port <= 65535:
        raise ValueError(f"--broker: port {port} is outside 1-65535")
    tls = broker_ssl_context(ca_file=ca_file or identity_dir / BUNDLE_CA_CERT, bundle_dir=identity_dir)
    return MqttSettings(
        host=host, port=port, client_id=fresh_client_id(central_id, "command"), tls=tls,
        protocol=protocol, session_expiry_s=_SESSION_EXPIRY_S, keepalive_s=30,
    )


@dataclass(frozen=True)
class Connection:
    """Where and as whom the command goes: the options, else the configuration's [mqtt] section."""

    broker_url: str
    identity_dir: Path
    ca_file: Path | None
    topic_prefix: str


def command_connection(args: argparse.Namespace, mqtt: MqttSection | None) -> Connection:
    """The options over the ``[mqtt]`` settings (see the module docstring); ValueError names what is
    missing."""
    broker_url = args.broker or (mqtt.broker_url if mqtt is not None else "")
    identity = args.identity or (str(mqtt.client_bundle_dir) if mqtt is not None else "")
    if not broker_url or not identity:
        missing = " and ".join(name for name, value in (("--broker", broker_url), ("--identity", identity))
                               if not value)
        raise ValueError(f"{missing} required: the configuration has no [mqtt] section to take them from")
    ca = Path(args.ca) if args.ca else (mqtt.ca_file if mqtt is not None else None)
    prefix = args.topic_prefix or (mqtt.topic_prefix if mqtt is not None else DEFAULT_TOPIC_PREFIX)
    return Connection(broker_url, Path(identity), ca, prefix)


def command_args(args: argparse.Namespace) -> dict[str, Any]:
    """The op's args from the command line (validated by the station's own rules before sending)."""
    op = CommandOp(args.op)
    if op is CommandOp.TAG:
        changes: dict[str, Any] = {
            field: getattr(args, field)
            for field in ("case_number", "location", "collector", "subject", "category", "retention")
            if getattr(args, field) is not None
        }
        if args.important is not None:
            changes["important"] = args.important
        raw: dict[str, Any] = {"item": args.item, "changes": changes, "by": args.by or getpass.getuser()}
    elif op is CommandOp.REUPLOAD:
        raw = {"item": args.item, **({"reason": args.reason} if args.reason else {})}
    else:
        if args.item is not None:
            raise ValueError(f"{op.value} takes no item")
        raw = {}
    validated_args(op, raw)  # the station checks them again; this says what is wrong before sending
    return raw


def cmd_central_command(args: argparse.Namespace) -> int:
    path = getattr(args, "config", None) or getattr(args, "central_config", None)
    if not path:
        print("error: --config FILE is required (the central's TOML configuration)", file=sys.stderr)
        return ExitCode.USAGE
    try:
        raw_args = command_args(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    try:
        config = load_central_config(Path(path))
    except (ConfigError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    try:
        connection = command_connection(args, config.mqtt)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    if not re.fullmatch(MQTT_TOPIC_PREFIX, connection.topic_prefix):
        print(f"error: --topic-prefix {connection.topic_prefix[:80]!r}: not a plain topic prefix",
              file=sys.stderr)
        return ExitCode.USAGE
    try:
        key = load_signing_key(config)
        settings = broker_settings(
            broker_url=connection.broker_url, identity_dir=connection.identity_dir,
            ca_file=connection.ca_file, central_id=config.central.id,
            protocol=ProtocolVersion(args.protocol),
        )
    except (ConfigError, IdentityError, CustodyError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    try:
        station_keys = _station_keys(config, args.station)
    except LookupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except (CentralIndexError, OSError) as exc:
        print(f"error: the central's index: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    command = Command(new_request_id(), CommandOp(args.op), args.station, utc_rfc3339(datetime.now(UTC)),
                      raw_args)
    try:
        reply = asyncio.run(
            send_command(Broker(settings, connection.topic_prefix), command, key, station_keys=station_keys,
                         timeout_s=args.timeout, allow_unsigned=args.allow_unsigned_reply)
        )
    except CommandTimeout as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.UNAVAILABLE
    except MqttError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.UNAVAILABLE
    # Everything the reply says is the station's text: escaped before it reaches the terminal.
    signed = f"signed by key {printable(str(reply.key_id))}" if reply.signed else "UNSIGNED reply"
    if args.json:
        print(json_printable(json.dumps(reply.as_json(), ensure_ascii=False, sort_keys=True)))
    elif reply.ok:
        print(f"station {command.station}: {command.op.value} done (request {command.request_id}; {signed})")
        print(json_printable(json.dumps(reply.result, ensure_ascii=False, indent=2, sort_keys=True)))
    elif reply.executed_earlier:
        print(f"station {command.station}: {command.op.value} done earlier: this delivery was a redelivery "
              f"of request {command.request_id}, which the station had executed ({signed}): "
              f"{printable(str(reply.detail))}")
    else:
        print(f"station {command.station} refused {command.op.value} (request {command.request_id}): "
              f"{printable(str(reply.error))}: {printable(str(reply.detail))}", file=sys.stderr)
    return ExitCode.OK if reply.took_effect else ExitCode.FAILED


def station_reply_keys(station: str, index: Index) -> dict[str, Ed25519PublicKey]:
    """The key a reply of ``station`` may be signed with, by key id: the one it is enrolled with now (its
    index record). Not the keys its rotations name (edge.central.disclosure.package.station_keys_in_use,
    which verify what the station signed in the past): a station signs every reply with its current key,
    so a retired or lost one in a reply is someone else's hand. LookupError when the station is unknown or
    not active."""
    record = index.station(station)
    if record is None:
        raise LookupError(f"station {station} is not enrolled at this central")
    if not record.active:
        raise LookupError(f"station {station} is {record.status}: its replies could not be trusted")
    key = record.public_key()
    return {key_id_of(key): key}


def _station_keys(config: CentralConfig, station: str) -> dict[str, Ed25519PublicKey]:
    """`station_reply_keys`, from the central's index opened read-only (this command changes nothing)."""
    if not database_exists(config):
        raise LookupError(f"station {station} is not enrolled at this central (no enrollments yet)")
    # SQLite: the file read-only; PostgreSQL: the configured database (this command only reads it).
    index = (SqliteIndex.open_readonly(config.layout.index_db)
             if isinstance(config.central.index, SqliteIndexConfig) else open_central_index(config))
    try:
        return station_reply_keys(station, index)
    finally:
        index.close()


def add_command_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`edge central command` (called from edge.central.cli)."""
    parser = commands.add_parser(
        "command",
        help="command a station over MQTT (tag, reupload, ledger-head, status, officers-sync), signed by the "
        "central key",
    )
    parser.add_argument("station", metavar="STATION", help="the station's id")
    parser.add_argument("op", metavar="OP", choices=[op.value for op in CommandOp],
                        help="tag, reupload, ledger-head, status or officers-sync")
    parser.add_argument("item", metavar="ITEM", nargs="?", help="the item (tag, reupload)")
    parser.add_argument("--config", metavar="FILE", help="central TOML file (its signing key signs)")
    parser.add_argument("--broker", metavar="URL",
                        help="mqtts://host[:port] of the broker (default: [mqtt] broker_url)")
    parser.add_argument(
        "--identity", metavar="DIR",
        help="the central's broker identity: client.crt (CN = the central id), client.key, ca.crt "
        "(default: [mqtt] client_bundle_dir)",
    )
    parser.add_argument("--ca", metavar="FILE",
                        help="CA of the broker's certificate (default: [mqtt] ca_file, else DIR/ca.crt)")
    parser.add_argument("--topic-prefix", default=None,
                        help=f"topic prefix of the stations (default: [mqtt] topic_prefix, else "
                        f"{DEFAULT_TOPIC_PREFIX})")
    parser.add_argument(
        "--protocol", choices=[p.value for p in ProtocolVersion], default=ProtocolVersion.V5.value
    )
    parser.add_argument("--timeout", type=float, default=30.0, metavar="S", help="reply deadline")
    parser.add_argument("--json", action="store_true", help="print the reply as JSON")
    parser.add_argument(
        "--allow-unsigned-reply", action="store_true",
        help="take an unsigned reply (a station from before signed replies), printed as unsigned",
    )
    tag = parser.add_argument_group("tag")
    for field in ("case-number", "location", "collector", "subject", "category", "retention"):
        tag.add_argument(f"--{field}", dest=field.replace("-", "_"))
    tag.add_argument("--important", dest="important", action="store_true", default=None)
    tag.add_argument("--not-important", dest="important", action="store_false")
    tag.add_argument("--by", help="who at the central tags (default: the login name)")
    parser.add_argument("--reason", help="reupload: why (kept in the station's requeued entry)")
    parser.set_defaults(func=cmd_central_command)
