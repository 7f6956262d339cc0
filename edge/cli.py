"""`edge`: the command line of evidence-edge."""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import getpass
import json
import logging
import math
import re
import sys
from pathlib import Path
from typing import Any

from edge.central.cli import add_central_parser
from edge.config.base import (
    ROLE_TABLES,
    ConfigError,
    check_secrets_resolve,
    config_role,
    parse_toml_document,
    read_config_text,
)
from edge.config.station import MQTT_BROKER_URL_OR_EMPTY, StationConfig, WipePolicy, load_config
from edge.custody.text import json_printable, printable
from edge.durable.lock import StoreBusy
from edge.equipment.cli import add_officers_parser
from edge.gb28181.cli import add_gb28181_parser
from edge.ingest.store_commands import load_station_config, open_station_store, store_failure_status
from edge.observe.room_cli import add_room_parser
from edge.observe.status_cli import add_status_parser
from edge.runtime.exit_codes import ExitCode
from edge.runtime.logs import LOG_FORMATS, LogFormat, configure_logging
from edge.uplink.cli import add_uplink_parser
from edge.uplink.witness_cli import add_witness_parser

log = logging.getLogger("edge")


def _setup_logging(verbose: bool, quiet: bool = False, log_format: LogFormat = "auto") -> None:
    # One printable line per record: log messages quote device names (edge.runtime.logs).
    configure_logging(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO, sys.stderr,
                      log_format)


def _error(message: object) -> None:
    if isinstance(message, ConfigError):
        # Our own multi-line report of a file the operator wrote: one problem per line, each escaped.
        text = "\n".join(printable(line) for line in f"error: {message}".splitlines())
    else:
        text = printable(f"error: {message}")  # an exception can quote device text: one line
    print(text, file=sys.stderr)


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate a station or a central configuration: the file's one top-level table says which."""
    path = Path(args.file)
    try:
        raw = parse_toml_document(read_config_text(path), str(path))
        role = config_role(raw)
        if role == "central":
            from edge.central.cli import describe_central_config
            from edge.central.config import load_central_config

            print(f"{path}: OK ({describe_central_config(load_central_config(path))})")
            return ExitCode.OK
        if role is None:
            expected = "; or ".join(
                f"[{table}] for {what} (checked by `{check.replace('FILE', str(path))}`)"
                for table, (what, check, _run) in ROLE_TABLES.items()
            )
            found = "both" if all(isinstance(raw.get(table), dict) for table in ROLE_TABLES) else "neither"
            raise ConfigError(f"{path}: expected one of the top-level tables {expected}; found {found}")
        config = load_config(path)
        _check_mqtt_identity(config, path)
    except ConfigError as exc:
        _error(exc)
        return ExitCode.CONFIG
    print(
        f"{path}: OK (station {config.station.id}, {len(config.bays)} bays, "
        f"{len(config.recorders.allow)} recorders on the allow-list)"
    )
    _check_vfat_codepage(config)
    waits_for_central = (WipePolicy.AFTER_WITNESS, WipePolicy.AFTER_RECEIPT)
    if config.wipe.policy in waits_for_central and not config.uplink.enabled:
        # Valid, and safe, but an admin who copied a station file without [uplink] should know why
        # recorders come back full: erasing waits for a central that is not configured.
        print(
            f"warning: [wipe] policy = {config.wipe.policy.value!r} erases only what a central has "
            "witnessed, and no [uplink] central_url is set: recorders will never be erased. Configure "
            '[uplink], or set policy = "after-verify" and accept what it costs (README, wipe policies)',
            file=sys.stderr,
        )
    return ExitCode.OK


def _check_mqtt_identity(config: StationConfig, path: Path) -> None:
    """With [mqtt], the certificate, key and CA the station will present and trust must be usable now,
    not at the first connection attempt."""
    if not config.mqtt.enabled:
        return
    from edge.mqtt.station_settings import station_mqtt_settings
    from edge.pki.names import IdentityError

    try:
        station_mqtt_settings(config, create_secret=False)  # the agent makes its client secret
    except (IdentityError, ValueError) as exc:
        raise ConfigError(f"{path}: [mqtt]: {exc}") from None


