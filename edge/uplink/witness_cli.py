"""`edge witness ...`: the operator's view of witnessing, and the way back from a witness alarm.

`edge witness show --config FILE` prints the alarm state, the newest head of our ledger the central
witnessed, the newest tree head of the central's log the station keeps (its trust anchor) and the
unwitnessed window; it only reads the store (no lock: it works while the agent runs).

`edge witness clear --config FILE --reason TEXT [--accept-central-head]` clears a standing witness alarm
with a signed `witness_alarm_cleared` ledger entry (`edge.uplink.alarm_clear` says what each choice
trusts, and why). It writes the store, so, like `edge tag` and `edge uplink retry`, it needs the store to
itself: stop the agent first (`systemctl stop edge-station`), clear, start it again; the uplink resumes.

Exit status: 0 done; 2 refused (no alarm stands, no reason, the central cannot be asked or its answer
does not verify: nothing is changed); 75 the agent (or another command) holds the store, named in the
message; 78 the configuration or the store is unusable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

from edge.config.base import ConfigError
from edge.config.station import StationConfig, load_config
from edge.runtime.exit_codes import ExitCode

__all__ = ["add_witness_parser", "cmd_witness_clear", "cmd_witness_show", "witness_report"]


def _error(message: object, code: int = ExitCode.USAGE) -> int:
    print(f"error: {message}", file=sys.stderr)
    return int(code)


def _config(args: argparse.Namespace) -> StationConfig | int:
    try:
        config = load_config(Path(args.config))
    except ConfigError as exc:
        return _error(exc, ExitCode.CONFIG)
    if not (config.station.store_dir / "state.db").is_file():
        return _error(f"{config.station.store_dir} is not a station store (no state.db)", ExitCode.CONFIG)
    return config


def cmd_witness_clear(args: argparse.Namespace) -> int:
    from edge.custody.errors import CustodyError
    from edge.custody.keys import load_public_key
    from edge.ingest.store_commands import open_station_store
    from edge.uplink.alarm_clear import ClearError, clear_witness_alarm, fetch_accepted_central
    from edge.uplink.requeue import local_operator

    config = _config(args)
    if isinstance(config, int):
        return config
    # The agent (or another command) holding the store is named in the message, with status 75.
    store = open_station_store(config.station.store_dir, config.station.id, purpose="edge witness clear")
    if isinstance(store, ExitCode):
        return int(store)
    try:
        accepted = None
        central_key = None
        if args.accept_central_head:
            pinned = config.uplink.pinned_key_path
            if not config.uplink.enabled or pinned is None:
                return _error("--accept-central-head needs the [uplink] section (central_url and the pinned "
                              "central key) to ask the central for its current tree head")
            try:
                central_key = load_public_key(pinned)
            except CustodyError as exc:
                return _error(f"the pinned central key {pinned}: {exc}", ExitCode.CONFIG)
            # Checked before asking the central, so that a refusal does not wait for the network.
            from edge.custody.witness_log import alarm_state

            state = alarm_state(store.conn)
            if state is None or not state.standing:
                return _error("no witness alarm stands: nothing to clear")
            accepted = asyncio.run(fetch_accepted_central(config, central_key))
        cleared = clear_witness_alarm(store, operator=local_operator(), reason=args.reason or "",
                                      accepted=accepted, central_key=central_key)
    except ClearError as exc:
        return _error(exc)
    finally:
        store.close()
    head = cleared.tree_head
    shown = "none kept" if head is None else f"{head.tree_size} leaves, root {head.root_hash}"
    print(f"cleared the witness alarm of ledger seq {cleared.alarm_seq} ({cleared.alarm_reason[:300]}): "
          f"ledger seq {cleared.seq}")
    if cleared.trusted == "kept":
        print(f"trusted tree head: kept ({shown}); the next head the central shows must extend it, or the "
              "alarm is raised again")
    else:
        print(f"trusted tree head: accepted the central's current head ({shown}) as the new anchor")
    print("the uplink resumes when the agent starts")
    return ExitCode.OK


def witness_report(conn: sqlite3.Connection) -> dict[str, Any]:
    """What `edge witness show` prints, as one JSON-able object (read-only queries)."""
    from edge.custody.canonical import parse_json
    from edge.custody.errors import CanonicalJsonError
    from edge.custody.witness_log import alarm_state, stored_witnessed_heads, unwitnessed_window

    state = alarm_state(conn)
    alarm: dict[str, Any] | None = None
    if state is not None:
        alarm = {"seq": state.seq, "reason": state.reason, "standing": state.standing,
                 "cleared_seq": state.cleared_seq}
    newest = None
    for stored in stored_witnessed_heads(conn):
        newest = stored
    witnessed: dict[str, Any] | None = None
    if newest is not None:
        witnessed = {"row": newest.row_id, "source": newest.source, "received": newest.received,
                     "problem": newest.problem}
        if newest.head is not None:
            witnessed.update(seq=newest.head.seq, hash=newest.head.hash, central=newest.head.central,
                             time=newest.head.time)
    tree: dict[str, Any] | None = None
    try:
        row = conn.execute("SELECT tree_size, root_hash, head, source, proved_from, received FROM "
                           "central_tree_heads ORDER BY id DESC LIMIT 1").fetchone()
    except sqlite3.OperationalError:
        row = None  # a store from before witnessing
    if row is not None:
        try:
            head = parse_json(row[2]) if isinstance(row[2], str) else None
        except CanonicalJsonError:
            head = None  # an altered row: shown as such, `edge verify` names it
        tree = {"tree_size": row[0], "root_hash": row[1], "source": row[3], "proved_from": row[4],
                "received": row[5], "origin": head.get("origin") if isinstance(head, dict) else None}
    window = unwitnessed_window(conn)
    return {
        "alarm": alarm,
        "witnessed_head": witnessed,
        "central_tree_head": tree,
        "unwitnessed": {"entries": window.entries, "seconds": round(window.seconds(), 3),
                        "head_seq": window.head_seq, "witnessed_seq": window.witnessed_seq},
        "unwitnessed_text": window.describe(),
    }


def cmd_witness_show(args: argparse.Namespace) -> int:
    config = _config(args)
    if isinstance(config, int):
        return config
    db = config.station.store_dir / "state.db"
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            report = witness_report(conn)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return _error(f"{db}: {exc}", ExitCode.CONFIG)
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
        return ExitCode.OK
    alarm = report["alarm"]
    if alarm is None:
        print("alarm: none")
    elif alarm["standing"]:
        print(f"alarm: STANDING since ledger seq {alarm['seq']}: {alarm['reason']}; the uplink is stopped "
              "(investigate, then `edge witness clear`)")
    else:
        print(f"alarm: none standing (the alarm of ledger seq {alarm['seq']} was cleared at ledger seq "
              f"{alarm['cleared_seq']})")
    witnessed = report["witnessed_head"]
    if witnessed is None:
        print("newest witnessed head: none (the central has witnessed none of this ledger)")
    elif witnessed.get("problem"):
        print(f"newest witnessed head: row {witnessed['row']} is damaged: {witnessed['problem']}")
    else:
        print(f"newest witnessed head: seq {witnessed['seq']} hash {witnessed['hash']}, signed by central "
              f"{witnessed['central']} at {witnessed['time']} (kept from a {witnessed['source']})")
    tree = report["central_tree_head"]
    if tree is None:
        print("newest central tree head kept: none")
    else:
        how = ("accepted by an operator (edge witness clear --accept-central-head)"
               if tree["source"] == "operator_accepted" else
               f"proved consistent with {tree['proved_from']} leaves" if tree["proved_from"] is not None
               else "the first one seen")
        print(f"newest central tree head kept: {tree['tree_size']} leaves, root {tree['root_hash']} of log "
              f"{tree['origin']} ({how}; kept from a {tree['source']} at {tree['received']})")
    print(f"unwitnessed window: {report['unwitnessed_text']}")
    return ExitCode.OK


def add_witness_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    witness = sub.add_parser("witness", help="witnessing: show its state, clear a witness alarm")
    commands = witness.add_subparsers(dest="witness_command", metavar="COMMAND", required=True)
    show = commands.add_parser(
        "show", help="the alarm state, the newest witnessed head and tree head, the unwitnessed window",
        description="Read-only: works while the agent runs.",
    )
    show.add_argument("--config", required=True, help="station TOML file (its store)")
    show.add_argument("--json", action="store_true", help="one JSON object")
    show.set_defaults(func=cmd_witness_show)
    clear = commands.add_parser(
        "clear",
        help="clear a standing witness alarm (a signed witness_alarm_cleared ledger entry)",
        description="Clear the standing witness alarm after investigating it: a signed ledger entry naming "
        "you (your Unix account), the alarm and your reason, and which tree head of the central the station "
        "trusts from now on: the one kept before the alarm (default: the next head must extend it, or the "
        "alarm is raised again), or with --accept-central-head the central's current one. Stop the agent "
        "first; the uplink resumes when it starts.",
    )
    clear.add_argument("--config", required=True, help="station TOML file (its store)")
    clear.add_argument("--reason", required=True, help="what was investigated and found (kept in the entry)")
    clear.add_argument(
        "--accept-central-head",
        action="store_true",
        help="trust the central's current signed tree head from now on (asked over mutual TLS and verified "
        "with the pinned key; named in the entry with the head it replaces)",
    )
    clear.set_defaults(func=cmd_witness_clear)
