"""The status model in words and tables for a terminal: `edge status` and `edge demo`.

The model carries codes; the dock screen has its own Chinese and English strings. A terminal is read by
an administrator: English words, with rich tables when the output is a terminal and plain lines when it
is not (a log, a pipe). Every device string was escaped by the board already; rich markup in it is
never interpreted (Text objects, not markup strings).
"""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from edge.custody.text import printable

STATE_WORDS = {
    "empty": "empty",
    "authenticating": "checking recorder",
    "copying": "copying",
    "verifying": "verifying",
    "awaiting_receipt": "safe; awaiting central receipt",
    "done": "done: take the recorder",
    "error": "error",
}
STATE_STYLES = {
    "empty": "dim",
    "authenticating": "cyan",
    "copying": "blue",
    "verifying": "blue",
    "awaiting_receipt": "yellow",
    "done": "green",
    "error": "bold red",
}
ERROR_WORDS = {
    "not_allowed": "not on the allow-list",
    "wrong_password": "recorder refused the password",
    "no_password": "no recorder password configured",
    "no_identity": "volume does not say which recorder it is",
    "disk_full": "station disk full",
    "rooms_recording": "disk space kept for the rooms recording: dock it again once they stop",
    "pulled_early": "pulled out early: dock it again",
    "files_failed": "some files failed",
    "no_volume": "recorder volume did not appear",
    "device_error": "recorder answered wrongly",
    "failed": "unexpected failure (see the log)",
}


def state_words(bay: dict[str, Any]) -> str:
    state = str(bay.get("state"))
    if state == "error":
        code = str(bay.get("error_class"))
        words = f"error: {ERROR_WORDS.get(code, code)}"
    else:
        words = STATE_WORDS.get(state, state)
    return "; ".join([words, *bay_warnings(bay)])


def bay_warnings(bay: dict[str, Any]) -> list[str]:
    """What an administrator must look at in a bay whatever its state: its presence switch bouncing, the
    USB serial its recorder claims shared with another bay's or missing."""
    warnings: list[str] = []
    if bay.get("bouncing"):
        warnings.append("bay sensor bouncing: check the bay board")
    usb_serial = bay.get("usb_serial_warning") or {}
    if usb_serial.get("problem") == "shared":
        others = ", ".join(str(b) for b in usb_serial.get("bays") or []) or "another bay"
        warnings.append(f"USB serial also claimed in bay {others} (each copied from its own bay)")
    elif usb_serial.get("problem") == "missing":
        warnings.append("no usable USB serial (cannot be pinned by the allow-list)")
    return warnings