def _check_vfat_codepage(config: StationConfig) -> None:
    """The vfat mount options the udev rule must carry for this configuration, and a warning when the
    kernel lacks the modules they need (systemd/99-evidence-edge.rules, README)."""
    from edge.sources.usb.vfat import nls_problem, vfat_mount_options

    codepage = config.usb.vfat_codepage
    if codepage is None:
        return
    print(f"vfat volumes must be mounted with --options={vfat_mount_options(codepage)}")
    problem = nls_problem(codepage)
    if problem is not None:
        print(f"warning: {problem}", file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    """The station agent. Exit statuses (see edge.runtime.exit_codes): 78 when the configuration, a
    secret it refers to or the store is unusable; 75 when another process holds the store."""
    from edge.ingest.store import StoreError
    from edge.station import run_station

    config = load_station_config(Path(args.config))
    if isinstance(config, ExitCode):
        return config
    try:
        # At start, not at the first recorder: a secret that cannot be read is a configuration error.
        check_secrets_resolve(config, str(args.config))
    except ConfigError as exc:
        _error(exc)
        return ExitCode.CONFIG
    # A crash in C code (a library misused across threads) leaves every thread's Python stack on
    # stderr, which under systemd is the journal: a field crash can be traced, not only counted.
    try:
        faulthandler.enable(all_threads=True)
    except (ValueError, OSError):  # io.UnsupportedOperation: stderr is not a file (embedded, captured)
        if sys.__stderr__ is not None:
            faulthandler.enable(file=sys.__stderr__, all_threads=True)
    try:
        return asyncio.run(run_station(config, Path(args.config)))
    except (StoreBusy, StoreError) as exc:
        return store_failure_status(exc)


# `edge verify` exit statuses (README): 2 is a usage or input error.
VERIFY_OK = 0  # every check held, for a station store the central's witnessing included
VERIFY_FAILED = 1  # problems found (named on FAIL lines)
VERIFY_LOCAL_ONLY = 3  # a station store whose local checks held, but the central was not consulted
VERIFY_ORIGIN_UNPROVEN = 4  # a disclosure package that holds together, but no central key was pinned
VERIFY_NOT_BOUND = 5  # a package whose disclosed custody entries the station's signed chain does not reach
VERIFY_NOT_COMPLETE = 6  # a package whose items' entries carry no item chain (item_prev) to show all


def cmd_verify(args: argparse.Namespace) -> int:
    from edge.custody.errors import CustodyError
    from edge.custody.keys import load_public_key
    from edge.verify.package import is_package, verify_package
    from edge.verify.station import (
        VerifyReport,
        is_receipt_file,
        is_store,
        verify_file,
        verify_receipt_file,
    )

    target = Path(args.path)
    report: VerifyReport
    try:
        key = load_public_key(Path(args.key)) if args.key else None
        central_key = load_public_key(Path(args.central_key)) if args.central_key else None
    except CustodyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if (target / "index.db").is_file():
        report = _verify_central(target, central_key)
    elif target.is_file() and target.suffix == ".toml":
        # A central's configuration: its store, and its index wherever [central] index keeps it (a
        # PostgreSQL database holds no file in the store to recognise it by).
        from edge.central.config import PostgresIndexConfig, load_central_config

        try:
            central_config = load_central_config(target)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        index = central_config.central.index
        report = _verify_central(central_config.central.store_dir, central_key,
                                 index if isinstance(index, PostgresIndexConfig) else None, central_config)
    elif is_package(target):
        # An unzipped disclosure package (一案一包): checked offline against the central key, pinned with
        # --central-key or by the station configuration given with --config; never the package's own.
        if central_key is None and args.config:
            try:
                central_key = _configured_central_key(Path(args.config))
            except (ConfigError, CustodyError) as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
        try:
            station_keys = [load_public_key(Path(name)) for name in args.station_key]
        except CustodyError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        report = verify_package(target, central_key, station_keys)
    elif args.item or is_store(target):
        if not is_store(target):
            print(f"error: {target} is not a station store (no state.db)", file=sys.stderr)
            return 2
        try:
            report = _verify_station_store(target, args, key, central_key)
        except (ConfigError, CustodyError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    elif is_receipt_file(target):
        if central_key is None:
            print(
                "error: verifying a receipt needs --central-key (the central's signing key, "
                "central-signing.pub from the enrollment bundle)",
                file=sys.stderr,
            )
            return 2
        report = verify_receipt_file(target, central_key, Path(args.content) if args.content else None)
    elif target.is_file():
        report = verify_file(target, key)
    else:
        print(
            f"error: {target} is neither a sealed file, a receipt, a station store (state.db), a "
            "central store (index.db) nor an unzipped disclosure package (package.json)",
            file=sys.stderr,
        )
        return 2
    # A whole station store whose central was not consulted: every local check may hold and the store
    # still be a rewrite by someone with the station key; a court must not read that as OK.
    local_only = (report.ok and is_store(target) and not args.item
                  and not report.checked.get("central_consulted"))
    verdict, status = ("LOCAL CHECKS ONLY", VERIFY_LOCAL_ONLY) if local_only else (
        ("OK", VERIFY_OK) if report.ok else ("FAILED", VERIFY_FAILED))
    if report.ok and "origin" in report.unproven:
        verdict, status = "ORIGIN UNPROVEN", VERIFY_ORIGIN_UNPROVEN
    elif report.ok and "binding" in report.unproven:
        verdict, status = "NOT BOUND", VERIFY_NOT_BOUND
    elif report.ok and "completeness" in report.unproven:
        verdict, status = "NOT COMPLETE", VERIFY_NOT_COMPLETE
    # What a store, a manifest or a receipt says can be anything a forger wrote: shown escaped.
    if args.json:
        answer = {**report.as_dict(), "verdict": verdict, "exit_status": status}
        print(json_printable(json.dumps(answer, ensure_ascii=False)))
    else:
        for problem in report.problems:
            print(printable(f"FAIL {problem.where}: {problem.what}"))
        for note in report.notes:
            print(printable(f"NOTE {note}"))
        checked = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in report.checked.items())
        unwitnessed = (": every local check held, but the central was not consulted, so what it witnessed "
                       "was not checked (see the notes)") if local_only else ""
        unproven = "".join(f"; {why}" for why in report.unproven.values()) if report.ok else ""
        summary = (f"{verdict}: {report.target} ({checked}; {len(report.problems)} problem(s)){unwitnessed}"
                   f"{unproven}")
        print(printable(summary))
    return status


def _configured_central_key(config_path: Path) -> Any:
    """The central key a station configuration pins ([uplink] pinned key), for checking a package."""
    from edge.custody.keys import load_public_key

    config = load_config(config_path)
    pinned = config.uplink.pinned_key_path
    if pinned is None:
        raise ConfigError(f"{config_path}: pins no central key ([uplink]); give --central-key")
    return load_public_key(pinned)


def _verify_station_store(target: Path, args: argparse.Namespace, key: Any, central_key: Any) -> Any:
    """A station store, checked against what the central witnessed: the central key and the central
    itself are found from the station's configuration (`--config`, `$EDGE_STATION_CONFIG` or
    /etc/evidence-edge/station.toml, when it configures this store)."""
    import sqlite3

    from edge.custody.keys import load_public_key
    from edge.verify.station import verify_store
    from edge.verify.witness import CentralView, fetch_central_view, find_station_config

    found = find_station_config(target, Path(args.config) if args.config else None)
    view = None
    if found.config is not None and found.config.uplink.enabled and args.item is None:
        pinned = found.config.uplink.pinned_key_path
        if central_key is None and pinned is not None:
            central_key = load_public_key(pinned)
        view = asyncio.run(fetch_central_view(found.config))
    elif found.config is not None and args.item is None:
        view = CentralView("", failure=f"the station configuration {found.path} names no central: it has "
                                       "no [uplink] central_url")
    report = verify_store(target, only_item=args.item, pinned_key=key, central_key=central_key,
                          central_view=view)
    if report.diverged_after is not None and view is not None and view.failure is None and found.config \
            is not None and central_key is not None:
        # The ledger no longer holds what the central witnessed: its own copy names what was removed.
        from edge.verify.central_ledger import compare_with_central_ledger

        conn = sqlite3.connect(f"file:{target / 'state.db'}?mode=ro", uri=True, timeout=10)
        try:
            named = asyncio.run(compare_with_central_ledger(found.config, conn, report.diverged_after,
                                                            central_key))
        finally:
            conn.close()
        report.problems.extend(named.problems)
        report.notes.extend(named.notes)
        report.checked.update(named.checked)
    if found.note is not None:
        report.notes.insert(0, found.note)
    elif found.path is not None:
        report.notes.insert(0, f"station configuration: {found.path}")
    return report


def _verify_central(store_dir: Path, central_key: Any, index: Any = None, config: Any = None) -> Any:
    """A central store: objects, index, station ledgers, Merkle log; the signing key pinned if given.
    ``index``: the store's PostgreSQL index configuration (None: the store's index.db); ``config``: the
    central's configuration, whose [central] objects says where its objects are (an S3 bucket; None:
    the store's objects/ folder)."""
    from edge.central.objects import ObjectStore, ObjectStoreError
    from edge.central.verify import verify_central
    from edge.custody.problems import Problem
    from edge.verify.station import VerifyReport

    report = VerifyReport(f"central store {store_dir}" + (f" with its index in {index.url}" if index else ""))
    objects: ObjectStore | None = None
    if config is not None and config.central.objects.type != "files":
        from edge.central.object_stores import open_object_store

        try:
            objects = open_object_store(config)
        except (ConfigError, ObjectStoreError) as exc:
            report.problems.append(Problem(f"objects of {config.central.objects.bucket}",
                                           f"cannot be opened: {exc}"))
            return report
    from edge.central.retention import RetentionPolicy

    retention = RetentionPolicy.from_config(config.retention) if config is not None else None
    findings = verify_central(store_dir, central_public_key=central_key, index=index, objects=objects,
                              retention=retention)
    report.problems.extend(findings.problems)
    report.notes.extend(findings.notes)
    report.checked["central_stores"] = 1
    report.checked.update(findings.checked)
    return report


def cmd_tag(args: argparse.Namespace) -> int:
    from edge.ingest.tagging import TagError, tag_item

    changes: dict[str, Any] = {}
    for field in ("case_number", "location", "collector", "subject", "category", "retention"):
        value = getattr(args, field)
        if value is not None:
            changes[field] = value
    if args.important is not None:
        changes["important"] = args.important
    config: StationConfig | ExitCode | None = load_station_config(Path(args.config)) if args.config else None
    if isinstance(config, ExitCode):
        return config
    store_dir = config.station.store_dir if config else Path(args.store)
    station_id = config.station.id if config else None
    store = open_station_store(store_dir, station_id, purpose="edge tag")
    if isinstance(store, ExitCode):
        return store
    try:
        entry = tag_item(store, args.item, changes, by=args.by or getpass.getuser())
    except TagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
    print(f"tagged {args.item}: ledger seq {entry.seq} ({', '.join(sorted(changes))})")
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    """Replace the station key explicitly: a signed `key_rotated` ledger entry, the old key kept."""
    from edge.ingest.key_rotation import RotationError, rotate_station_key
    from edge.ingest.store import StoreError

    config = load_station_config(Path(args.config))
    if isinstance(config, ExitCode):
        return config
    store_dir = config.station.store_dir
    try:
        result = rotate_station_key(
            store_dir,
            config.station.id,
            lost_key=args.lost_key,
            old_public_key=Path(args.old_public_key) if args.old_public_key else None,
            reason=args.reason or "",
            by=getpass.getuser(),
        )
    except (StoreBusy, StoreError) as exc:
        return store_failure_status(exc)
    except RotationError as exc:
        _error(exc)
        return ExitCode.FAILED
    old = (
        f"old key {result.old_key_id} recorded as lost"
        if result.old_key_lost
        else f"old key {result.old_key_id} signed the rotation and is kept as {result.retired_path}"
    )
    print(
        f"station {config.station.id}: ledger seq {result.seq} rotates the signing key to "
        f"{result.new_key_id}; {old}.\n"
        f"New public key: {result.public_path}\n"
        "Next steps:\n"
        f"  1. Re-enroll the station with the central, which refuses its new ledger entries until then "
        f"(uploads wait in the spool; nothing is lost). On the central, with a copy of the new public "
        f"key:\n       edge central enroll {config.station.id} --signing-key station.key.pub --out DIR\n"
        "  2. Install the new bundle on the station (its [uplink] identity_dir), then start the agent.\n"
        "  3. Replace every pinned copy of the old public key (`edge verify --key`) with the new one; "
        "the ledger announces both, so `edge verify STORE` accepts what each key signed."
    )
    return ExitCode.OK


def cmd_demo(args: argparse.Namespace) -> int:
    from edge.demo import MAX_DEMO_RECORDERS, DemoOptions, demo_recorders, run_demo
    from simulators.gb28181.settings import parse_faults

    if args.broker is not None and args.transport != "mqtt":
        print("error: --broker needs --transport mqtt", file=sys.stderr)
        return ExitCode.USAGE
    if args.transport == "mqtt" and args.no_central:
        print("error: --transport mqtt sends to the central: it cannot go with --no-central", file=sys.stderr)
        return ExitCode.USAGE
    if args.central_process and (args.no_central or args.transport != "http"):
        print("error: --central-process runs the central (over HTTPS) in a process of its own: it cannot go "
              "with --no-central or --transport mqtt", file=sys.stderr)
        return ExitCode.USAGE
    recorders = demo_recorders(args.recorders, args.source)
    if recorders is None:
        print(f"error: --recorders must be 1 to {MAX_DEMO_RECORDERS}", file=sys.stderr)
        return ExitCode.USAGE
    options = DemoOptions(
        recorders=recorders,
        files=args.files,
        file_mb=args.file_mb,
        workdir=Path(args.workdir) if args.workdir else None,
        json_output=args.json,
        central=not args.no_central,
        keep_running=args.keep_running,
        transport=args.transport,
        broker_url=args.broker,
        source=args.source,
        room=args.room,
        room_seconds=args.seconds,
        segment_s=args.segment_seconds,
        gb_faults=tuple(args.gb_fault),
        shift=args.shift,
        central_process=args.central_process,
        own_process=True,
        usb_mb_s=args.usb_mb_s,
    )
    if options.usb_mb_s is not None and (options.room or options.shift or options.source != "usb"):
        print("error: --usb-mb-s paces the recorders docked over USB: it cannot go with --room, --shift or "
              "--source gb28181", file=sys.stderr)
        return ExitCode.USAGE
    if options.usb_mb_s is not None:
        from simulators.recorder.volume import VolumeMountError, check_fuse_available

        try:  # else every recorder's mount fails and the demo waits for an offload that never comes
            check_fuse_available()
        except VolumeMountError as exc:
            print(f"error: --usb-mb-s reads each recorder through a FUSE volume: {exc}", file=sys.stderr)
            return ExitCode.USAGE
    if options.shift and (options.room or options.source != "usb" or not options.central):
        print("error: --shift runs its own recorders through the desk, the dock and the central: it cannot "
              "go with --room, --source gb28181 or --no-central", file=sys.stderr)
        return ExitCode.USAGE
    try:
        parse_faults(list(options.gb_faults))
    except ValueError as exc:
        print(f"error: --gb-fault: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    if options.room and not (1.0 <= options.room_seconds <= 24 * 3600 and 0.5 <= options.segment_s <= 600):
        print("error: --seconds must be 1 to 86400 and --segment-seconds 0.5 to 600", file=sys.stderr)
        return ExitCode.USAGE
    from edge.central.own_process import CentralProcessError

    try:
        return asyncio.run(run_demo(options))
    except CentralProcessError as exc:  # its log's tail is in the message
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.FAILED


def _positive_mb_s(value: str) -> float:
    try:
        rate = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MB/s as a number, found {value[:40]!r}") from None
    if not math.isfinite(rate) or not 0.1 <= rate <= 10_000:
        raise argparse.ArgumentTypeError(f"expected 0.1 to 10000 MB/s, found {value[:40]!r}")
    return rate


def _mqtts_url(value: str) -> str:
    if not value or not re.fullmatch(MQTT_BROKER_URL_OR_EMPTY, value):
        raise argparse.ArgumentTypeError(f"expected mqtts://host[:port], found {value[:100]!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge", description="evidence-edge: docking-station evidence agent")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--log-format", choices=LOG_FORMATS, default="auto",
                        help="auto (the default): the journal's structured fields when stderr is the "
                             "journal, else text lines; json: one JSON object per line")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the station agent")
    run.add_argument("--config", required=True, help="station TOML file")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check-config", help="validate a configuration file")
    check.add_argument("file")
    check.set_defaults(func=cmd_check_config)

    verify = sub.add_parser(
        "verify", help="verify a sealed file, an item, a station store, a central store, a receipt or an "
        "unzipped disclosure package"
    )
    verify.add_argument(
        "path", help="sealed evidence file, station store, central store (or the central's configuration "
        "file, for a central whose index is on PostgreSQL), or a .receipt.json file"
    )
    verify.add_argument("--item", help="verify only this item of the store at PATH")
    verify.add_argument("--key", help="the station public key (PEM) as known from enrolment, to pin")
    verify.add_argument(
        "--central-key", help="the central's signing public key (central-signing.pub), to verify receipts"
    )
    verify.add_argument("--content", help="with a receipt: the file whose bytes it should receipt")
    verify.add_argument(
        "--station-key", action="append", default=[], metavar="FILE",
        help="for a disclosure package: a station public key (PEM) obtained from the station, not from the "
        "package; repeatable; only pinned station keys are then trusted",
    )
    verify.add_argument(
        "--config",
        help="the station configuration of the store (default: $EDGE_STATION_CONFIG, else "
        "/etc/evidence-edge/station.toml when it configures this store): its pinned central key checks "
        "receipts and witnessed heads, and its central is asked for its witnessed head; for a disclosure "
        "package, its pinned central key is the key the package must be signed with",
    )
    verify.add_argument("--json", action="store_true", help="one JSON object")
    verify.set_defaults(func=cmd_verify)

    tag = sub.add_parser("tag", help="set case metadata on an item (a new signed ledger entry)")
    tag.add_argument("item", help="item UUID")
    where = tag.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", help="station TOML file (its store)")
    where.add_argument("--store", help="station store directory")
    tag.add_argument("--case", dest="case_number", help="案件编号 case number")
    tag.add_argument("--location", help="采集地点 capture location")
    tag.add_argument("--collector", help="采集人 collector")
    tag.add_argument("--subject", help="证明对象 what the record proves")
    tag.add_argument("--category")
    tag.add_argument("--retention", help="retention class, e.g. 6-months, permanent")
    tag.add_argument("--important", dest="important", action="store_true", default=None, help="重点 flag on")
    tag.add_argument("--not-important", dest="important", action="store_false", help="重点 flag off")
    tag.add_argument("--by", help="who tags (default: the login name)")
    tag.set_defaults(func=cmd_tag)

    keys = sub.add_parser("keys", help="the station's signing key")
    key_commands = keys.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)
    rotate = key_commands.add_parser(
        "rotate",
        help="replace the station key: a signed key_rotated ledger entry; then re-enroll with the central",
        description="Stop the agent first: the store is locked while the key changes.",
    )
    rotate.add_argument("--config", required=True, help="station TOML file (its store)")
    rotate.add_argument(
        "--lost-key",
        action="store_true",
        help="the old private key is lost: record that, sign with the new key only",
    )
    rotate.add_argument(
        "--old-public-key",
        metavar="FILE",
        help="with --lost-key: the old public key (PEM) when keys/station.key.pub is gone too",
    )
    rotate.add_argument("--reason", help="why (kept in the ledger entry)")
    rotate.set_defaults(func=cmd_keys_rotate)

    demo = sub.add_parser("demo", help="simulated station: recorders, dock, offload, verify")
    demo.add_argument(
        "--recorders", type=int, default=None,
        help="simulated recorders (default: 3 docked over USB; 2 4G recorders with --source gb28181)",
    )
    demo.add_argument("--files", type=int, default=5, help="files per recorder")
    demo.add_argument("--file-mb", type=float, default=2.0, help="size of each video file in MiB")
    demo.add_argument(
        "--usb-mb-s", type=_positive_mb_s, default=None, metavar="MB_S",
        help="pace each docked recorder's reads to this many MB/s, as recorders on USB 2.0 deliver (30 to 40 "
        "a bay); default: as fast as this machine reads the simulated volumes",
    )
    demo.add_argument("--workdir", help="keep everything here (default: a temporary directory)")
    demo.add_argument("--json", action="store_true", help="last line: one JSON summary object")
    demo.add_argument(
        "--no-central", action="store_true", help="offload only: no embedded central, no uploads"
    )
    demo.add_argument(
        "--central-process", action="store_true",
        help="run the central as deployed, `edge central run` in a process of its own (mutual TLS), instead "
        "of embedded in the demo's process; the JSON summary then has station_cpu_s and central_cpu_s apart",
    )
    demo.add_argument(
        "--keep-running", action="store_true",
        help="after the journey keep the station, its API and dock screen (and the central) up until Ctrl-C",
    )
    demo.add_argument(
        "--transport", choices=["http", "mqtt"], default="http",
        help="how the station reaches the central: http (tus over HTTPS) or mqtt (through a broker: a "
        "local Mosquitto with the shipped agency configuration unless --broker names one)",
    )
    demo.add_argument(
        "--broker", metavar="URL", type=_mqtts_url,
        help="with --transport mqtt: mqtts://host:port of a broker that trusts the demo central's CA",
    )
    demo.add_argument(
        "--source", choices=["usb", "gb28181"], default="usb",
        help="usb: recorders docked in bays; gb28181: 4G recorders that register over GB/T 28181 and have "
        "their recordings downloaded (--recorders devices, --files recordings each)",
    )
    demo.add_argument(
        "--room", action="store_true",
        help="an interview-room session: a simulated GB/T 28181 IPC and an ffmpeg test source record for "
        "--seconds, then stop; reports segments, sealed, gaps, max_seal_latency_s and each item's receipt",
    )
    demo.add_argument(
        "--shift", action="store_true",
        help="a shift of issue and return (领用/归还): three officers check recorders out with cards at the "
        "simulated reader, record, check them in; reports each item's assignment status and holder",
    )
    demo.add_argument("--seconds", type=float, default=30.0, help="with --room: how long the session records")
    demo.add_argument("--segment-seconds", type=float, default=5.0, help="with --room: segment length")
    demo.add_argument(
        "--gb-fault", action="append", default=[], metavar="NAME[=VALUE]",
        help="a fault of the simulated GB/T 28181 devices (python -m simulators gb28181 --help): stall=3",
    )
    demo.set_defaults(func=cmd_demo)

    add_status_parser(sub)
    add_central_parser(sub)
    add_uplink_parser(sub)
    add_witness_parser(sub)
    add_gb28181_parser(sub)
    add_room_parser(sub)
    add_officers_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The demo prints its own progress; its log shows only warnings unless asked.
    quiet = args.command in ("demo", "verify", "check-config", "tag", "keys", "uplink", "witness", "status",
                         "gb28181", "room", "officers")
    _setup_logging(args.verbose, quiet=quiet, log_format=args.log_format)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
