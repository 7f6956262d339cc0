"""`edge central ...`: run the central receiver and manage its identity (CA, stations, auditors).

Every command says on stderr what it did and where the files are. Exit status (edge.runtime.exit_codes):
0 done; 78 (EX_CONFIG) the configuration, or the identity files it points at, are unusable; 75
(EX_TEMPFAIL) another process holds the central store, or the MQTT receive queue cannot be used now; 2 the
command line is wrong; 1 anything else went wrong. No command prints key material: bundles are written to
files with mode 0600 for the private key.

The central store is locked (`edge.durable.lock`) by the process serving it and by `init`; one
receiver per store (with the embedded SQLite index and local files). `enroll`, `revoke` and their
reader counterparts take no lock: they are single SQLite transactions on the index, safe beside a
running receiver, which reads station and auditor records per request; so a revocation takes effect
at once, with no downtime.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from edge.central.backends import (
    DatabaseNotSetUp,
    DatabaseUnavailable,
    database_exists,
    database_where,
    open_central_database,
    open_central_index,
)
from edge.central.config import CentralConfig, ConfigError, PostgresIndexConfig, load_central_config
from edge.central.console.admin import add_console_admin_parsers
from edge.central.console.secret_key import prepare_console_key
from edge.central.identity import enroll_reader, enroll_station, init_central, lock_central_store
from edge.central.index import CentralIndexError
from edge.central.mqtt_command import add_command_parser
from edge.central.objects import ObjectStoreError, ObjectStoreUnavailable
from edge.central.officers_cli import add_officers_parser
from edge.central.receive_queue import ReceiveQueueError
from edge.central.revocation import CrlWritten, import_issued, kept_sha256s, update_crl
from edge.central.sqlite import SqliteDatabase
from edge.central.storage import CentralDatabase, Index
from edge.durable.lock import StoreBusy
from edge.pki.bundle import (
    BUNDLE_CA_CERT,
    BUNDLE_CENTRAL_SIGNING_PUB,
    BUNDLE_CLIENT_CERT,
    BUNDLE_CLIENT_KEY,
    BUNDLE_ENROLLMENT,
    Enrollment,
    discard_bundle,
)
from edge.pki.names import IdentityError
from edge.runtime.exit_codes import ExitCode

__all__ = [
    "add_central_parser",
    "cmd_central_broker_cert",
    "cmd_central_check_config",
    "cmd_central_crl",
    "cmd_central_enroll",
    "cmd_central_enroll_reader",
    "cmd_central_init",
    "cmd_central_keep_issued",
    "cmd_central_migrate",
    "cmd_central_mqtt_identity",
    "cmd_central_mqtt_worker",
    "cmd_central_revoke",
    "cmd_central_revoke_reader",
    "cmd_central_run",
    "describe_central_config",
]

EXIT_OK = ExitCode.OK
EXIT_FAILED = ExitCode.FAILED
EXIT_CONFIG = ExitCode.CONFIG
EXIT_STORE_BUSY = ExitCode.STORE_BUSY


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def _load(args: argparse.Namespace) -> CentralConfig | ExitCode:
    """The configuration named by `--config` (after `central` or after the sub-command), or the exit
    status after saying why not: USAGE without `--config`, CONFIG for a file that is not a usable
    central configuration (a station's file is named as such, with the command that takes it)."""
    path = getattr(args, "config", None) or getattr(args, "central_config", None)
    if not path:
        _say("error: --config FILE is required (the central's TOML configuration)")
        return ExitCode.USAGE
    try:
        return load_central_config(Path(path))
    except ConfigError as exc:
        _say(f"error: {exc}")
        return EXIT_CONFIG


def cmd_central_run(args: argparse.Namespace) -> int:
    config = _load(args)
    if isinstance(config, ExitCode):
        return config
    # Imported here: the server pulls in aiohttp and the whole receiver, which the other commands skip.
    from edge.central.service import run_central

    try:
        result: int = run_central(config)
    except (IdentityError, ConfigError) as exc:
        # Missing or unsafe keys and certificates: restarting cannot fix them, an operator must.
        _say(f"error: {exc}")
        return EXIT_CONFIG
    except StoreBusy as exc:
        _say(f"error: {exc}")
        return EXIT_STORE_BUSY
    except ObjectStoreUnavailable as exc:
        # The bucket cannot be asked whether it has Object Lock: 75 (EX_TEMPFAIL), systemd starts us again.
        _say(f"error: {exc}: exiting 75 for systemd to start the central again")
        return EXIT_STORE_BUSY
    except DatabaseUnavailable as exc:
        # The database server is down or refuses the central now: 75 (EX_TEMPFAIL), systemd tries again.
        _say(f"error: {exc}: exiting 75 for systemd to start the central again")
        return EXIT_STORE_BUSY
    except ReceiveQueueError as exc:
        # The MQTT receive queue cannot be used now (locked, I/O error, disk full): the file is left as it
        # is, with its messages; 75 (EX_TEMPFAIL) and systemd starts the central again.
        _say(f"error: {exc}: exiting 75 for systemd to start the central again")
        return EXIT_STORE_BUSY
    return result


def cmd_central_mqtt_worker(args: argparse.Namespace) -> int:
    config = _load(args)
    if isinstance(config, ExitCode):
        return config
    if config.mqtt is None:
        _say("error: the configuration has no [mqtt] section: there is nothing for an MQTT worker to do")
        return EXIT_CONFIG
    # Imported here: only this command needs the MQTT client.
    from edge.central.mqtt_receiver import CentralNotStarted, run_mqtt_worker
    from edge.central.worker_wait import (
        transfers_dir_may_appear,
        transfers_dir_unusable,
        wait_for_the_central,
        wait_for_the_transfers_dir,
    )

    secret = config.layout.mqtt_client_secret
    transfers_dir = config.mqtt_transfers_dir
    try:
        while True:
            if secret.exists() and (unusable := transfers_dir_unusable(transfers_dir)) is not None:
                if transfers_dir_may_appear(transfers_dir):
                    # Its sandbox cannot make it: wait for the central to (edge.central.worker_wait).
                    _say(f"warning: {unusable}: waiting for edge-central to make it")
                    if not wait_for_the_transfers_dir(transfers_dir, unusable):
                        return EXIT_OK
                    unusable = transfers_dir_unusable(transfers_dir)
                if unusable is not None:
                    _say(f"error: {unusable}: exiting 75 for systemd to start the worker again (with "
                         "the directory in its sandbox)")
                    return ExitCode.STORE_BUSY
            try:
                return run_mqtt_worker(config, client_id=args.client_id)
            except ReceiveQueueError as exc:
                # Its receive queue cannot be used now (another worker under this name, locked, disk
                # full): the file is left as it is; 75 (EX_TEMPFAIL), systemd starts the worker again.
                _say(f"error: {exc}: exiting 75 for systemd to start the worker again")
                return ExitCode.STORE_BUSY
            except CentralNotStarted as exc:
                if secret.exists():
                    # Not the missing secret after all: temporary (75, EX_TEMPFAIL), systemd restarts it.
                    _say(f"error: {exc}")
                    return ExitCode.STORE_BUSY
            # Waits (rather than exit and be restarted until systemd's start limit gives up on it) until
            # the central has run once: edge.central.worker_wait.
            if not wait_for_the_central(secret):
                return EXIT_OK
            # The central has started: the loop checks transfers_dir again (its sandbox was set up before the
            # central made the directory: read-only to it, exit 75 once, one restart sets it up anew).
    except (IdentityError, ValueError) as exc:
        _say(f"error: {exc}")
        return EXIT_CONFIG


def describe_central_config(config: CentralConfig) -> str:
    """One line on what a valid central configuration sets up (for `check-config`)."""
    mode = "PLAIN HTTP (development only)" if config.server.insecure_plain_http else "HTTPS with mutual TLS"
    return (
        f"central {config.central.id}, store {config.central.store_dir}, {mode} on "
        f"{config.server.listen}:{config.server.port}"
    )


def cmd_central_check_config(args: argparse.Namespace) -> int:
    config = _load(args)
    if isinstance(config, ExitCode):
        return config
    print(f"{args.config or args.central_config}: OK ({describe_central_config(config)})")
    return EXIT_OK


def cmd_central_migrate_schema(args: argparse.Namespace) -> int:
    """Apply the PostgreSQL schema's migrations as the owner (``central.index.owner_url``) and renew the
    runtime group's grants, then check the runtime role (``url``) may serve it: the one step after an
    upgrade that needs the owner's password, so the receivers can run with ``url`` alone."""
    config = _load(args)
    if isinstance(config, ExitCode):
        return config
    index = config.central.index
    if not isinstance(index, PostgresIndexConfig) or index.owner_url is None:
        _say("error: central migrate-schema needs [central] index = {type = \"postgresql\", ..., owner_url = "
             "...}: the owner's URL (README: PostgreSQL roles for the agency DBA)")
        return EXIT_CONFIG
    try:
        open_central_database(config).close()
    except DatabaseNotSetUp as exc:
        _say(f"error: central migrate-schema: {exc}")
        return EXIT_CONFIG
    except DatabaseUnavailable as exc:
        _say(f"error: central migrate-schema: {exc}")
        return EXIT_FAILED
    _say(f"schema of {index.url} is current, applied as the owner; the runtime role may serve it")
    return EXIT_OK


def cmd_central_init(args: argparse.Namespace) -> int:
    config = _load(args)
    if isinstance(config, ExitCode):
        return config
    try:
        with lock_central_store(config, purpose="edge central init"):
            identity = init_central(config)
            index_existed = database_exists(config)
            key_existed = config.layout.console_key.exists()
            database = open_central_database(config)
            try:
                console_key = prepare_console_key(config.layout.console_key, database.console,
                                                  by="edge central init")
            finally:
                database.close()
    except StoreBusy as exc:
        _say(f"error: central init: {exc}")
        return EXIT_STORE_BUSY
    except (IdentityError, CentralIndexError, OSError) as exc:
        _say(f"error: central init: {exc}")
        return EXIT_FAILED
    for line in identity.created:
        _say(f"created {line}")
    for line in identity.kept:
        _say(f"exists, kept {line}")
    _say(f"{'exists, kept' if index_existed else 'created'} index: {database_where(config)}")
    if console_key is None:
        _say(f"error: central init: the console key {config.layout.console_key} is missing or unusable "
             "while the index holds sealed TOTP secrets; restore it from backup (mode 0600)")
        return EXIT_FAILED
    _say(f"{'exists, kept' if key_existed else 'created'} console key (seals TOTP secrets): "
         f"{config.layout.console_key}")
    if not _renew_crl(config, "the central's identity"):
        return EXIT_FAILED
    _say(
        f"central {config.central.id} is initialised in {config.central.store_dir}; CA fingerprint "
        f"(sha256) {identity.ca_sha256}. Next: `edge central enroll STATION_ID --config FILE "
        f"--signing-key STATION_KEY.pub --out DIR` for each station"
    )
    return EXIT_OK


def _record(
    config: CentralConfig, enrollment: Enrollment, write: Callable[[Index], None]
) -> str | None:
    """Record an issued certificate in the index; on failure remove the bundle and return why."""
    try:
        index = open_central_index(config)
        try:
            write(index)
        finally:
            index.close()
    except (CentralIndexError, OSError) as exc:
        # A bundle whose certificate the index does not know would only be refused later: remove it now.
        discard_bundle(enrollment.bundle_dir)
        return f"{exc} (the bundle in {enrollment.bundle_dir} was removed)"
    return None


def _describe_bundle(enrollment: Enrollment) -> str:
    files = ", ".join(
        [
            BUNDLE_CLIENT_CERT,
            f"{BUNDLE_CLIENT_KEY} (secret, mode 0600)",
            BUNDLE_CA_CERT,
            BUNDLE_CENTRAL_SIGNING_PUB,
            BUNDLE_ENROLLMENT,
        ]
    )
    return f"bundle in {enrollment.bundle_dir}: {files}"


def _broker_name_clash(config: CentralConfig, name: str, other: str) -> str | None:
    """Why `name` cannot be enrolled when an `other` ("station" or "auditor") was ever enrolled under it:
    the MQTT broker takes a certificate's CN as the user name, so an auditor named like a station would
    be that station on the broker (revoked or not: the broker does not read revocations)."""
    if not database_exists(config):
        return None  # no enrollments yet (or no `init`: enrolling says so)
    try:
        index = open_central_index(config)
        try:
            record = index.station(name) if other == "station" else index.reader(name)
        finally:
            index.close()
    except (CentralIndexError, OSError) as exc:
        return f"cannot read the enrollments: {exc}"
    if record is None:
        return None
    return (
        f"{other} {name!r} is enrolled under that name ({'active' if record.active else 'revoked'}): on the "
        f"MQTT broker, which takes a certificate's CN as the user name, both would be the same user. "
        f"Choose another name"
    )


def _update_crl(config: CentralConfig, copy_to: Path | None = None) -> CrlWritten:
    """The CA's revocation list rewritten from the store's index (none yet: an empty list)."""
    if not database_exists(config):
        return update_crl(config, None, copy_to=copy_to)
    index = open_central_index(config)
    try:
        return update_crl(config, index, copy_to=copy_to)
    finally:
        index.close()


def _renew_crl(config: CentralConfig, what: str) -> bool:
    """Rewrite the CA's revocation list after `what` changed the index; False (said why) if it failed."""
    try:
        written = _update_crl(config)
    except (IdentityError, CentralIndexError, OSError) as exc:
        _say(f"error: {what} is recorded, but the revocation list for the broker was not rewritten: {exc}. "
             "Run `edge central crl --config FILE --out BROKER_CRL` once the cause is fixed")
        return False
    _say(f"revocation list {written.path}: {written.revoked} certificate(s), valid until "
         f"{written.next_update:%Y-%m-%d}; copy it to the broker: `edge central crl --config FILE "
         "--out BROKER_CRL`, then reload the broker (README \"Broker setup\")")
    return True


def cmd_central_enroll(args: argparse.Namespace) -> int:
    config = _load(args)
    if isinstance(config, ExitCode):
        return config
    clash = _broker_name_clash(config, args.station_id, "auditor")
    if clash is not None:
        _say(f"error: enroll {args.station_id}: {clash}")
        return EXIT_FAILED
    try:
        enrollment = enroll_station(
            config, args.station_id, signing_key_pub=Path(args.signing_key), out_dir=Path(args.out)
        )
    except IdentityError as exc:
        _say(f"error: enroll {args.station_id}: {exc}")
        return EXIT_FAILED
    key_b64 = enrollment.signing_public_key_b64
    assert key_b64 is not None  # always set for stations
    problem = _record(
        config,
        enrollment,
        lambda index: index.enroll_station(enrollment.name, key_b64, enrollment.cert_sha256),
    )
    if problem is not None:
        _say(f"error: enroll {args.station_id}: recording it in the index failed: {problem}")
        return EXIT_FAILED
    _say(
        f"enrolled station {enrollment.name}: client certificate sha256 {enrollment.cert_sha256}, "
        f"valid until {enrollment.not_after:%Y-%m-%d}; ledger key recorded in {database_where(config)}"
    )
    _say(_describe_bundle(enrollment))
    _say(
        "copy the bundle to the station (only the station service user may read client.key); a new "
        "enrollment of the same station replaces this certificate"
    )
    return EXIT_OK if _renew_crl(config, f"the enrollment of {enrollment.name}") else EXIT_FAILED


def cmd_central_enroll_reader(args: argparse.Namespace) -> int:
    config = _load(args)
    if isinstance(config, ExitCode):
        return config
    clash = _broker_name_clash(config, args.name, "station")
    if clash is not None:
        _say(f"error: enroll-reader {args.name}: {clash}")
        return EXIT_FAILED
    try:
        enrollment = enroll_reader(config, args.name, out_dir=Path(args.out))
    except IdentityError as exc:
        _say(f"error: enroll-reader {args.name}: {exc}")
        return EXIT_FAILED
    problem = _record(
        config, enrollment, lambda index: index.enroll_reader(enrollment.name, enrollment.cert_sha256)
    )
    if problem is not None:
        _say(f"error: enroll-reader {args.name}: recording it in the index failed: {problem}")
        return EXIT_FAILED
    _say(
        f"enrolled auditor {enrollment.name}: client certificate sha256 {enrollment.cert_sha256}, "
        f"valid until {enrollment.not_after:%Y-%m-%d}; every read with it is logged under this name"
    )
    _say(f"it reads nothing until granted a role: `edge central grant {enrollment.name} --role reader "
         "--unit UNIT_CODE --reason ...` (or --role supervisor)")
    _say(_describe_bundle(enrollment))
    return EXIT_OK if _renew_crl(config, f"the enrollment of {enrollment.name}") else EXIT_FAILED


def _revoke(args: argparse.Namespace, kind: str, revoke: Callable[[Index, str, str], None]) -> int:
    config = _load(args)
    if isinstance(config, ExitCode):
        return config
    reason = args.reason.strip()
    if not reason:
        _say("error: --reason must say why (it is kept in the index with the revocation)")
        return ExitCode.USAGE
    try:
        index = open_central_index(config)
        try:
            revoke(index, args.name, reason)
            record = index.station(args.name) if kind == "station" else index.reader(args.name)
        finally:
            index.close()
    except (CentralIndexError, OSError) as exc:
        _say(f"error: revoke {kind} {args.name}: {exc}")
        return EXIT_FAILED
    enroll = f"edge central enroll{'' if kind == 'station' else '-reader'}"
    kept = record is not None and record.cert_sha256 in kept_sha256s(config.layout)
    if kept:
        _say(f"revoked {kind} {args.name} in {database_where(config)}: {reason}. Its certificate is refused "
             f"from now on (by the broker once it has the new revocation list); `{enroll}` issues a new one")
    else:
        days = config.identity.station_cert_days if kind == "station" else config.identity.reader_cert_days
        enrolled = record.enrolled_utc if record is not None else "?"
        _say(f"revoked {kind} {args.name} in {database_where(config)}: {reason}. The central refuses it from "
             f"now on, but its enrolled certificate (sha256 {record.cert_sha256 if record else '?'}) has no "
             f"copy in {config.layout.issued_dir} (enrolled by an earlier release) and cannot be listed in "
             f"the revocation list: the broker will keep accepting it until it expires (enrolled "
             f"{enrolled}, valid {days} days by the current [identity] setting). Import it: `edge central "
             f"keep-issued --config FILE --cert ITS_BUNDLE/client.crt`, then renew the broker's list")
    return EXIT_OK if _renew_crl(config, f"the revocation of {args.name}") else EXIT_FAILED


def cmd_central_keep_issued(args: argparse.Namespace) -> int:
    """Keep a certificate issued before the central kept copies, so the revocation list can name it."""
    config = _load(args)
    if isinstance(config, ExitCode):
        return config
    try:
        index = open_central_index(config) if database_exists(config) else None
        try:
            what = import_issued(config, index, Path(args.cert))
        finally:
            if index is not None:
                index.close()
    except (IdentityError, CentralIndexError, OSError) as exc:
        _say(f"error: keep-issued {args.cert}: {exc}")
        return EXIT_FAILED
    _say(f"kept {what} in {config.layout.issued_dir}")
    return EXIT_OK if _renew_crl(config, f"keeping {args.cert}") else EXIT_FAILED


def cmd_central_crl(args: argparse.Namespace) -> int:
    """Rewrite the revocation list (a fresh next update) and copy it to --out for the broker."""
    config = _load(args)
    if isinstance(config, ExitCode):
        return config
    out = Path(args.out) if args.out else None
    try:
        written = _update_crl(config, copy_to=out)
    except (IdentityError, CentralIndexError, OSError) as exc:
        _say(f"error: crl: {exc}")
        return EXIT_FAILED
    _say(f"revocation list {written.path}: {written.revoked} certificate(s), valid until "
         f"{written.next_update:%Y-%m-%d %H:%M}Z" + (f"; copied to {out}" if out else ""))
    _say("the broker reads it at start and on SIGHUP (`systemctl reload mosquitto`); a connection open "
         "with a certificate it now names stays open until it ends: restart the broker to cut it")
    return EXIT_OK


def cmd_central_revoke(args: argparse.Namespace) -> int:
    return _revoke(args, "station", lambda index, name, reason: index.revoke_station(name, reason))


def cmd_central_revoke_reader(args: argparse.Namespace) -> int:
    return _revoke(args, "auditor", lambda index, name, reason: index.revoke_reader(name, reason))


def cmd_central_mqtt_identity(args: argparse.Namespace) -> int:
    config = _load(args)
    if isinstance(config, ExitCode):
        return config
    from edge.central.broker_identity import issue_mqtt_identity

    try:
        # The enrollments, to refuse an identity whose name a station or auditor already holds.
        index = open_central_index(config) if database_exists(config) else None
        try:
            issued = issue_mqtt_identity(config, index=index, out_dir=Path(args.out), days=args.days)
        finally:
            if index is not None:
                index.close()
    except (IdentityError, CentralIndexError, OSError) as exc:
        _say(f"error: mqtt-identity: {exc}")
        return EXIT_FAILED
    for warning in issued.warnings:
        _say(f"warning: {warning}")
    _say(
        f"issued the central's MQTT client certificate {issued.subject} (sha256 {issued.cert_sha256}, valid "
        f"until {issued.not_after:%Y-%m-%d}) into {issued.out_dir}: {issued.cert_file.name}, "
        f"{issued.key_file.name} (secret, mode 0600), {issued.ca_file.name}"
    )
    _say(
        f"the central's [mqtt] section: client_bundle_dir = \"{issued.out_dir}\" (and ca_file = "
        f"\"{issued.ca_file}\" when the broker's certificate is from `edge central broker-cert`); the broker "
        f"must trust the central's CA and give the user {config.central.id} every station's topics "
        "(config/mosquitto/acl)"
    )
    # The list now names the identities this one replaces (edge.central.revocation).
    return EXIT_OK if _renew_crl(config, "the central's new MQTT identity") else EXIT_FAILED


def cmd_central_broker_cert(args: argparse.Namespace) -> int:
    config = _load(args)
    if isinstance(config, ExitCode):
        return config
    from edge.central.broker_identity import BROKER_CRL_FILE, issue_broker_certificate

    try:
        issued = issue_broker_certificate(
            config, names=list(args.name), out_dir=Path(args.out), days=args.days
        )
        # The broker refuses every client without a CRL when its configuration names one (crlfile): the
        # current list goes beside the certificate; `edge central crl --out` renews it there.
        crl = _update_crl(config, copy_to=issued.out_dir / BROKER_CRL_FILE)
    except (IdentityError, CentralIndexError) as exc:
        _say(f"error: broker-cert: {exc}")
        return EXIT_FAILED
    _say(
        f"issued the MQTT broker's server certificate for {', '.join(args.name)} "
        f"(sha256 {issued.cert_sha256}, valid until {issued.not_after:%Y-%m-%d}) into {issued.out_dir}"
    )
    _say(
        f"mosquitto.conf: certfile {issued.cert_file}, keyfile {issued.key_file} (secret, mode 0600: "
        f"readable by the broker's user only), cafile {issued.ca_file}, crlfile "
        f"{issued.out_dir / BROKER_CRL_FILE} (valid until {crl.next_update:%Y-%m-%d}: renew it with "
        f"`edge central crl --config FILE --out {issued.out_dir / BROKER_CRL_FILE}` and reload the broker)"
    )
    return EXIT_OK


def cmd_central_migrate(args: argparse.Namespace) -> int:
    """Move the embedded store (--config) into the PostgreSQL database and S3 bucket of --to, verified."""
    source = _load(args)
    if isinstance(source, ExitCode):
        return source
    try:
        target = load_central_config(Path(args.to))
    except ConfigError as exc:
        _say(f"error: --to: {exc}")
        return EXIT_CONFIG
    # Imported here: the migration pulls in boto3 and psycopg, which the other commands skip.
    from edge.central.migration import MigrationConfigError, MigrationFailed, migrate_central

    try:
        summary = migrate_central(source, target, say=_say)
    except MigrationConfigError as exc:
        _say(f"error: migrate: {exc}")
        return EXIT_CONFIG
    except StoreBusy as exc:
        _say(f"error: migrate: {exc}")
        return EXIT_STORE_BUSY
    except (DatabaseUnavailable, ObjectStoreError, ConfigError) as exc:
        _say(f"error: migrate: {exc}: nothing is done that a rerun will not finish")
        return EXIT_FAILED
    except MigrationFailed as exc:
        for line in exc.summary.lines():
            print(line)
        _say(f"error: migrate: {exc}: the migration is NOT done; the source store is unchanged")
        return EXIT_FAILED
    for line in summary.lines():
        print(line)
    _say(f"migrated: central {target.central.id} can run on the target now: `edge central run --config "
         f"{args.to}` (the embedded index.db and objects/ are left as they were: keep them until the new "
         "central has run)")
    return EXIT_OK


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help="central TOML file (e.g. /etc/evidence-edge/central.toml)"
    )


