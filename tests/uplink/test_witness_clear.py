"""The way back from a witness alarm: `edge witness clear` and `edge witness show` (the real command line,
in a process of its own) against a real central whose Merkle log was rewritten or shrunk under a head it
had signed.

An alarm stands across restarts (the control: the uplink refuses to start) until a signed
`witness_alarm_cleared` entry names it. Clearing with the kept head only lets the uplink try again: the
central is still inconsistent with the head the station trusts, so the alarm is raised again (a new
entry). Clearing with `--accept-central-head` re-anchors the station on the central's current head,
named in the entry with the head it replaces, and a new item is receipted against it.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edge.central.service import start_central
from edge.custody.witness_log import newest_witnessed_seq
from edge.ingest.pipeline import IngestOutcome, IngestPipeline, IngestSettings
from edge.ingest.store import StationStore
from edge.sources.local import LocalDirectory
from edge.uplink.errors import UplinkFatal
from edge.uplink.service import UplinkService
from simulators.recorder.media import make_jpg
from tests.tamper.attacker import attacker_db
from tests.uplink.proxy import Fault
from tests.uplink.test_refusals import (
    CASE,
    REPO,
    STATION,
    Rig,
    central_config,
    drain,
    edge_cli,
    make_rig,
    media,
    station_toml,
    uplink_running,
)
from tests.uplink.test_witness_alarm import rewrite_log

__all__ = ["media"]  # the fixture, used by name


async def alarm_stops_the_uplink(rig: Rig) -> str:
    """Run the uplink until the witness alarm stops it; the UplinkFatal's message."""
    service = UplinkService(rig.config(tree_head_interval_s=0.2), rig.store)
    with pytest.raises(UplinkFatal) as raised:
        async with asyncio.timeout(30):
            await service.run()
    return str(raised.value)


async def restart_central_rewritten(rig: Rig, mode: str) -> None:
    """The same central (same key, same store, reached through the same proxy) comes back with its log
    rewritten (`rewritten`: leaf 0 replaced and one more leaf, a larger tree) or shrunk (`shrunk`: the
    newest leaf gone, a smaller tree)."""
    await rig.central.stop()
    config = central_config(rig.tmp / "central-store")
    rewrite_log(config, mode, rig.central_key)
    if mode == "shrunk":  # the newest item goes with its leaf, so the central can take new items again
        with attacker_db(config.layout.index_db) as conn:
            conn.execute("DELETE FROM items WHERE leaf_index = (SELECT max(leaf_index) FROM items)")
    rig.central = await start_central(config, signing_key=rig.central_key)
    rig.proxy.upstream = rig.central.url


def reopen(rig: Rig) -> None:
    rig.store = StationStore(rig.tmp / "store", STATION)


async def ingest_one_more(rig: Rig, seed: int) -> str:
    drop = rig.tmp / f"drop-{seed}"
    drop.mkdir()
    make_jpg(drop / f"scene-{seed}.jpg", seed=seed)
    source = LocalDirectory(drop, label="room-2", station_id=STATION, case=CASE, collector_no="110002")
    done = await IngestPipeline(rig.store, IngestSettings(min_free_bytes=0)).ingest(
        source, source.listing().items)
    assert done.outcome is IngestOutcome.DONE and len(done.sealed) == 1
    return str(done.sealed[0])


