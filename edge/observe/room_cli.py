"""`edge room start|stop|mark|change|status`: run a room's session through the running agent's local API.

Talks to the agent over its Unix socket (``[api] socket_path`` of ``--config``, or ``--socket``), like
`edge status`: no agent answering exits 69, a caller the API does not admit 77, a request the agent
refused (unknown room, a session already recording there, a bad case number, nothing recording) 65
(EX_DATAERR) with the agent's reason. ``--json`` prints the agent's answer as one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import aiohttp

from edge.custody.text import json_printable, printable
from edge.observe.room_files_cli import add_room_file_parsers
from edge.observe.status_cli import TIMEOUT_S, AgentUnavailable, NotAdmitted, api_socket
from edge.runtime.exit_codes import ExitCode

EX_DATAERR = 65
# A stop waits for every source's last segment to be closed and sealed, the manifest, each source's joined
# file (a copy of the session's recording) and the statement.
STOP_TIMEOUT_S = 1800.0


class Refused(Exception):
    """The agent refused the request; the message is its reason."""


async def call_agent(
    socket_path: Path,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    timeout_s: float = TIMEOUT_S,
) -> Any:
    connector = aiohttp.UnixConnector(path=str(socket_path))
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout) as client,
            client.request(method, f"http://station{path}", json=body) as response,
        ):
            answer = await response.json(content_type=None)
            if response.status == 403:
                raise NotAdmitted(answer.get("error", "refused") if isinstance(answer, dict) else "refused")
            if response.status >= 400:
                raise Refused(
                    answer.get("error", f"HTTP {response.status}")
                    if isinstance(answer, dict)
                    else f"HTTP {response.status}"
                )
            return answer
    except aiohttp.ClientConnectorError as exc:
        if isinstance(exc.os_error, PermissionError):
            raise NotAdmitted(f"the socket {socket_path} does not admit this user") from None
        raise AgentUnavailable(str(exc.os_error.strerror or exc)) from None
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise AgentUnavailable(str(exc) or type(exc).__name__) from None


def _persons(values: list[str] | None) -> list[dict[str, str]] | None:
    if values is None:
        return None
    persons = []
    for value in values:
        name, sep, role = value.rpartition(":")
        if not sep or not name or not role:
            raise ValueError(f"--person {value!r}: expected NAME:ROLE (for example 李四:被询问人)")
        persons.append({"name": name, "role": role})
    return persons


def _fields(args: argparse.Namespace) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name in ("case_number", "collector", "collector_no", "subject"):
        value = getattr(args, name, None)
        if value is not None:
            fields[name] = value
    persons = _persons(getattr(args, "person", None))
    if persons is not None:
        fields["persons"] = persons
    return fields


def cmd_room(args: argparse.Namespace) -> int:
    socket_path = api_socket(args)
    if isinstance(socket_path, ExitCode):
        return socket_path
    action: str = args.action
    try:
        if action == "status":
            request: tuple[str, str, dict[str, Any] | None] = ("GET", "/api/v1/rooms", None)
        elif action == "mark":
            request = ("POST", f"/api/v1/rooms/{args.room}/mark", {"note": args.note})
        elif action == "stop":
            request = ("POST", f"/api/v1/rooms/{args.room}/stop", {})
        else:
            request = ("POST", f"/api/v1/rooms/{args.room}/{action}", _fields(args))
    except ValueError as exc:
        print(f"edge room {action}: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    timeout = STOP_TIMEOUT_S if action == "stop" else TIMEOUT_S
    try:
        answer = asyncio.run(call_agent(socket_path, *request, timeout_s=timeout))
    except AgentUnavailable as exc:
        print(
            f"the station agent is not running: nothing answers on {printable(str(socket_path))} "
            f"({printable(str(exc))})",
            file=sys.stderr,
        )
        return ExitCode.UNAVAILABLE
    except NotAdmitted as exc:
        print(f"not allowed to run room sessions: {printable(str(exc))}", file=sys.stderr)
        return ExitCode.NO_PERMISSION
    except Refused as exc:
        print(f"edge room {action} refused: {printable(str(exc))}", file=sys.stderr)
        return EX_DATAERR
    if args.json:
        print(json_printable(json.dumps(answer, ensure_ascii=False)))
    else:
        print(_describe(action, answer))
    return ExitCode.OK


def _describe(action: str, answer: Any) -> str:
    if action == "start":
        return (
            f"session {answer['room_session']} recording in room {printable(answer['room'])} "
            f"(case {printable(answer['case']['case_number'])})"
        )
    if action == "stop":
        return (
            f"session {answer['room_session']} stopped: {answer['segments']} segments, {answer['gaps']} "
            f"gaps, {answer['marks']} marks; session manifest item {answer['manifest_item']}; "
            + "; ".join(f"source {printable(str(j['source']))} joined as item {j['item']}" if j["item"]
                        else f"source {printable(str(j['source']))} NOT joined (see the statement)"
                        for j in answer.get("joined", []))
            + f"; statement (相关说明) item {answer.get('statement_item')}"
        )
    if action == "mark":
        return f"marked at {answer['time_utc']} (ledger seq {answer['seq']})"
    if action == "change":
        return f"changed {', '.join(sorted(answer['changes']))} (ledger seq {answer['seq']})"
    lines = []
    for room in answer["rooms"]:
        session = room["session"]
        head = f"{printable(room['room'])} {printable(room['name'])}: "
        if session is None:
            lines.append(head + "idle")
            continue
        lines.append(
            head + f"recording session {session['room_session']} case "
            f"{printable(session['case']['case_number'])} since {session['started_utc']}"
        )
        for source in room["sources"]:
            state = (
                "recording"
                if source["recording"]
                else (
                    f"GAP since {source['gap']['from_utc']}: {printable(str(source['gap']['reason']))}"
                    if source["gap"]
                    else "starting"
                )
            )
            # The composite: what of its feeds it did not take (a gap of it each).
            feeds = [feed for feed in source.get("feeds") or [] if isinstance(feed, dict)]
            dropped = [
                f"feed {printable(str(feed.get('source')))}: {feed.get('packets_dropped')} packets dropped"
                for feed in feeds if feed.get("packets_dropped")
            ]
            lines.append(
                f"  {printable(source['source'])}: {state}; {source['segments_sealed']} sealed, "
                f"last seal {source['last_seal_latency_s']} s" + "".join(f"; {text}" for text in dropped)
            )
    for problem in answer.get("products_problems") or []:
        if isinstance(problem, dict):
            lines.append(f"PRODUCTS NOT MADE: session {printable(str(problem.get('room_session')))}: "
                         f"{printable(str(problem.get('problem')))}")
    space = answer.get("space")
    if isinstance(space, dict) and space.get("level") in ("low", "critical"):
        left = space.get("minutes_left")
        lines.append(
            f"DISK SPACE {str(space['level']).upper()}: the store reaches its reserve in "
            f"{'?' if left is None else left} minutes at the present rate "
            f"({int(space.get('free_bytes') or 0) / 2**30:.1f} GiB free)"
        )
    if isinstance(space, dict) and space.get("level") == "unknown":  # statvfs failing (edge.rooms.space)
        lines.append(f"DISK SPACE UNKNOWN: {printable(str(space.get('error') or 'cannot be read'))[:200]}")
    reserve = answer.get("reserve")
    held = reserve.get("held") if isinstance(reserve, dict) else None
    if isinstance(held, list) and held:  # sources the recording reserve stopped (edge.rooms.reserve)
        lines.append(
            "DISK AT THE RECORDING RESERVE: stopped until space is freed: "
            + ", ".join(printable(str(name))[:80] for name in held[:16])
        )
    return "\n".join(lines)


def add_room_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    room = sub.add_parser(
        "room",
        help="interview and hearing rooms: start, stop, mark, change and show sessions",
        description="Run a room's recording session through the running station agent (its local API).",
    )
    actions = room.add_subparsers(dest="action", required=True)

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--config", help="station TOML file (its [api] socket_path)")
        parser.add_argument("--socket", help="the API socket (default as for edge status)")
        parser.add_argument("--json", action="store_true", help="print the agent's answer as JSON")

    def case_fields(parser: argparse.ArgumentParser, *, required: bool) -> None:
        parser.add_argument("--case-number", dest="case_number", required=required, help="案件编号")
        parser.add_argument("--collector", required=required, help="采集人: the operator recording")
        parser.add_argument("--collector-no", dest="collector_no", help="the collector's 警号")
        parser.add_argument("--subject", required=required, help="证明对象: what the recording proves")
        parser.add_argument(
            "--person",
            action="append",
            metavar="NAME:ROLE",
            help="a person present and their role (repeat for each)",
        )

    start = actions.add_parser("start", help="start recording a session in a room")
    start.add_argument("room", help="room id ([[rooms.room]] id)")
    case_fields(start, required=True)
    common(start)
    stop = actions.add_parser("stop", help="stop the room's session: seal everything and its manifest")
    stop.add_argument("room")
    common(stop)
    mark = actions.add_parser("mark", help="mark a moment of the session (打点)")
    mark.add_argument("room")
    mark.add_argument("note", help="what happened")
    common(mark)
    change = actions.add_parser("change", help="change the session's case fields or persons")
    change.add_argument("room")
    case_fields(change, required=False)
    common(change)
    status = actions.add_parser("status", help="every room: its session and each source")
    common(status)
    room.set_defaults(func=cmd_room)
    add_room_file_parsers(actions, common)