def size_text(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def bay_line(bay: dict[str, Any]) -> str:
    """One plain line for a bay (logs, pipes)."""
    officer = bay.get("officer") or {}
    device = bay.get("device") or {}
    parts = [f"bay {bay['bay']}: {state_words(bay)}"]
    if device.get("serial"):
        parts.append(f"recorder {device['serial']}")
    if officer.get("name") or officer.get("badge"):
        parts.append(f"{officer.get('name', '')} {officer.get('badge', '')}".strip())
    if bay.get("files_total"):
        parts.append(f"files {bay['files_done']}/{bay['files_total']}")
        parts.append(f"{size_text(bay['bytes_done'])}/{size_text(bay['bytes_total'])}")
    if bay.get("speed_bps"):
        parts.append(f"{size_text(bay['speed_bps'])}/s")
    return ", ".join(parts)


def bays_table(bays: list[dict[str, Any]], title: str = "Bays") -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("bay", "state", "officer", "recorder", "files", "copied", "speed", "ETA"):
        table.add_column(column, justify="right" if column in ("files", "copied", "speed", "ETA") else "left")
    for bay in bays:
        officer = bay.get("officer") or {}
        device = bay.get("device") or {}
        files = f"{bay['files_done']}/{bay['files_total']}" if bay.get("files_total") else ""
        copied = ""
        if bay.get("bytes_total"):
            copied = f"{size_text(bay['bytes_done'])}/{size_text(bay['bytes_total'])}"
        table.add_row(
            Text(str(bay["bay"])),
            Text(state_words(bay), style=STATE_STYLES.get(str(bay.get("state")), "")),
            Text(f"{officer.get('name', '')} {officer.get('badge', '')}".strip()),
            Text(str(device.get("serial") or "")),
            files,
            copied,
            f"{size_text(bay['speed_bps'])}/s" if bay.get("speed_bps") else "",
            f"{bay['eta_s']:.0f} s" if bay.get("eta_s") is not None else "",
        )
    return table


def station_lines(station: dict[str, Any]) -> list[str]:
    """The station part as `label: value` lines (the table's rows, and the plain output)."""
    clock = station.get("clock") or {}
    disk = station.get("disk") or {}
    ledger = station.get("ledger") or {}
    central = station.get("central") or {}
    spool = station.get("spool") or {}
    unit = station.get("unit") or {}
    if not central.get("configured"):
        central_text = "not configured"
    else:
        reachable = central.get("reachable")
        reach = "not contacted yet" if reachable is None else "reachable" if reachable else "NOT reachable"
        central_text = (
            f"{reach}, breaker {central.get('breaker')}, "
            f"last contact {central.get('last_contact_at') or '-'}, "
            f"last receipt {central.get('last_receipt_at') or '-'}"
        )
    tasks = ", ".join(
        f"{t['name']} {t['state']}" + (f" ({t['restarts']} restarts)" if t.get("restarts") else "")
        for t in station.get("tasks") or []
    )
    counts = station.get("counts") or {}
    refusals = ", ".join(f"{k} {v}" for k, v in sorted((counts.get("refusals") or {}).items())) or "none"
    errors = ", ".join(f"{k} {v}" for k, v in sorted((counts.get("errors") or {}).items())) or "none"
    return [
        f"station: {station.get('id')} ({unit.get('name') or ''} {unit.get('code') or ''}), "
        f"version {station.get('version')}, up since {station.get('started_at')}",
        f"clock: {'trusted' if clock.get('trusted') else 'NOT trusted'} ({clock.get('source')}: "
        f"{clock.get('detail')})",
        f"signing key: {station.get('key_id')}",
        f"disk: {size_text(disk.get('free_bytes'))} free of {size_text(disk.get('total_bytes'))}",
        f"ledger: head {ledger.get('head_seq')}, central witnessed up to {ledger.get('witnessed_seq')} "
        f"({ledger.get('unwitnessed_entries')} entries not yet witnessed)",
        f"central: {central_text}",
        f"spool: {spool.get('items')} items, {size_text(spool.get('bytes'))}, "
        f"oldest {spool.get('oldest_at') or '-'}"
        + (f", {spool['held']} held until re-acquired (stored copy changed)" if spool.get("held") else ""),
        f"tasks: {tasks or '-'}",
        f"refusals: {refusals}",
        f"errors: {errors}",
    ]


def gb28181_line(view: Any) -> str | None:
    """One line about the GB/T 28181 platform, when the agent runs one (details: `edge gb28181 devices`)."""
    if not isinstance(view, dict):
        return None
    devices = [d for d in view.get("devices", []) if isinstance(d, dict)]
    online = sum(1 for d in devices if d.get("online"))
    sessions = sum(len(d.get("sessions", [])) for d in devices)
    return (f"gb28181: {len(devices)} device(s), {online} online, {sessions} session(s) "
            "(edge gb28181 devices)")


FLEET_STATE_WORDS = {
    "overdue": "OVERDUE",
    "faulty": "FAULTY",
    "out": "out",
    "docked": "in a bay",
    "away": "away (no check-out)",
    "never_docked": "never docked here",
}
FLEET_STATE_STYLES = {"overdue": "bold red", "faulty": "red", "out": "cyan", "docked": "green",
                      "away": "yellow", "never_docked": "dim"}


def fleet_line(view: Any) -> str | None:
    """The fleet's counts in one line (edge.equipment.fleet), when the agent keeps the view."""
    if not isinstance(view, dict):
        return None
    counts = view.get("counts") or {}
    total = sum(n for n in counts.values() if isinstance(n, int))
    parts = [f"{counts[state]} {words}" for state, words in FLEET_STATE_WORDS.items() if counts.get(state)]
    return f"fleet: {total} recorder(s){': ' + ', '.join(parts) if parts else ''}"


def _where(recorder: dict[str, Any]) -> str:
    """Where a recorder is, or who has it, in words."""
    holder = recorder.get("holder")
    bay = recorder.get("bay")
    if isinstance(holder, dict):
        text = (f"{holder.get('officer_name', '')} {holder.get('officer_no', '')} "
                f"since {holder.get('since')}, due {holder.get('due_at')}")
        return text.strip()
    if isinstance(bay, dict):
        return f"bay {bay.get('bay') if bay.get('bay') is not None else '?'}: {bay.get('state')}"
    return ""


def _health(recorder: dict[str, Any]) -> str:
    parts = []
    if recorder.get("battery_percent") is not None:
        parts.append(f"battery {recorder['battery_percent']}%")
    if recorder.get("storage_total_bytes"):
        parts.append(f"{size_text(recorder.get('storage_free_bytes'))} free of "
                     f"{size_text(recorder['storage_total_bytes'])}")
    parts.append(f"firmware {recorder.get('firmware') or '-'}")
    parts.extend(str(p.get("detail", "")) for p in recorder.get("problems") or [] if isinstance(p, dict))
    return ", ".join(parts)


def fleet_recorder_line(recorder: dict[str, Any]) -> str:
    state = str(recorder.get("state"))
    docking = recorder.get("last_docking") or {}
    where = _where(recorder)
    last = f"last docked {docking.get('started_at')}" if docking else "never docked"
    return (f"recorder {recorder.get('device_serial')}: {FLEET_STATE_WORDS.get(state, state)}"
            f"{' (' + where + ')' if where else ''}; {_health(recorder)}; {last}")


def fleet_table(view: dict[str, Any]) -> Table:
    table = Table(title=fleet_line(view) or "Fleet", title_justify="left")
    for column in ("recorder", "state", "where / who", "battery", "storage free", "firmware", "last docking"):
        table.add_column(column)
    for recorder in view.get("recorders") or []:
        state = str(recorder.get("state"))
        docking = recorder.get("last_docking") or {}
        problems = "; ".join(str(p.get("detail", "")) for p in recorder.get("problems") or [])
        battery = recorder.get("battery_percent")
        table.add_row(
            Text(str(recorder.get("device_serial"))),
            Text(FLEET_STATE_WORDS.get(state, state), style=FLEET_STATE_STYLES.get(state, "")),
            Text(" ".join(x for x in (_where(recorder), problems) if x)),
            "" if battery is None else f"{battery}%",
            "" if not recorder.get("storage_total_bytes") else
            f"{size_text(recorder.get('storage_free_bytes'))}/{size_text(recorder['storage_total_bytes'])}",
            Text(str(recorder.get("firmware") or "-")),
            Text(f"{docking.get('started_at')} {docking.get('outcome') or 'under way'}" if docking else "-"),
        )
    return table


def telemetry_line(view: Any) -> str | None:
    """One line when the station's MQTT telemetry is off for a reason (a telemetry salt it cannot use)."""
    if not isinstance(view, dict) or view.get("enabled") is not False:
        return None
    return f"mqtt telemetry: OFF: {printable(str(view.get('reason', '?')))[:300]}"


def _station_and_platform_lines(status: dict[str, Any]) -> list[str]:
    lines = station_lines(status["station"])
    extra = [gb28181_line(status.get("gb28181")), telemetry_line(status.get("mqtt_telemetry")),
             fleet_line(status.get("fleet"))]
    return [*lines, *(line for line in extra if line is not None)]


def status_renderable(status: dict[str, Any]) -> Group:
    station = Table(show_header=False, title="Station", title_justify="left")
    station.add_column("what", style="bold")
    station.add_column("value")
    for line in _station_and_platform_lines(status):
        label, _, value = line.partition(": ")
        station.add_row(label, Text(value))
    fleet = status.get("fleet")
    if isinstance(fleet, dict) and fleet.get("recorders"):
        return Group(station, bays_table(status["bays"]), fleet_table(fleet))
    return Group(station, bays_table(status["bays"]))


def print_status(status: dict[str, Any], console: Console) -> None:
    if console.is_terminal:
        console.print(status_renderable(status))
        return
    for line in _station_and_platform_lines(status):
        console.print(Text(line), soft_wrap=True)
    for bay in status["bays"]:
        console.print(Text(bay_line(bay)), soft_wrap=True)
    fleet = status.get("fleet")
    for recorder in fleet.get("recorders") or [] if isinstance(fleet, dict) else []:
        console.print(Text(fleet_recorder_line(recorder)), soft_wrap=True)