def add_central_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `edge central ...` to the `edge` command line (called from edge/cli.py)."""
    central = subparsers.add_parser(
        "central",
        help="the central receiver: run it (default), init its CA, enroll stations and auditors",
        description="Without a sub-command: run the central receiver (same as `edge central run`).",
    )
    # Its own dest: a sub-command's --config default must not overwrite `edge central --config X`.
    central.add_argument("--config", dest="central_config", metavar="FILE", help="central TOML file")
    central.set_defaults(func=cmd_central_run, config=None)
    commands = central.add_subparsers(dest="central_command", metavar="COMMAND")

    run = commands.add_parser("run", help="run the central receiver until SIGTERM/SIGINT")
    _config_option(run)
    run.set_defaults(func=cmd_central_run)

    worker = commands.add_parser(
        "mqtt-worker",
        help="one more MQTT receiver process for evidence content ([mqtt]), beside `edge central run`",
    )
    _config_option(worker)
    worker.add_argument("--client-id", required=True, metavar="NAME",
                        help="this worker's name, stable and its own: its MQTT client id (its persistent "
                        "session) is the central's secret id and -w-NAME")
    worker.set_defaults(func=cmd_central_mqtt_worker)

    check = commands.add_parser("check-config", help="validate the central configuration file")
    _config_option(check)
    check.set_defaults(func=cmd_central_check_config)

    migrate_schema = commands.add_parser(
        "migrate-schema",
        help="PostgreSQL: apply the schema's migrations with the owner's URL (index.owner_url) and exit",
    )
    _config_option(migrate_schema)
    migrate_schema.set_defaults(func=cmd_central_migrate_schema)

    init = commands.add_parser(
        "init",
        help="create the CA, server certificate, signing key and index (idempotent; keeps what exists)",
    )
    _config_option(init)
    init.set_defaults(func=cmd_central_init)

    enroll = commands.add_parser("enroll", help="issue a station's client certificate and enrollment bundle")
    enroll.add_argument(
        "station_id", metavar="STATION_ID", help="the station's id (station.id in station.toml)"
    )
    _config_option(enroll)
    enroll.add_argument(
        "--signing-key",
        required=True,
        metavar="FILE",
        help="the station's ledger public key (PEM; keys/station.key.pub in the station store)",
    )
    enroll.add_argument("--out", required=True, metavar="DIR", help="new or empty directory for the bundle")
    enroll.set_defaults(func=cmd_central_enroll)

    revoke = commands.add_parser("revoke", help="revoke a station: its uploads and registrations are refused")
    revoke.add_argument("name", metavar="STATION_ID")
    _config_option(revoke)
    revoke.add_argument("--reason", required=True, help="why (kept with the revocation)")
    revoke.set_defaults(func=cmd_central_revoke)

    reader = commands.add_parser("enroll-reader", help="issue an auditor's client certificate (read side)")
    reader.add_argument("name", metavar="NAME", help="the auditor's name, as the access log will show it")
    _config_option(reader)
    reader.add_argument("--out", required=True, metavar="DIR", help="new or empty directory for the bundle")
    reader.set_defaults(func=cmd_central_enroll_reader)

    revoke_reader = commands.add_parser("revoke-reader", help="revoke an auditor's certificate")
    revoke_reader.add_argument("name", metavar="NAME")
    _config_option(revoke_reader)
    revoke_reader.add_argument("--reason", required=True, help="why (kept with the revocation)")
    revoke_reader.set_defaults(func=cmd_central_revoke_reader)

    mqtt_identity = commands.add_parser(
        "mqtt-identity",
        help="issue the central's own MQTT client certificate (CN = central id) for the agency broker",
    )
    _config_option(mqtt_identity)
    mqtt_identity.add_argument("--out", required=True, metavar="DIR", help="new or empty directory for it")
    mqtt_identity.add_argument(
        "--days", type=int, metavar="N", help="validity (default: [identity] station_cert_days)"
    )
    mqtt_identity.set_defaults(func=cmd_central_mqtt_identity)

    broker_cert = commands.add_parser(
        "broker-cert", help="issue the MQTT broker's server certificate from the central's CA"
    )
    _config_option(broker_cert)
    broker_cert.add_argument(
        "--name", required=True, action="append", metavar="HOST",
        help="a DNS name or IP address stations and the central use to reach the broker (repeatable)",
    )
    broker_cert.add_argument("--out", required=True, metavar="DIR", help="new or empty directory for it")
    broker_cert.add_argument(
        "--days", type=int, metavar="N", help="validity (default: [identity] server_cert_days)"
    )
    broker_cert.set_defaults(func=cmd_central_broker_cert)

    keep = commands.add_parser(
        "keep-issued",
        help="keep a certificate this CA issued before the central kept copies (a station's bundle's "
        "client.crt), so the revocation list can name it once replaced or revoked",
    )
    _config_option(keep)
    keep.add_argument("--cert", required=True, metavar="FILE", help="the certificate (PEM)")
    keep.set_defaults(func=cmd_central_keep_issued)
    crl = commands.add_parser(
        "crl",
        help="rewrite the revocation list (replaced and revoked certificates) and copy it for the broker",
    )
    _config_option(crl)
    crl.add_argument("--out", metavar="FILE",
                     help="also install it here (the broker's crlfile), replacing the file atomically")
    crl.set_defaults(func=cmd_central_crl)

    migrate = commands.add_parser(
        "migrate",
        help="move the embedded store (SQLite index, local objects) into PostgreSQL and an S3 bucket with "
        "Object Lock, then verify it; resumable",
    )
    _config_option(migrate)
    migrate.add_argument("--to", required=True, metavar="FILE",
                         help="the central's configuration for the target: the same id and store_dir, with "
                         "[central] index on PostgreSQL and objects in S3")
    migrate.set_defaults(func=cmd_central_migrate)

    add_console_admin_parsers(commands, _config_option, _open_database, _console_key_path)
    add_command_parser(commands)
    add_officers_parser(commands)


def _console_key_path(args: argparse.Namespace) -> Path:
    """identity/console.key of the configured store (the configuration loaded when the database was)."""
    config = _load(args)
    assert not isinstance(config, ExitCode)  # _open_database loaded it first
    return config.layout.console_key


def _open_database(args: argparse.Namespace) -> CentralDatabase | int:
    """The store's database for the console's administration commands, or the exit status after
    saying why not."""
    config = _load(args)
    if isinstance(config, ExitCode):
        return int(config)
    try:
        return open_central_database(config)
    except Exception as exc:
        if not isinstance(exc, (OSError, DatabaseUnavailable, *SqliteDatabase.errors)):
            raise
        _say(f"error: opening {database_where(config)}: {exc}")
        return int(EXIT_FAILED)
