"""`edge status`: the station agent's status board, for a person (tables) or a program (`--json`).

Asks the running agent over its local API socket (``[api] socket_path`` of the configuration, or
``--socket``). When no agent answers, it says so and exits 69 (EX_UNAVAILABLE); a caller the API does
not admit (not root, the store's owner or in ``[api] operators_group``) gets 77 (EX_NOPERM).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console

from edge.config.station import default_api_socket
from edge.custody.text import json_printable, printable
from edge.ingest.store_commands import load_station_config
from edge.observe.terminal import print_status
from edge.runtime.exit_codes import ExitCode

TIMEOUT_S = 10.0


class AgentUnavailable(Exception):
    """No station agent answered on the socket."""


class NotAdmitted(Exception):
    """The API refused this caller."""


async def fetch_status(socket_path: Path, timeout_s: float = TIMEOUT_S) -> dict[str, Any]:
    connector = aiohttp.UnixConnector(path=str(socket_path))
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client, client.get(
            "http://station/api/v1/status"
        ) as response:
            if response.status == 403:
                raise NotAdmitted((await response.json()).get("error", "refused"))
            response.raise_for_status()
            status: dict[str, Any] = await response.json()
            return status
    except aiohttp.ClientConnectorError as exc:
        if isinstance(exc.os_error, PermissionError):
            raise NotAdmitted(f"the socket {socket_path} does not admit this user") from None
        raise AgentUnavailable(str(exc.os_error.strerror or exc)) from None
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise AgentUnavailable(str(exc) or type(exc).__name__) from None


def api_socket(args: argparse.Namespace) -> Path | ExitCode:
    """The local API socket a command talks to: `--socket`, else the `[api] socket_path` of `--config`
    (CONFIG when that configuration has the API disabled), else the default. Every `edge` command that
    asks the running agent resolves it here."""
    if args.socket:
        return Path(args.socket)
    if args.config:
        config = load_station_config(Path(args.config))
        if isinstance(config, ExitCode):
            return config
        if not config.api.enabled:
            print("the local API is disabled in this configuration ([api] enabled = false)", file=sys.stderr)
            return ExitCode.CONFIG
        return config.api.socket_path
    return default_api_socket()


def cmd_status(args: argparse.Namespace) -> int:
    socket_path = api_socket(args)
    if isinstance(socket_path, ExitCode):
        return socket_path
    try:
        status = asyncio.run(fetch_status(socket_path))
    except AgentUnavailable as exc:
        print(
            f"the station agent is not running: nothing answers on {printable(str(socket_path))} "
            f"({printable(str(exc))}). Start it with `systemctl start evidence-edge` or `edge run`.",
            file=sys.stderr,
        )
        return ExitCode.UNAVAILABLE
    except NotAdmitted as exc:
        print(
            f"not allowed to read the station status: {printable(str(exc))} (root, the store's owner and "
            "members of [api] operators_group may)",
            file=sys.stderr,
        )
        return ExitCode.NO_PERMISSION
    if args.json:
        print(json_printable(json.dumps(status, ensure_ascii=False)))  # one line: no raw control escapes
    else:
        print_status(status, Console(highlight=False))
    return ExitCode.OK


def add_status_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = sub.add_parser(
        "status",
        help="the running station's status: bays, tasks, spool, disk, clock, central",
        description="Ask the running station agent for its status over the local API socket. Exits 69 when "
        "no agent answers.",
    )
    status.add_argument("--config", help="station TOML file (its [api] socket_path)")
    status.add_argument("--socket", help="the API socket (default: $RUNTIME_DIRECTORY/station.sock, else "
                        "/run/evidence-edge/station.sock)")
    status.add_argument("--json", action="store_true", help="the status as JSON (see edge.observe)")
    status.set_defaults(func=cmd_status)
