"""`edge demo --shift`: a shift of issue and return (领用/归还) on the real station agent, simulated hardware.

The station agent runs as in production with `[equipment] enabled`, its card reader on a real pty
(simulators.card_reader), the eight-bay dock board on another (simulators.dock, wired to the recorder bus so
that a bay's power cycle, dock protocol 4 `PWR`, unplugs and plugs the recorder in it) and the uplink to the
embedded central (edge.demo's rig: HTTPS, or MQTT with ``--transport mqtt``). The shift:

1. three officers are imported from a CSV with their card UIDs (no PINs: they use cards);
2. four recorders dock (bays 1-4): each is offloaded, uploaded, wiped once the central's receipts verified,
   and its bay power-cycled so that it waits in control mode for the desk. The fourth is charged to 60 %,
   under `min_battery_percent`, so the desk never issues it;
3. each officer presents a card at the reader; the desk writes the officer's identity into the fullest ready
   recorder, reads it back, sets its clock and opens the assignment (`assigned`); the demo reads the identity
   the simulated recorder holds afterwards too;
4. the issued recorders leave their bays, and so does the fourth, taken without a check-out; it still says
   王芳 110002, from an earlier shift;
5. out on the shift, each recorder records `SHIFT_FILES` files (the simulator names and times them with the
   identity it holds, by its own clock), all after its check-out: the shift lasts long enough for that;
6. all four dock again: the docking closes each open assignment (`returned`, check-in), and every file is
   offloaded with an `assignment` block in its manifest, uploaded, receipted and wiped.

The summary comes from the station's store (the assignments, each item's manifest, the uploads and their
receipts, verified again here with the central's key) and the central's index, not from what the demo did:
per officer the recorder, bay, check-out and check-in times, the identity read back, and each item with its
assignment status and holder; the recorder taken without a check-out with its items. Exit status 0 only
when every item of the three officers' recorders is `bound` to the officer who checked that recorder out and
was recorded inside the assignment, every item of the fourth is flagged (not `bound`), every item was
received centrally with a receipt that verifies, and both stores verify.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drivers.serial.card_reader_protocol import CardFraming
from edge.central.config import CentralLayout
from edge.central.sqlite.index import SqliteIndex
from edge.custody.ledger import station_time_now
from edge.custody.receipt import verify_receipt
from edge.equipment.importing import import_officers
from edge.equipment.officer_csv import parse_officer_csv
from edge.ingest.store import StationStore, open_db
from edge.sources.usb.offload import OffloadOutcome
from edge.station import StationAgent
from simulators.bay_power import bay_power_to_bus
from simulators.card_reader import CardReaderSimulator
from simulators.dock import DockSimulator
from simulators.recorder.bus import RecorderBus, RecorderBusServer, RecorderSpec

if TYPE_CHECKING:
    from edge.demo import DemoOptions

__all__ = ["SHIFT_OFFICERS", "run_shift_demo", "shift_report", "shift_specs"]

UNIT_CODE = "330100000000"
UNIT_NAME = "杭州市综合行政执法局"


@dataclass(frozen=True)
class ShiftOfficer:
    officer_no: str
    name: str
    card_uid: str  # EM4100: 10 hex digits, as an RDM6300-style reader sends them


SHIFT_OFFICERS = (
    ShiftOfficer("110001", "张伟", "01000734E0"),
    ShiftOfficer("110002", "王芳", "0100073A11"),
    ShiftOfficer("110003", "李娜", "0100074B52"),
)
UNASSIGNED_BAY = 4  # the recorder taken without a check-out
BEFORE_SHIFT_FILES = 1  # left on each recorder from an earlier shift: offloaded and wiped before issue
SHIFT_FILES = 3
SHIFT_FILE_MB = 0.25
SPACING_S = 2  # between the recordings of the shift
# The shift lasts this long after the last check-out: the first of the shift's recordings then starts after
# every check-out (the recorder's clock was set at check-out), whatever FAT's 2 s steps do.
SHIFT_S = SHIFT_FILES * SPACING_S + 3
WAIT_S = 120.0
REPRESENT_S = 5.0
TABLE_LEAD = 57  # the columns before an item's: officer, recorder, bay, checked out, checked in


def officer_csv() -> bytes:
    rows = ["警号,姓名,单位编号,单位名称,状态,卡号"]
    rows += [f"{o.officer_no},{o.name},{UNIT_CODE},{UNIT_NAME},正常,{o.card_uid}" for o in SHIFT_OFFICERS]
    return ("\n".join(rows) + "\n").encode()


def shift_specs() -> list[RecorderSpec]:
    """Four recorders, bays 1-4. They come from an earlier shift with one file each, their clocks wandered,
    and their identities are those of their last holders. The fourth is charged under `min_battery_percent`
    (80 %): never issued."""
    earlier = [("120001", "陈静"), ("120002", "杨磊"), ("120003", "赵敏"), ("110002", "王芳")]
    return [
        RecorderSpec(
            device_serial=f"{3300001 + i}", usb_serial=f"EEZ01{i + 1:011d}", officer_no=no, officer_name=name,
            unit_code=UNIT_CODE, unit_name=UNIT_NAME, files=BEFORE_SHIFT_FILES, file_mb=SHIFT_FILE_MB, seed=i,
            clock_offset_s=[-95.0, 3.5, 42.0, 0.2][i], battery_percent=[95, 90, 85, 60][i],
        )
        for i, (no, name) in enumerate(earlier)
    ]


def _port(bay: int) -> str:
    return f"1-1.{bay}"


def shift_report(store_dir: Path, shift_started: str, central_store: Path | None, central_key: Any,
                 station_id: str) -> dict[str, Any]:
    """What the station's store says of the shift: every assignment opened from `shift_started` on, and every
    item acquired since then, per recorder, with its manifest's assignment block and its central receipt."""
    conn = open_db(store_dir / "state.db")
    try:
        assignments = conn.execute(
            "SELECT id, officer_no, officer_name, device_serial, bay, method, checked_out, returned,"
            " returned_bay FROM assignments WHERE checked_out >= ? ORDER BY id", (shift_started,)).fetchall()
        items = conn.execute("SELECT item, sha256, device_serial, acquired, manifest FROM items "
                             "WHERE acquired >= ? ORDER BY acquired, item", (shift_started,)).fetchall()
        uploads = {str(item): (str(state), receipt) for item, state, receipt in
                   conn.execute("SELECT item, state, receipt FROM uploads").fetchall()}
        written = {int(json.loads(text)["assignment"]): json.loads(text).get("identity_written")
                   for (text,) in conn.execute("SELECT data FROM ledger WHERE type = 'assigned'")}
    finally:
        conn.close()
    index = SqliteIndex.open(CentralLayout(central_store).index_db) if central_store is not None else None
    by_device: dict[str, list[dict[str, Any]]] = {}
    try:
        for item, sha256, device, acquired, manifest in items:
            block = (json.loads(manifest) if manifest else {}).get("assignment") or {}
            holder = block.get("holder") or {}
            recorded = block.get("recorded") or {}
            state, receipt = uploads.get(str(item), ("not queued", None))
            verified = False
            if receipt and central_key is not None:
                verified = not verify_receipt(json.loads(receipt), central_key, expected_item=str(item),
                                              expected_sha256=str(sha256), expected_station=station_id)
            by_device.setdefault(str(device), []).append({
                "item": str(item), "sha256": str(sha256), "acquired": str(acquired),
                "status": block.get("status"), "holder": holder.get("officer_no"),
                "holder_assignment": holder.get("assignment"),
                "device_claim": (block.get("device_claim") or {}).get("officer_no"),
                "recorded_start": recorded.get("start_utc"), "recorded_end": recorded.get("end_utc"),
                "upload": state, "received": index is not None and index.item(str(item)) is not None,
                "receipt_verified": verified,
            })
    finally:
        if index is not None:
            index.close()
    officers = []
    for (id_, officer_no, name, device, bay, method, checked_out, returned, returned_bay) in assignments:
        officers.append({
            "assignment": int(id_), "officer_no": officer_no, "officer_name": name, "device_serial": device,
            "bay": bay, "method": method, "checked_out": checked_out, "returned": returned,
            "returned_bay": returned_bay, "identity_written": written.get(int(id_)),
            "items": by_device.get(str(device), []),
        })
    assigned = {o["device_serial"] for o in officers}
    unassigned = [{"device_serial": device, "items": rows} for device, rows in sorted(by_device.items())
                  if device not in assigned]
    return {"officers": officers, "unassigned": unassigned}


