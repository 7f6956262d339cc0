"""`edge gb28181 devices`: the running agent's GB/T 28181 devices, for a person (a table) or a program
(`--json`).

Reads the `gb28181` part of the status the local API serves (`/api/v1/status`, as `edge status` does), so
it shows what the running platform knows: devices, online state, address, last keepalive, clock offset,
channels and sessions in progress, the downloads (in progress, done, already sealed, failed,
incomplete; edge.sources.gb28181.scheduler) and the live channels (state, consumers, since, interruptions;
edge.gb28181.live). Exit codes as `edge status`: 69 when no agent answers, 77
when the API does not admit the caller, 78 when the configuration has no local API, and 69 too when the
agent runs without the platform ([gb28181] enabled = false).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any, TextIO

from edge.custody.text import json_printable, printable
from edge.observe.status_cli import AgentUnavailable, NotAdmitted, api_socket, fetch_status
from edge.runtime.exit_codes import ExitCode


def _offset(value: Any) -> str:
    return "-" if not isinstance(value, int | float) else f"{value:+.1f} s"


def print_devices(view: dict[str, Any], out: TextIO) -> None:
    """Two lines per device (whatever the terminal's width): who and where, then what is known of it."""
    devices = view.get("devices", [])
    print(f"GB/T 28181 platform {printable(str(view.get('sip_id')))} (domain "
          f"{printable(str(view.get('domain')))}, port {view.get('port')}): {len(devices)} device(s)",
          file=out)
    for device in devices:
        state = "online" if device.get("online") else "offline"
        name = printable(str(device.get("name") or ""))
        print(f"{printable(str(device.get('device_id')))}  {state:<7}  "
              f"{printable(str(device.get('address') or '-'))}  {name}".rstrip(), file=out)
        sessions = ", ".join(f"{s.get('kind')} {s.get('channel_id')} ({s.get('state')})"
                             for s in device.get("sessions", []))
        print(f"    last keepalive {printable(str(device.get('last_keepalive_at') or '-'))}, clock offset "
              f"{_offset(device.get('clock_offset_s'))}, {len(device.get('channels', []))} channel(s), "
              f"sessions: {printable(sessions) or 'none'}", file=out)
        other_port = device.get("keepalive_other_port")
        if isinstance(other_port, dict):
            # Not followed (only a REGISTER moves a device): a NAT rebinding, or a neighbour behind its NAT.
            print(f"    keepalive from another port: {other_port.get('count')} since it registered, last "
                  f"from {printable(str(other_port.get('last_from')))} at "
                  f"{printable(str(other_port.get('last_at')))}", file=out)
        downloads = (view.get("downloads") or {}).get(device.get("device_id"))
        if isinstance(downloads, dict):
            print(f"    downloads: {_downloads(downloads)}", file=out)
        live = (view.get("live") or {}).get(device.get("device_id"))
        for channel in live if isinstance(live, list) else []:
            if isinstance(channel, dict):
                print(f"    live: {_live(channel)}", file=out)


def _downloads(progress: dict[str, Any]) -> str:
    """The download scheduler's progress for one device (edge.sources.gb28181.scheduler)."""
    state = printable(str(progress.get("state") or "idle"))
    if progress.get("current"):
        state += f" {printable(str(progress['current']))}"
    text = (f"{state}; {progress.get('done', 0)} done, {progress.get('skipped', 0)} already sealed, "
            f"{progress.get('failed', 0)} failed, {progress.get('incomplete', 0)} incomplete")
    # Shown only when they happened: each is a listed recording not (yet) downloaded whole, with a reason.
    for key, what in (("interrupted", "interrupted (device offline or station stopped)"),
                      ("given_up", "given up"), ("future", "still recording (ends after the device's now)"),
                      ("wrong_channel", "listed under another channel (not downloaded)"),
                      ("unreadable_records", "listed unreadable (not downloaded)")):
        count = progress.get(key)
        if isinstance(count, int) and count > 0:
            text += f", {count} {what}"
    if progress.get("last_pass_at"):
        text += f", last pass {printable(str(progress['last_pass_at']))}"
    if progress.get("channels_left_out"):
        text += f", {progress['channels_left_out']} video channel(s) over the cap not asked"
    if progress.get("listing_clock") and "not measured" in str(progress["listing_clock"]):
        text += ", listed in the station's time (the device's clock offset is not measured)"
    if progress.get("last_problem"):
        text += f" ({printable(str(progress['last_problem']))})"
    return text


def _live(channel: dict[str, Any]) -> str:
    """One live channel (edge.gb28181.live): its state, consumers, since when, interruptions."""
    since = printable(str(channel.get("since") or "-"))
    text = (f"{printable(str(channel.get('channel_id')))} {printable(str(channel.get('state')))}, "
            f"{channel.get('consumers', 0)} consumer(s), since {since}, "
            f"{channel.get('interruptions', 0)} interruption(s)")
    open_gap = channel.get("interrupted")
    if isinstance(open_gap, dict):
        text += (f", interrupted since {printable(str(open_gap.get('from')))}: "
                 f"{printable(str(open_gap.get('reason')))}")
    if channel.get("last_problem"):
        text += f" ({printable(str(channel['last_problem']))})"
    return text


def cmd_devices(args: argparse.Namespace) -> int:
    socket_path = api_socket(args)
    if isinstance(socket_path, ExitCode):
        return socket_path
    try:
        status = asyncio.run(fetch_status(socket_path))
    except AgentUnavailable as exc:
        print(f"the station agent is not running: nothing answers on {printable(str(socket_path))} "
              f"({printable(str(exc))})", file=sys.stderr)
        return ExitCode.UNAVAILABLE
    except NotAdmitted as exc:
        print(f"not allowed to read the station status: {printable(str(exc))}", file=sys.stderr)
        return ExitCode.NO_PERMISSION
    view = status.get("gb28181")
    if not isinstance(view, dict):
        print("the running agent has no GB/T 28181 platform ([gb28181] enabled = false)", file=sys.stderr)
        return ExitCode.UNAVAILABLE
    if args.json:
        print(json_printable(json.dumps(view, ensure_ascii=False)))
    else:
        print_devices(view, sys.stdout)
    return ExitCode.OK


def add_gb28181_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    gb = sub.add_parser("gb28181", help="the GB/T 28181 platform: its devices")
    commands = gb.add_subparsers(dest="gb28181_command", required=True)
    devices = commands.add_parser(
        "devices", help="devices, channels, online state, last keepalive, clock offset, sessions",
        description="Ask the running station agent for its GB/T 28181 devices over the local API socket.",
    )
    devices.add_argument("--config", help="station TOML file (its [api] socket_path)")
    devices.add_argument("--socket", help="the API socket (default as for `edge status`)")
    devices.add_argument("--json", action="store_true", help="as JSON")
    devices.set_defaults(func=cmd_devices)
