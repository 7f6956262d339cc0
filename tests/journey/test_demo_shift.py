"""`edge demo --shift` end to end: three officers check recorders out with cards at the simulated reader (a
real pty), the recorders record during the shift and are docked again (check-in), offloaded and uploaded; a
fourth is taken from its bay without a check-out. Everything is checked against the station's own records
(the `assignments` table, the ledger, each item's signed manifest and its receipt, verified again here with
the central's key) and the central's index, never against the demo's summary alone."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from edge.central.config import CentralLayout
from edge.central.sqlite.index import SqliteIndex
from edge.cli import main
from edge.custody.keys import load_public_key
from edge.custody.ledger import ENTRY_SALT
from edge.custody.receipt import verify_receipt
from edge.demo import STATION_ID, DemoOptions, run_demo
from edge.demo_shift import SHIFT_FILES, SHIFT_OFFICERS, shift_specs
from edge.ingest.store import open_db
from tests.mounting import require_volume_mounts

Journey = tuple[Path, dict[str, Any], str]
OFFICERS = {o.officer_no: o.name for o in SHIFT_OFFICERS}
UNASSIGNED = shift_specs()[3]  # charged under min_battery_percent: never issued, taken without a check-out


@pytest.fixture(scope="module")
def journey(tmp_path_factory: pytest.TempPathFactory) -> Journey:
    require_volume_mounts()
    workdir = tmp_path_factory.mktemp("shift-journey")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = asyncio.run(run_demo(DemoOptions(workdir=workdir, json_output=True, shift=True)))
    text = out.getvalue()
    assert code == 0, text[-4000:]
    return workdir, json.loads(text.strip().splitlines()[-1]), text


def _store(journey: Journey) -> Path:
    return journey[0] / "station-store"


def _query(store: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = open_db(store / "state.db")
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def _ledger(store: Path, type_: str) -> list[dict[str, Any]]:
    """The data of the `type_` entries (without their salt), with the entry's item as `ledger_item`."""
    return [{**{k: v for k, v in json.loads(data).items() if k != ENTRY_SALT}, "ledger_item": item}
            for item, data in _query(store, "SELECT item, data FROM ledger WHERE type = ? ORDER BY seq",
                                     type_)]