def shift_errors(report: dict[str, Any], read_back: dict[str, dict[str, str]], central: bool) -> list[str]:
    """What keeps the shift from being a success (see the module docstring)."""
    errors: list[str] = []
    by_officer = {o["officer_no"]: o for o in report["officers"]}
    for officer in SHIFT_OFFICERS:
        held = by_officer.get(officer.officer_no)
        if held is None:
            errors.append(f"officer {officer.officer_no}: no check-out")
            continue
        device = held["device_serial"]
        if held["returned"] is None:
            errors.append(f"officer {officer.officer_no}: recorder {device} not checked in")
        identity = read_back.get(device, {})
        if (identity.get("officer_no"), identity.get("officer_name")) != (officer.officer_no, officer.name):
            errors.append(f"recorder {device} reports {identity} after check-out to {officer.officer_no}")
        if len(held["items"]) != SHIFT_FILES:
            errors.append(f"recorder {device}: {len(held['items'])} item(s) from the shift, expected "
                          f"{SHIFT_FILES}")
        for item in held["items"]:
            if item["status"] != "bound" or item["holder"] != officer.officer_no \
                    or item["holder_assignment"] != held["assignment"]:
                errors.append(f"item {item['item']} of recorder {device}: {item['status']}, holder "
                              f"{item['holder']}, not bound to {officer.officer_no} by its assignment")
            start, end = item["recorded_start"], item["recorded_end"]
            if held["returned"] is None or start is None or end is None \
                    or not held["checked_out"] <= start <= end <= held["returned"]:
                errors.append(f"item {item['item']}: recorded {start} to {end}, not inside the assignment "
                              f"{held['checked_out']} to {held['returned']}")
    flagged = report["unassigned"]
    if len(flagged) != 1 or not flagged[0]["items"]:
        errors.append(f"expected one recorder taken without a check-out, with items; found {len(flagged)}")
    for recorder in flagged:
        for item in recorder["items"]:
            if item["status"] == "bound":
                errors.append(f"item {item['item']} of recorder {recorder['device_serial']}, taken without a "
                              "check-out, is bound")
    if central:
        for rows in [o["items"] for o in report["officers"]] + [r["items"] for r in flagged]:
            for item in rows:
                if not (item["received"] and item["receipt_verified"]):
                    errors.append(f"item {item['item']}: received {item['received']}, receipt verified "
                                  f"{item['receipt_verified']} (upload {item['upload']})")
    return errors


