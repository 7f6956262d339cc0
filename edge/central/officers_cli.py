"""`edge central officers import FILE | list`: the agency's officer list, kept and signed at the central.

``import`` reads the same strict CSV as a station's `edge officers import` (edge.equipment.officer_csv:
every problem with its line, all or nothing) and issues it as the next version, signed with the central's
signing key (the key every station pinned at enrollment). Each version is the whole list: officers it does
not name are removed at the stations that apply it. A ``pin``/``密码`` column is refused: PINs stay
station-set (edge.equipment.officer_list says why), and the refusal names the column, never a value.
Stations fetch the newest version over their uplink (edge.uplink.service) and apply it
(edge.equipment.officer_sync). ``list`` prints the versions issued (number, digest, officers, time, who).
Both work in the central's database (``[central] index``: the store's ``index.db`` or PostgreSQL), beside
running receivers: a new version is numbered under the database's writer lock.

Exit status: 0 done; 65 the file is refused (nothing issued); 66 the file cannot be read; 64/78 usage or
configuration; 75 the database cannot be used now (nothing issued).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path
from typing import Any

from edge.central.backends import DatabaseUnavailable, database_exists, database_where, open_central_database
from edge.central.config import CentralConfig, ConfigError, load_central_config
from edge.central.equipment import EquipmentStore
from edge.central.identity import load_signing_key
from edge.central.index import CentralIndexError
from edge.central.storage import CentralDatabase
from edge.custody.errors import CustodyError
from edge.custody.text import printable
from edge.equipment.officer_csv import OfficerCsvError, parse_officer_csv
from edge.equipment.officer_list import OfficerListError
from edge.pki.names import IdentityError
from edge.runtime.exit_codes import ExitCode

__all__ = ["add_officers_parser"]

EX_DATAERR = 65
EX_NOINPUT = 66
EX_TEMPFAIL = 75


def _say(text: str) -> None:
    print(printable(text), file=sys.stderr)


def _config_path(args: argparse.Namespace) -> Path | None:
    path = getattr(args, "config", None) or getattr(args, "central_config", None)
    return Path(path) if path else None


def _open_database(config: CentralConfig) -> CentralDatabase | int:
    """The central's database, or the exit status after saying why not (a store never initialised:
    nothing to issue into)."""
    if not database_exists(config):
        _say(f"error: no central store at {config.layout.store_dir} (`edge central init` first)")
        return ExitCode.CONFIG
    try:
        database = open_central_database(config)
    except (DatabaseUnavailable, CentralIndexError, OSError) as exc:
        _say(f"error: opening {database_where(config)}: {exc}")
        return EX_TEMPFAIL
    return database


def _load_config(args: argparse.Namespace) -> CentralConfig | int:
    """The central's configuration named by --config, or the exit status that says why there is none."""
    path = _config_path(args)
    if path is None:
        _say("error: --config FILE is required (the central's TOML configuration)")
        return ExitCode.USAGE
    try:
        return load_central_config(path)
    except (ConfigError, ValueError, OSError) as exc:
        _say(f"error: {exc}")
        return ExitCode.CONFIG


def cmd_officers_import(args: argparse.Namespace) -> int:
    config = _load_config(args)
    if isinstance(config, int):
        return config
    source = Path(args.file)
    try:
        data = source.read_bytes()
    except OSError as exc:
        _say(f"error: cannot read {source}: {exc.strerror}")
        return EX_NOINPUT
    try:
        rows = parse_officer_csv(data, encoding=args.encoding)
        if any("pin" in row.given for row in rows):
            raise OfficerCsvError(["line 1: column pin (密码): PINs are not kept at the central nor sent to "
                                   "stations; remove the column and set PINs at the stations "
                                   "(`edge officers set-pin`)"])
    except OfficerCsvError as exc:
        _say(f"error: {source.name}: refused, no version issued:")
        for line in str(exc).splitlines():
            _say(f"  {line}")
        return EX_DATAERR
    try:
        # It checks the key against the signed heads in the database: unreachable, nothing is issued.
        key = load_signing_key(config)
    except DatabaseUnavailable as exc:
        _say(f"error: opening {database_where(config)}: {exc}")
        return EX_TEMPFAIL
    except (ConfigError, IdentityError, CustodyError, ValueError, OSError) as exc:
        _say(f"error: the central's signing key: {exc}")
        return ExitCode.CONFIG
    database = _open_database(config)
    if isinstance(database, int):
        return database
    store = EquipmentStore(database.equipment)
    failures: tuple[type[Exception], ...] = (CentralIndexError, OSError, *database.errors)
    try:
        issued = store.issue(rows, key=key, central=config.central.id, by=args.by or getpass.getuser())
    except OfficerListError as exc:
        _say(f"error: {source.name}: refused, no version issued: {exc}")
        return EX_DATAERR
    except failures as exc:
        _say(f"error: {database_where(config)}: no version issued: {exc}")
        return EX_TEMPFAIL
    finally:
        database.close()
    print(printable(f"officer list version {issued.version} issued from {source.name}: {issued.officers} "
                    f"officers, sha256 {issued.sha256}; stations take it at their next poll"))
    return ExitCode.OK


def cmd_officers_list(args: argparse.Namespace) -> int:
    config = _load_config(args)
    if isinstance(config, int):
        return config
    database = _open_database(config)
    if isinstance(database, int):
        return database
    store = EquipmentStore(database.equipment)
    failures: tuple[type[Exception], ...] = (CentralIndexError, OSError, *database.errors)
    try:
        versions: list[dict[str, Any]] = [v.summary() for v in store.versions()]
    except failures as exc:
        _say(f"error: {database_where(config)}: {exc}")
        return EX_TEMPFAIL
    finally:
        database.close()
    if args.json:
        print(json.dumps(versions, ensure_ascii=True))
        return ExitCode.OK
    if not versions:
        print("no officer list issued (`edge central officers import FILE`)")
    for v in versions:
        print(printable(f"version {v['version']}  {v['officers']} officers  {v['officers_sha256']}  "
                        f"{v['issued_at']}  by {v['by']}"))
    return ExitCode.OK


def add_officers_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    officers = commands.add_parser("officers", help="the agency's officer list, signed for the stations")
    sub = officers.add_subparsers(dest="officers_command", metavar="COMMAND", required=True)
    imp = sub.add_parser(
        "import", help="issue an officer list (CSV) as the next version, signed for the stations",
        description="Columns: officer_no/警号, name/姓名 (required); unit_code/单位编号, unit_name/单位名称, "
        "status/状态, card_uid/卡号. No PIN column: PINs are set at the stations.")
    imp.add_argument("file", help="the CSV file (the whole list: officers it omits are removed)")
    imp.add_argument("--config", metavar="FILE", help="central TOML file")
    imp.add_argument("--encoding", default="utf-8", help="the file's encoding (default utf-8; e.g. gbk)")
    imp.add_argument("--by", help="who issues it (default: the login name)")
    imp.set_defaults(func=cmd_officers_import)
    lst = sub.add_parser("list", help="the versions issued")
    lst.add_argument("--config", metavar="FILE", help="central TOML file")
    lst.add_argument("--json", action="store_true", help="one JSON array")
    lst.set_defaults(func=cmd_officers_list)