def _time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def _check_in_items(store: Path, device_serial: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(item, sha256, manifest) of the recorder's check-in docking: the items its last docking session
    acquired (its first docking, before the shift, offloaded what it came with)."""
    sessions = _query(store, "SELECT session FROM sessions WHERE device_serial = ? ORDER BY started",
                      device_serial)
    assert len(sessions) == 2, sessions  # docked before the shift, and at check-in
    check_in = sessions[-1][0]
    wanted = [d["ledger_item"] for d in _ledger(store, "acquired")
              if d["device_serial"] == device_serial and d["session"] == check_in]
    rows = []
    for item in wanted:
        [(sha256, manifest)] = _query(store, "SELECT sha256, manifest FROM items WHERE item = ?", item)
        rows.append((str(item), str(sha256), json.loads(manifest)))
    return rows


def test_every_item_is_bound_to_the_officer_who_checked_its_recorder_out(journey: Journey) -> None:
    _, summary, text = journey
    store = _store(journey)
    assignments = _query(store, "SELECT id, officer_no, device_serial, method, checked_out, returned "
                         "FROM assignments ORDER BY id")
    # One assignment per officer, by card, each closed by the recorder's docking (check-in).
    assert sorted(a[1] for a in assignments) == sorted(OFFICERS)
    assert {a[3] for a in assignments} == {"card"} and all(a[5] is not None for a in assignments)
    issued = {a[2] for a in assignments}
    assert len(issued) == 3 and UNASSIGNED.device_serial not in issued
    returned = {d["assignment"]: d for d in _ledger(store, "returned")}
    acquired = {d["ledger_item"]: d for d in _ledger(store, "acquired")}
    for id_, officer_no, device, _, checked_out, back in assignments:
        assert returned[id_]["officer_no"] == officer_no and returned[id_]["device_serial"] == device
        items = _check_in_items(store, device)
        assert len(items) == SHIFT_FILES, (device, items)
        for item, _, manifest in items:
            block = manifest["assignment"]
            assert block["status"] == "bound", block
            assert (block["holder"]["assignment"], block["holder"]["officer_no"]) == (id_, officer_no)
            # Recorded inside the assignment itself, not only within the clock margin.
            recorded = block["recorded"]
            start, end = _time(recorded["start_utc"]), _time(recorded["end_utc"])
            assert _time(checked_out) <= start <= end <= _time(back), (checked_out, recorded, back)
            # Flagged (here: bound) in the ledger with the item too.
            assert (acquired[item]["assignment_status"], acquired[item]["assignment_holder"]) == ("bound",
                                                                                                 officer_no)
        listed = next(o for o in summary["officers"] if o["officer_no"] == officer_no)
        assert (listed["assignment"], listed["device_serial"]) == (id_, device)
        assert sorted(i["item"] for i in listed["items"]) == sorted(i for i, _, _ in items)
        assert {(i["status"], i["holder"]) for i in listed["items"]} == {("bound", officer_no)}
    assert summary["bound"] == 3 * SHIFT_FILES and summary["errors"] == []
    assert summary["store_verified"] is True and summary["central_verified"] is True
    assert f"bound {3 * SHIFT_FILES}, flagged {SHIFT_FILES}" in text


def test_the_recorder_taken_without_a_check_out_is_flagged(journey: Journey) -> None:
    _, summary, _ = journey
    store = _store(journey)
    serial = UNASSIGNED.device_serial
    assert _query(store, "SELECT id FROM assignments WHERE device_serial = ?", serial) == []
    items = _check_in_items(store, serial)
    assert len(items) == SHIFT_FILES
    acquired = {d["ledger_item"]: d for d in _ledger(store, "acquired")}
    for item, _, manifest in items:
        block = manifest["assignment"]
        # It claims 王芳 (its identity from an earlier shift, in the device and in each file name), who held
        # another recorder during the shift: the claim is kept beside the station's record, never believed.
        assert block["status"] == "no_assignment" and block["holder"] is None, block
        claim = block["device_claim"]
        assert claim["officer_no"] == claim["file_name_officer_no"] == "110002"
        assert acquired[item]["assignment_status"] == "no_assignment"
    # No `returned` for it: it was not checked out.
    assert all(d["device_serial"] != serial for d in _ledger(store, "returned"))
    [flagged] = summary["unassigned"]
    assert flagged["device_serial"] == serial
    assert sorted(i["item"] for i in flagged["items"]) == sorted(i for i, _, _ in items)
    assert summary["flagged"] == SHIFT_FILES


def test_the_identity_written_at_check_out_is_what_the_recorder_reports_afterwards(journey: Journey) -> None:
    _, summary, _ = journey
    store = _store(journey)
    assigned = _ledger(store, "assigned")
    assert len(assigned) == 3
    for entry in assigned:
        officer_no, device = entry["officer_no"], entry["device_serial"]
        written = entry["identity_written"]
        assert (written["officer_no"], written["officer_name"], written["device_serial"]) == (
            officer_no, OFFICERS[officer_no], device)
        assert entry["identity_before"]["officer_no"] != officer_no  # it came with an earlier holder's
        # What the recorder said at its check-in docking (GetZFYInfo) and wrote in every file's name.
        for _, _, manifest in _check_in_items(store, device):
            claim = manifest["assignment"]["device_claim"]
            assert claim["officer_no"] == claim["file_name_officer_no"] == officer_no
            assert claim["officer_name"] == OFFICERS[officer_no]
        listed = next(o for o in summary["officers"] if o["officer_no"] == officer_no)
        assert listed["identity_read_back"]["officer_no"] == officer_no
        assert listed["identity_read_back"]["officer_name"] == OFFICERS[officer_no]


def test_every_item_was_received_centrally_with_a_receipt_that_verifies(journey: Journey) -> None:
    workdir, summary, _ = journey
    store = _store(journey)
    central_key = load_public_key(workdir / "station-identity" / "central-signing.pub")
    devices = [o["device_serial"] for o in summary["officers"]] + [UNASSIGNED.device_serial]
    items = [(item, sha256) for device in devices for item, sha256, _ in _check_in_items(store, device)]
    assert len(items) == summary["items"] == summary["receipts"] == 4 * SHIFT_FILES
    index = SqliteIndex.open(CentralLayout(Path(summary["central_store"])).index_db)
    try:
        for item, sha256 in items:
            [(state, receipt)] = _query(store, "SELECT state, receipt FROM uploads WHERE item = ?", item)
            record = index.item(item)
            assert record is not None and record.sha256 == sha256 and record.station == STATION_ID
            assert state == "receipted"
            assert verify_receipt(json.loads(receipt), central_key, expected_item=item,
                                  expected_sha256=sha256, expected_station=STATION_ID) == []
        # Control: the same check refuses the receipt for another content hash.
        item, _ = items[0]
        [(receipt,)] = _query(store, "SELECT receipt FROM uploads WHERE item = ?", item)
        assert verify_receipt(json.loads(receipt), central_key, expected_item=item, expected_sha256="0" * 64,
                              expected_station=STATION_ID) != []
    finally:
        index.close()


def test_the_cli_runs_the_shift_with_its_options(monkeypatch: pytest.MonkeyPatch) -> None:
    # The control of the refusals below: --shift alone, or over MQTT, reaches the demo with its options.
    seen: list[DemoOptions] = []

    async def run(options: DemoOptions) -> int:
        seen.append(options)
        return 0

    monkeypatch.setattr("edge.demo.run_demo", run)
    assert main(["demo", "--shift", "--json"]) == 0
    assert main(["demo", "--shift", "--transport", "mqtt"]) == 0
    assert [(o.shift, o.json_output, o.transport) for o in seen] == [(True, True, "http"),
                                                                      (True, False, "mqtt")]


def test_a_second_shift_in_the_same_workdir_is_refused(journey: Journey,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    # The fixture's run is the control: the same demo in a new workdir ran the whole shift.
    workdir, _, _ = journey
    before = _query(_store(journey), "SELECT count(*) FROM ledger")
    assert main(["demo", "--shift", "--workdir", str(workdir)]) == 2
    assert "needs a new or empty --workdir" in capsys.readouterr().err
    assert _query(_store(journey), "SELECT count(*) FROM ledger") == before  # nothing was run on it


@pytest.mark.parametrize("extra", [["--room"], ["--source", "gb28181"], ["--no-central"]])
def test_the_cli_refuses_the_shift_with_another_journey(extra: list[str],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--shift", *extra]) == 2
    assert "--shift" in capsys.readouterr().err