class _Ledger:
    """The running agent's ledger, read from the event loop as entries come (no change signal to await)."""

    def __init__(self, agent: StationAgent) -> None:
        self.agent = agent

    def data(self, type_: str) -> list[dict[str, Any]]:
        assert self.agent.store is not None
        return [e.data for e in self.agent.store.ledger.entries_of_types([type_])]

    async def wait(self, what: str, type_: str, where: Callable[[dict[str, Any]], bool], count: int = 1,
                   timeout_s: float = WAIT_S) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        try:
            async with asyncio.timeout(timeout_s):
                while len(found := [d for d in self.data(type_) if where(d)]) < count:
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise RuntimeError(f"{what}: not within {timeout_s:.0f} s") from None
        return found


async def _check_out(agent: StationAgent, reader: CardReaderSimulator,
                     officer: ShiftOfficer) -> dict[str, Any]:
    """Present the officer's card; the desk's outcome for it. The reader task opens the pty in its own time,
    and a card shown before it listens is flushed like a real one: shown again every `REPRESENT_S` while the
    desk has answered nothing. A presentation served late after one shown again ends as `already_holds`:
    such a refusal is no answer to this officer's card (who holds nothing yet)."""
    desk = agent.desk
    assert desk is not None
    seen = len(desk.outcomes())
    shown_at = -REPRESENT_S
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(WAIT_S):
        while True:
            outcomes = desk.outcomes()
            new: list[dict[str, Any]] = outcomes[:len(outcomes) - seen]  # newest first
            for answer in reversed(new):
                mine = answer["outcome"] == "assigned" and answer["officer_no"] == officer.officer_no
                if mine or (answer["outcome"] == "refused" and answer["reason"] != "already_holds"):
                    return dict(answer)
            if not new and loop.time() - shown_at >= REPRESENT_S:
                await asyncio.to_thread(reader.present, officer.card_uid)
                shown_at = loop.time()
            await asyncio.sleep(0.05)