async def edge_cli_async(*args: str) -> subprocess.CompletedProcess[str]:
    """The real command line in its own process, while this event loop keeps serving the central."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge.cli", *args, cwd=REPO, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return subprocess.CompletedProcess(list(args), process.returncode, out.decode(), err.decode())


def show(config: Path) -> dict[str, Any]:
    result = edge_cli("witness", "show", "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


@pytest.mark.parametrize("mode", ["rewritten", "shrunk"])
async def test_edge_witness_clear_keeps_or_re_anchors_the_trusted_tree_head(
    tmp_path: Path, media: Path, mode: str
) -> None:
    async with make_rig(tmp_path, media) as rig:
        await drain(rig)
        assert rig.states() == {"clip.mp4": "receipted", "scene.jpg": "receipted"}
        kept_before = rig.store.conn.execute(
            "SELECT tree_size, root_hash FROM central_tree_heads ORDER BY id DESC LIMIT 1").fetchone()
        assert kept_before["tree_size"] == 2
        await restart_central_rewritten(rig, mode)
        first_alarm = await alarm_stops_the_uplink(rig)
        alarms = rig.ledger("witness_alarm")
        assert len(alarms) == 1
        alarm_seq = next(e.seq for e in rig.store.ledger.entries() if e.type == "witness_alarm")
        # Control: the alarm stands across a restart; the uplink refuses to start.
        with pytest.raises(UplinkFatal, match="witness alarm"):
            await UplinkService(rig.config(), rig.store).run()
        config = station_toml(rig)

        # While the store is held (the agent runs), clearing is refused with the holder named.
        busy = edge_cli("witness", "clear", "--config", str(config), "--reason", "investigated")
        assert busy.returncode == 75 and f"pid {os.getpid()}" in busy.stderr, busy.stderr
        # `show` only reads: it works while the agent runs.
        shown = show(config)
        assert shown["alarm"] == {"seq": alarm_seq, "reason": alarms[0]["reason"], "standing": True,
                                  "cleared_seq": None}
        assert shown["central_tree_head"]["tree_size"] == 2
        assert shown["witnessed_head"]["seq"] >= 1
        assert shown["unwitnessed"]["entries"] >= 1, "the alarm entry itself is not witnessed yet"
        assert shown["unwitnessed"]["seconds"] >= 0
        text = edge_cli("witness", "show", "--config", str(config))
        assert f"alarm: STANDING since ledger seq {alarm_seq}" in text.stdout, text.stdout
        assert "unwitnessed window:" in text.stdout
        rig.store.close()

        no_reason = edge_cli("witness", "clear", "--config", str(config), "--reason", "  ")
        assert no_reason.returncode == 2 and "--reason" in no_reason.stderr

        # Cleared, keeping the old head: the uplink starts and raises the alarm again, as a new entry.
        kept = edge_cli("witness", "clear", "--config", str(config), "--reason",
                        "central restored from backup", env={"SUDO_USER": "wangfang"})
        assert kept.returncode == 0, kept.stderr
        assert f"witness alarm of ledger seq {alarm_seq}" in kept.stdout and "kept" in kept.stdout
        reopen(rig)
        entry = rig.ledger("witness_alarm_cleared")[0]
        assert entry["by"] == {"uid": os.getuid(), "user": pwd.getpwuid(os.getuid()).pw_name,
                               "sudo_user": "wangfang"}
        assert entry["alarm"] == {"seq": alarm_seq, "reason": alarms[0]["reason"]}
        assert entry["reason"] == "central restored from backup"
        assert entry["trusted_tree_head"]["decision"] == "kept"
        assert entry["trusted_tree_head"]["head"]["tree_size"] == 2
        assert entry["trusted_tree_head"]["head"]["root_hash"] == kept_before["root_hash"]
        assert "accepted_central" not in entry
        again = await alarm_stops_the_uplink(rig)
        assert len(rig.ledger("witness_alarm")) == 2 and again != first_alarm
        rig.store.close()

        # Nothing to clear twice; then cleared accepting the central's current head.
        accepted = await edge_cli_async("witness", "clear", "--config", str(config), "--accept-central-head",
                            "--reason", "central log rebuilt after disk loss, see ticket 4411")
        assert accepted.returncode == 0, accepted.stderr
        assert "accepted the central's current head" in accepted.stdout
        nothing = edge_cli("witness", "clear", "--config", str(config), "--reason", "again")
        assert nothing.returncode == 2 and "already cleared" in nothing.stderr
        reopen(rig)
        entry = rig.ledger("witness_alarm_cleared")[1]
        new_size = 3 if mode == "rewritten" else 1
        assert entry["trusted_tree_head"]["decision"] == "accepted"
        assert entry["trusted_tree_head"]["head"]["tree_size"] == new_size
        assert entry["trusted_tree_head"]["replaces"]["tree_size"] == 2
        assert entry["accepted_central"]["tree_head"]["tree_size"] == new_size
        shown = show(config)
        assert shown["alarm"]["standing"] is False
        assert shown["central_tree_head"]["source"] == "operator_accepted"
        assert shown["central_tree_head"]["tree_size"] == new_size

        # The uplink resumes: a new item is receipted against the accepted head, with no new alarm.
        item = await ingest_one_more(rig, 31)
        await drain(rig)
        state = rig.store.conn.execute("SELECT state FROM uploads WHERE item=?", (item,)).fetchone()
        assert state["state"] == "receipted"
        assert len(rig.ledger("witness_alarm")) == 2
        newest = rig.store.conn.execute(
            "SELECT tree_size, source FROM central_tree_heads ORDER BY id DESC LIMIT 1").fetchone()
        assert newest["tree_size"] > new_size and newest["source"] != "operator_accepted"

        verified = await edge_cli_async("verify", str(tmp_path / "store"), "--config", str(config))
        assert "NOTE unwitnessed window:" in verified.stdout, verified.stdout
        assert "was cleared by an operator" in verified.stdout


async def test_edge_witness_clear_without_an_alarm_changes_nothing(tmp_path: Path, media: Path) -> None:
    async with make_rig(tmp_path, media) as rig:
        await drain(rig)
        config = station_toml(rig)
        head = rig.store.ledger.head()
        rig.store.close()
        for extra in ([], ["--accept-central-head"]):
            result = await edge_cli_async("witness", "clear", "--config", str(config), "--reason", "checking",
                                          *extra)
            assert result.returncode == 2 and "no witness alarm" in result.stderr, result.stderr
        reopen(rig)
        assert rig.store.ledger.head() == head
        assert show(config)["alarm"] is None


async def test_a_central_that_lost_accepted_entries_is_an_alarm_until_its_head_is_accepted(
    tmp_path: Path, media: Path
) -> None:
    """The central loses the tail of this station's ledger it had accepted and witnessed (restored from
    an older backup): an alarm. Cleared keeping the old state, it is raised again; cleared accepting the
    central's current head, the uplink sends the lost entries again and the central witnesses past the
    old head."""
    async with make_rig(tmp_path, media) as rig:
        await drain(rig)
        witnessed = newest_witnessed_seq(rig.store.conn)
        assert witnessed >= 8
        kept = witnessed - 4
        await rig.central.stop()
        config = central_config(rig.tmp / "central-store")
        with attacker_db(config.layout.index_db) as conn:
            conn.execute("DELETE FROM station_ledger WHERE station = ? AND seq > ?", (STATION, kept))
            conn.execute("DELETE FROM station_checkpoints WHERE station = ? AND seq > ?", (STATION, kept))
        rig.central = await start_central(config, signing_key=rig.central_key)
        rig.proxy.upstream = rig.central.url
        reason = await alarm_stops_the_uplink(rig)
        assert f"up to seq {kept}" in reason and "lost or removed" in reason
        station_config = station_toml(rig)
        rig.store.close()

        done = edge_cli("witness", "clear", "--config", str(station_config), "--reason", "restored backup")
        assert done.returncode == 0, done.stderr
        reopen(rig)
        await alarm_stops_the_uplink(rig)
        assert len(rig.ledger("witness_alarm")) == 2, "kept: the central still holds less than it witnessed"
        rig.store.close()

        done = await edge_cli_async("witness", "clear", "--config", str(station_config),
                                    "--accept-central-head", "--reason",
                                    "backup of 02:00 restored; entries after it resent")
        assert done.returncode == 0, done.stderr
        reopen(rig)
        entry = rig.ledger("witness_alarm_cleared")[1]
        assert entry["accepted_central"]["ledger_seq"] == kept
        assert entry["accepted_central"]["witnessed_seq_kept"] == witnessed
        service = UplinkService(rig.config(), rig.store)
        async with uplink_running(service):
            async with asyncio.timeout(30):
                while newest_witnessed_seq(rig.store.conn) <= witnessed:
                    await asyncio.sleep(0.05)
        assert len(rig.ledger("witness_alarm")) == 2, "no new alarm"
        assert rig.central.parts.index.ledger_head(STATION)[0] > witnessed


def test_edge_witness_show_reports_an_altered_tree_head_row_without_a_traceback(tmp_path: Path) -> None:
    store = StationStore(tmp_path / "store", STATION)
    try:
        with store.transaction():
            store.conn.execute(
                "INSERT INTO central_tree_heads (tree_size, root_hash, head, source, proved_from, received) "
                "VALUES (3, ?, '{\"origin\": \"central-test\"}', 'tree_head', NULL, ?)",
                ("ab" * 32, "2026-12-05T00:00:00.000000Z"),
            )
    finally:
        store.close()
    config = tmp_path / "station.toml"
    config.write_text(f'[station]\nid = "{STATION}"\nstore_dir = "{tmp_path / "store"}"\n'
                      f'[usb]\nmount_root = "{tmp_path / "media"}"\n')
    assert show(config)["central_tree_head"]["origin"] == "central-test"  # the control
    with attacker_db(tmp_path / "store" / "state.db") as conn:
        conn.execute("UPDATE central_tree_heads SET head = '{not json'")
    result = edge_cli("witness", "show", "--config", str(config))
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "newest central tree head kept: 3 leaves" in result.stdout
    assert "alarm: none" in result.stdout and "unwitnessed window: none" in result.stdout


def answer_json(doc: dict[str, Any]) -> Any:
    body = json.dumps(doc).encode()
    return lambda _request, _body: (200, {"Content-Type": "application/json"}, body)


async def test_accepting_the_central_head_is_refused_when_the_central_holds_a_fork_of_our_ledger(
    tmp_path: Path, media: Path
) -> None:
    """`--accept-central-head` re-anchors only on a central whose head of our ledger is a prefix of the
    ledger here. A central holding a fork (same seq, another hash: an entry that is not ours), or
    answering a head whose signed form names a fork, is refused and nothing changes; the control: the
    same central holding a true prefix is accepted."""
    async with make_rig(tmp_path, media) as rig:
        await drain(rig)
        witnessed = newest_witnessed_seq(rig.store.conn)
        kept = witnessed - 4
        ours = rig.store.conn.execute("SELECT hash FROM ledger WHERE seq=?", (kept,)).fetchone()[0]
        forged = "f" * 64
        await rig.central.stop()
        config = central_config(rig.tmp / "central-store")
        with attacker_db(config.layout.index_db) as conn:
            conn.execute("DELETE FROM station_ledger WHERE station = ? AND seq > ?", (STATION, kept))
            conn.execute("DELETE FROM station_checkpoints WHERE station = ? AND seq > ?", (STATION, kept))
            conn.execute("UPDATE station_ledger SET hash = ? WHERE station = ? AND seq = ?",
                         (forged, STATION, kept))
        rig.central = await start_central(config, signing_key=rig.central_key)
        rig.proxy.upstream = rig.central.url
        await alarm_stops_the_uplink(rig)
        station_config = station_toml(rig)
        head_before = rig.store.ledger.head()
        rig.store.close()

        forked = await edge_cli_async("witness", "clear", "--config", str(station_config),
                                      "--accept-central-head", "--reason", "accept whatever it has")
        assert forked.returncode == 2, forked.stdout + forked.stderr
        assert f"up to seq {kept} with hash {forged}" in forked.stderr and "forked" in forked.stderr
        reopen(rig)
        assert rig.store.ledger.head() == head_before and rig.ledger("witness_alarm_cleared") == []
        rig.store.close()

        # The plain head is made to look like ours while the head the central signed names the fork.
        from edge.uplink.transports import transport_for

        async with transport_for(rig.config(), None).connect() as link:
            real = await link.ledger_state()
        assert real.witnessed_head is not None and real.witnessed_head["hash"] == forged
        rig.proxy.faults.append(Fault("GET", rf"/v1/stations/{STATION}/ledger/head", answer_json(
            {"seq": kept, "hash": ours, "witnessed_head": real.witnessed_head, "tree_head": real.tree_head}
        ), times=0))
        disguised = await edge_cli_async("witness", "clear", "--config", str(station_config),
                                         "--accept-central-head", "--reason", "accept whatever it has")
        assert disguised.returncode == 2, disguised.stdout + disguised.stderr
        assert "signed" in disguised.stderr and forged in disguised.stderr, disguised.stderr
        reopen(rig)
        assert rig.store.ledger.head() == head_before and rig.ledger("witness_alarm_cleared") == []
        rig.store.close()
        rig.proxy.faults.clear()

        # The control: the central's copy mended to a true prefix of ours is accepted.
        await rig.central.stop()
        with attacker_db(config.layout.index_db) as conn:
            conn.execute("UPDATE station_ledger SET hash = ? WHERE station = ? AND seq = ?",
                         (ours, STATION, kept))
        rig.central = await start_central(config, signing_key=rig.central_key)
        rig.proxy.upstream = rig.central.url
        accepted = await edge_cli_async("witness", "clear", "--config", str(station_config),
                                        "--accept-central-head", "--reason", "backup restored, verified")
        assert accepted.returncode == 0, accepted.stderr
        reopen(rig)
        (entry,) = rig.ledger("witness_alarm_cleared")
        assert entry["accepted_central"]["ledger_seq"] == kept
        assert entry["accepted_central"]["ledger_hash"] == ours
