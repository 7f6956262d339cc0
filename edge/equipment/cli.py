"""`edge officers import|list|set-pin|suspend|activate`: the station's officer registry from the command line.

Works on the station store directly (`--config` or `--store`), like `edge tag`: the store is locked, so
these run while the agent is stopped (exit 75 while it runs). An import is all or nothing: a refused
file changes nothing, prints every problem with its line (exit 65) and leaves a `refused` ledger entry.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path

from edge.config.station import StationConfig
from edge.custody.text import json_printable, printable
from edge.equipment.credentials import CredentialError, check_pin
from edge.equipment.importing import (
    CentralSuspension,
    import_officers,
    record_refused_import,
    set_officer_pin,
    set_officer_status,
)
from edge.equipment.officer_csv import OfficerCsvError, parse_officer_csv
from edge.equipment.officer_sync import list_in_force
from edge.equipment.officers import OfficerRegistry, OfficerStatus
from edge.ingest.store import StationStore
from edge.ingest.store_commands import load_station_config, open_station_store
from edge.runtime.exit_codes import ExitCode

__all__ = ["add_officers_parser"]

EX_DATAERR = 65


def _open(args: argparse.Namespace, purpose: str) -> StationStore | ExitCode:
    config: StationConfig | ExitCode | None = load_station_config(Path(args.config)) if args.config else None
    if isinstance(config, ExitCode):
        return config
    store_dir = config.station.store_dir if config else Path(args.store)
    return open_station_store(store_dir, config.station.id if config else None, purpose=purpose)


def cmd_import(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        data = path.read_bytes()
    except OSError as exc:
        print(printable(f"error: cannot read {path}: {exc.strerror}"), file=sys.stderr)
        return ExitCode.USAGE
    store = _open(args, "edge officers import")
    if isinstance(store, ExitCode):
        return store
    by = args.by or getpass.getuser()
    try:
        try:
            rows = parse_officer_csv(data, encoding=args.encoding)
            result = import_officers(store, rows, source=str(path), by=by)
        except OfficerCsvError as exc:
            entry = record_refused_import(store, str(path), exc.problems, by=by)
            print(printable(f"error: {path.name}: refused, nothing imported (ledger seq {entry.seq}):"),
                  file=sys.stderr)
            for line in str(exc).splitlines():
                print(printable(f"  {line}"), file=sys.stderr)
            return EX_DATAERR
    finally:
        store.close()
    print(f"imported {result.rows} officers from {printable(path.name)}: {result.added} added, "
          f"{result.updated} updated, {result.unchanged} unchanged, {result.pins_set} PINs set; "
          f"{result.officers_total} in the registry (ledger seq {result.entry.seq})")
    return ExitCode.OK


def cmd_list(args: argparse.Namespace) -> int:
    store = _open(args, "edge officers list")
    if isinstance(store, ExitCode):
        return store
    try:
        OfficerRegistry.create_schema(store.conn)
        officers = OfficerRegistry(store.conn).all()
        held = list_in_force(store.conn)
    finally:
        store.close()
    if args.json:
        print(json_printable(json.dumps([o.public() for o in officers], ensure_ascii=False)))
        return ExitCode.OK
    if held is not None:
        print(printable(f"following the officer list of central {held.central}: version {held.version} "
                        f"(sha256 {held.sha256[:16]}..., issued {held.issued_at}, applied {held.applied})"))
    if not officers:
        print("no officers (import a list with `edge officers import FILE`)")
    for o in officers:
        pin = "set" if o.has_pin else "-"
        print(printable(f"{o.officer_no}  {o.status:<9}  card {o.card_uid or '-':<20}  PIN {pin:<3}  "
                        f"{o.name}  {o.unit_code} {o.unit_name}".rstrip()))
    return ExitCode.OK


def _read_pin() -> str:
    """The new PIN: typed twice without echo at a terminal, else one line of standard input."""
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("new PIN: ")
    if getpass.getpass("again: ") != first:
        raise CredentialError("the two PINs differ")
    return first


def cmd_set_pin(args: argparse.Namespace) -> int:
    try:
        pin = check_pin(_read_pin())
    except CredentialError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EX_DATAERR
    store = _open(args, "edge officers set-pin")
    if isinstance(store, ExitCode):
        return store
    try:
        entry = set_officer_pin(store, args.officer_no, pin, by=args.by or getpass.getuser())
    except KeyError:
        print(printable(f"error: no officer {args.officer_no} in this station's registry"), file=sys.stderr)
        return EX_DATAERR
    finally:
        store.close()
    print(printable(f"officer {args.officer_no}: PIN set (ledger seq {entry.seq})"))
    return ExitCode.OK


def _cmd_status(status: OfficerStatus) -> object:
    def run(args: argparse.Namespace) -> int:
        store = _open(args, f"edge officers {args.officers_command}")
        if isinstance(store, ExitCode):
            return store
        try:
            entry = set_officer_status(store, args.officer_no, status, reason=args.reason or "",
                                       by=args.by or getpass.getuser())
        except KeyError:
            print(printable(f"error: no officer {args.officer_no} in this station's registry"),
                  file=sys.stderr)
            return EX_DATAERR
        except CentralSuspension as exc:
            print(printable(f"error: {exc}"), file=sys.stderr)
            return EX_DATAERR
        finally:
            store.close()
        print(printable(f"officer {args.officer_no}: {status} (ledger seq {entry.seq})"))
        return ExitCode.OK
    return run


def _where(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", help="station TOML file (its store)")
    where.add_argument("--store", help="station store directory")


def add_officers_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    officers = sub.add_parser("officers",
                              help="the station's officer registry (issue and return of recorders)")
    commands = officers.add_subparsers(dest="officers_command", metavar="COMMAND", required=True)

    imp = commands.add_parser(
        "import", help="merge an officer list (CSV) into the registry: all rows or none",
        description="Columns: officer_no/警号, name/姓名 (required); unit_code/单位编号, unit_name/单位名称, "
        "status/状态, card_uid/卡号, pin/密码. PINs are hashed (argon2id); delete the file afterwards.",
    )
    imp.add_argument("file", help="the CSV file")
    _where(imp)
    imp.add_argument("--encoding", default="utf-8", help="the file's encoding (default utf-8; e.g. gbk)")
    imp.add_argument("--by", help="who imports (default: the login name)")
    imp.set_defaults(func=cmd_import)

    lst = commands.add_parser("list", help="the officers, their status and credentials (never a PIN)")
    _where(lst)
    lst.add_argument("--json", action="store_true", help="one JSON array")
    lst.set_defaults(func=cmd_list)

    set_pin = commands.add_parser(
        "set-pin", help="set an officer's PIN (typed twice at a terminal, else one line on stdin; hashed)")
    set_pin.add_argument("officer_no", help="警号")
    _where(set_pin)
    set_pin.add_argument("--by", help="who (default: the login name)")
    set_pin.set_defaults(func=cmd_set_pin)

    for name, status, what in (("suspend", OfficerStatus.SUSPENDED, "refuse check-outs to an officer"),
                               ("activate", OfficerStatus.ACTIVE, "allow check-outs to an officer again")):
        cmd = commands.add_parser(name, help=what)
        cmd.add_argument("officer_no", help="警号")
        _where(cmd)
        cmd.add_argument("--reason", help="why (kept in the ledger entry)")
        cmd.add_argument("--by", help="who (default: the login name)")
        cmd.set_defaults(func=_cmd_status(status))