async def _leave_bay(ledger: _Ledger, bus: RecorderBus, dock: DockSimulator, spec: RecorderSpec,
                     bay: int) -> None:
    before = len([d for d in ledger.data("device_removed") if d.get("usb_serial") == spec.usb_serial])
    await asyncio.to_thread(bus.unplug, spec.device_serial)
    dock.remove(bay)
    await ledger.wait(f"recorder {spec.device_serial} leaving bay {bay}", "device_removed",
                      lambda d: d.get("usb_serial") == spec.usb_serial, before + 1)


async def run_shift_demo(options: DemoOptions, workdir: Path, out: Any, run_dir: Path) -> int:
    """See the module docstring."""
    from edge.demo import (
        DEMO_PASSWORD,
        SESSION_TIMEOUT_S,
        STATION_ID,
        _keep_running,
        _pad,
        _print_urls,
        _start_central,
        _stop_services,
        demo_config,
        started_in_own_process,
        uplink_summary,
        verify_demo,
    )

    if (workdir / "station-store").exists() or (workdir / "sim").exists():
        # A shift is told apart from the last one by the station's own records: a second one on the same
        # store and recorders would count the first's assignments and recordings as its own.
        print(f"error: --shift needs a new or empty --workdir; {workdir} holds an earlier demo",
              file=sys.stderr)
        return 2
    for sub in ("sim", "media"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    password_file = workdir / "recorder-password"
    password_file.write_text(DEMO_PASSWORD + "\n")
    os.chmod(password_file, 0o600)
    print(f"evidence-edge shift demo (issue and return, 领用/归还) in {workdir}", file=out, flush=True)
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    specs = shift_specs()
    bus = RecorderBus(workdir / "sim" / "state", workdir / "media")
    for spec in specs:
        if not bus.has_recorder(spec.device_serial):
            await loop.run_in_executor(None, bus.add_recorder, spec)
    server = RecorderBusServer(bus, workdir / "sim" / "bus.sock")
    # The bay board's power cycle (protocol 4 PWR) unplugs and plugs the recorder on the bay's USB port.
    dock = DockSimulator(bays=8, seed=1, on_power_cycle=bay_power_to_bus(bus, _port))
    reader = CardReaderSimulator(CardFraming.STX_FRAME, seed=1)
    server.start()
    dock.start()
    reader.start()
    central = broker = None
    errors: list[str] = []
    read_back: dict[str, dict[str, str]] = {}
    drained = True
    shift_started = ""
    config = None
    try:
        central, broker, uplink, station_mqtt = await _start_central(options, workdir, out)
        api = {"socket_path": str(run_dir / "station.sock"), "tcp_port": 0}
        config = demo_config(workdir, specs, dock.tty_path, password_file, uplink, api, station_mqtt,
                             equipment={"enabled": True,
                                        "card_reader": {"port": reader.tty_path, "framing": "stx"}})
        csv_path = workdir / "officers.csv"
        csv_path.write_bytes(officer_csv())
        store = StationStore(config.station.store_dir, STATION_ID)
        try:
            imported = import_officers(store, parse_officer_csv(csv_path.read_bytes()), source=csv_path.name,
                                       by="demo")
        finally:
            store.close()
        print(f"{imported.rows} officers imported from {csv_path.name} with their cards "
              f"({imported.added} new; ledger entry {imported.entry.seq})", file=out, flush=True)
        stop = asyncio.Event()
        agent = StationAgent(config)
        runner = asyncio.create_task(agent.run(stop))
        try:
            await asyncio.wait_for(agent.ready.wait(), 30)
            started_in_own_process(options)
            _print_urls(out, agent)
            ledger = _Ledger(agent)
            try:
                shift_started, shift_problems = await _shift(agent, ledger, bus, dock, reader, specs, out,
                                                             read_back)
            except (RuntimeError, TimeoutError) as exc:  # a step that never came: the summary says which
                errors.append(f"the shift stopped: {exc or 'timed out'}")
            else:
                errors += shift_problems
            if agent.uplink is not None:
                drained = await agent.uplink.wait_drained(SESSION_TIMEOUT_S)
            if options.keep_running:
                await _keep_running(out, agent)
        finally:
            stop.set()
            await runner
        failed = [r for r in agent.results if r.outcome is not OffloadOutcome.DONE]
        errors += [f"a docking ended {r.outcome} ({len(r.items)} item(s))" for r in failed]
        errors += [e for r in agent.results for e in r.errors]
    finally:
        reader.stop()
        server.stop()
        dock.stop()
        bus.close()
        await _stop_services(central, broker)
    assert config is not None
    checked = await verify_demo(loop, config, central, drained=drained)
    report, central_report = checked.station, checked.central
    errors += checked.errors()
    store_dir = config.station.store_dir
    facts = await loop.run_in_executor(None, lambda: shift_report(
        store_dir, shift_started, central.store_dir if central is not None else None,
        central.signing_public_key() if central is not None else None, STATION_ID))
    errors += shift_errors(facts, read_back, central is not None)
    uplink_counts = uplink_summary(store_dir)
    items = [i for o in facts["officers"] for i in o["items"]] + [i for r in facts["unassigned"]
                                                                   for i in r["items"]]
    for officer in facts["officers"]:
        officer["identity_read_back"] = read_back.get(officer["device_serial"])
    summary = {
        "officers": facts["officers"],
        "unassigned": facts["unassigned"],
        "shift_started": shift_started,
        "items": len(items),
        "bound": sum(1 for i in items if i["status"] == "bound"),
        "flagged": sum(1 for i in items if i["status"] != "bound"),
        "received": sum(1 for i in items if i["received"]),
        "receipts": sum(1 for i in items if i["receipt_verified"]),
        "uploaded": uplink_counts["uploaded"],
        "store": str(store_dir),
        "store_verified": report.ok,
        "central_store": str(central.store_dir) if central is not None else None,
        "central_verified": None if central_report is None else not central_report,
        "transport": options.transport if central is not None else None,
        "errors": errors,
        "seconds": round(time.monotonic() - started, 2),
    }
    print("", file=out)
    print("the shift (check-out and check-in in station UTC):", file=out)
    print(f"{'officer':<16} {'recorder':<9} {'bay':>3}  {'checked out':<12} {'checked in':<12} {'item':<36}  "
          f"{'status':<13} holder", file=out)
    for officer in facts["officers"]:
        who = _pad(f"{officer['officer_name']} {officer['officer_no']}", 16)
        lead = (f"{who} {officer['device_serial']:<9} {officer['bay'] or '?':>3}  "
                f"{_clock(officer['checked_out'])} {_clock(officer['returned'])}")
        for item in officer["items"] or [{"item": "(no items)", "status": "", "holder": ""}]:
            print(f"{lead} {item['item']:<36}  {item['status'] or '':<13} {item['holder'] or '-'}", file=out)
            lead = " " * TABLE_LEAD
    for recorder in facts["unassigned"]:
        lead = _pad("(no check-out)", 16) + f" {recorder['device_serial']:<9} {'-':>3}  {'-':<12} {'-':<12}"
        for item in recorder["items"]:
            print(f"{lead} {item['item']:<36}  {item['status'] or '':<13} {item['holder'] or '-'}", file=out)
            lead = " " * TABLE_LEAD
    print(f"items {summary['items']}: bound {summary['bound']}, flagged {summary['flagged']}; received "
          f"centrally {summary['received']}, receipts verified {summary['receipts']}; store verification "
          f"{'OK' if report.ok else 'FAILED'}, central store verification "
          f"{'OK' if not central_report else 'FAILED'}", file=out, flush=True)
    for error in errors:
        print(f"error: {error}", file=out)
    if options.json_output:
        print(json.dumps(summary, ensure_ascii=False), file=out, flush=True)
    return 0 if not errors else 1


def _back_in_control(bay: int) -> Callable[[dict[str, Any]], bool]:
    """The `device_connected` entry of a recorder back in control mode after its bay's power cycle."""
    return lambda data: data.get("after") == "bay power cycle" and data.get("bay") == bay


def _clock(time_text: str | None) -> str:
    """A station UTC time as HH:MM:SS.mmm for the table (the JSON keeps the whole time)."""
    return f"{time_text[11:23]:<12}" if time_text else f"{'-':<12}"


async def _shift(agent: StationAgent, ledger: _Ledger, bus: RecorderBus, dock: DockSimulator,
                 reader: CardReaderSimulator, specs: list[RecorderSpec], out: Any,
                 read_back: dict[str, dict[str, str]]) -> tuple[str, list[str]]:
    """Steps 2-6 of the module docstring: the station time the shift started (the recorders ready) and the
    errors found on the way; fills `read_back` with the identity each issued recorder holds afterwards."""
    errors: list[str] = []
    bays = {spec.device_serial: bay for bay, spec in enumerate(specs, start=1)}
    # 2. The recorders dock: offloaded, wiped, power-cycled back to control mode.
    for spec in specs:
        dock.insert(bays[spec.device_serial], charge_percent=spec.battery_percent)
        await asyncio.to_thread(bus.plug, spec.device_serial, _port(bays[spec.device_serial]))
    print(f"{len(specs)} recorders docked in bays 1-{len(specs)}: offload, upload, wipe after the central's "
          "receipts, then each bay's power cycle brings its recorder back in control mode", file=out,
          flush=True)
    for spec in specs:
        await ledger.wait(f"recorder {spec.device_serial} back in control mode", "device_connected",
                          _back_in_control(bays[spec.device_serial]))
    shift_started = station_time_now()
    print("every recorder is back in control mode: ready for check-out (bay 4's is charged under 80 %)",
          file=out, flush=True)
    # 3. Check-out with cards.
    issued: dict[str, int] = {}
    for officer in SHIFT_OFFICERS:
        outcome = await _check_out(agent, reader, officer)
        if outcome["outcome"] != "assigned":
            errors.append(f"officer {officer.officer_no}: check-out refused: {outcome.get('reason')}")
            continue
        device = str(outcome["device_serial"])
        issued[device] = int(outcome["bay"])
        info = (await asyncio.to_thread(bus.recorder_state, device)).info
        read_back[device] = {"officer_no": info.officer_no, "officer_name": info.officer_name,
                             "unit_code": info.unit_code, "unit_name": info.unit_name}
        print(f"card of {officer.name} {officer.officer_no}: recorder {device} issued from bay "
              f"{outcome['bay']}; it now reports {info.officer_name} {info.officer_no}", file=out, flush=True)
    # 4. The issued recorders leave their bays; so does the fourth, with no check-out.
    taken = [s for s in specs if s.device_serial in issued]
    unissued = [s for s in specs if s.device_serial not in issued]
    for spec in taken + unissued:
        await _leave_bay(ledger, bus, dock, spec, bays[spec.device_serial])
    for spec in unissued:
        info = (await asyncio.to_thread(bus.recorder_state, spec.device_serial)).info
        print(f"recorder {spec.device_serial} taken from bay {bays[spec.device_serial]} without a check-out "
              f"(it still says {info.officer_name} {info.officer_no})", file=out, flush=True)
    # 5. The shift: every recording starts after every check-out.
    print(f"the shift: {SHIFT_S} s, then each recorder records {SHIFT_FILES} files", file=out, flush=True)
    await asyncio.sleep(SHIFT_S)
    for spec in specs:
        await asyncio.to_thread(bus.record, spec.device_serial, files=SHIFT_FILES, file_mb=SHIFT_FILE_MB,
                                spacing_s=SPACING_S)
    # 6. Check-in: all dock again; each docking closes its assignment, offloads, uploads, wipes, and its bay's
    # power cycle brings the recorder back in control mode.
    done_before = len(agent.results)
    for spec in specs:
        bay = bays[spec.device_serial]
        dock.insert(bay, charge_percent=50)
        await asyncio.to_thread(bus.plug, spec.device_serial, _port(bay))
    print("check-in: every recorder docked again", file=out, flush=True)
    try:
        async with asyncio.timeout(WAIT_S):
            while len(agent.results) < done_before + len(specs):
                await asyncio.sleep(0.05)
    except TimeoutError:
        errors.append(f"only {len(agent.results) - done_before} of {len(specs)} check-in dockings finished")
    await agent.idle()
    # Each bay power-cycled once more: the recorders wait in control mode for the next shift.
    for spec in specs:
        try:
            await ledger.wait(f"recorder {spec.device_serial} back in control mode after check-in",
                              "device_connected", _back_in_control(bays[spec.device_serial]), count=2)
        except RuntimeError as exc:
            errors.append(str(exc))
    print("every recorder checked in, offloaded, wiped and back in control mode for the next shift", file=out,
          flush=True)
    return shift_started, errors
