"""``edge central account|grant|station-unit|sensitive ...``: the console's administration commands.

They run as the central's administrator on the central's host (they open ``index.db`` directly, single
transactions beside a running receiver, like ``enroll`` and ``revoke``), and every change is recorded with
the administrator's login name (``by``) and, where it matters, a reason. Passwords are read from a prompt
without echo (twice), or from standard input with ``--password-stdin`` (one line), never from the command
line, where ``ps`` and shell history would show them. A TOTP secret is shown once, at enrolment, as an
``otpauth://`` URI for the authenticator app; nothing else is ever printed of it. ``enrol-totp`` and
``remove-totp`` take a new random enrolment id for the account (:mod:`edge.central.console.enrolments`),
so that any other sealed secret of the account put back into ``index.db`` is refused.

Whatever answers a compromised account ends its console sessions at once (sessions outlive a restart of
the central): ``reset-password``, ``enrol-totp``, ``remove-totp``, ``disable``, ``grant --revoke``, and
``sign-out`` alone, which only ends them.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable
from pathlib import Path

from edge.central.console.credentials import (
    PasswordPolicyError,
    check_password_policy,
    hash_password,
    new_totp_secret,
    totp_uri,
)
from edge.central.console.enrolments import enrol_totp, remove_totp
from edge.central.console.secret_key import prepare_console_key
from edge.central.index import CentralIndexError, Role
from edge.central.storage import CentralDatabase

__all__ = ["add_console_admin_parsers"]

Opener = Callable[[argparse.Namespace], "CentralDatabase | int"]
# Where the store's console key is (identity/console.key of the configured store).
KeyPath = Callable[[argparse.Namespace], Path]


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def _admin() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown-admin"


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        line = sys.stdin.readline()
        return check_password_policy(line.rstrip("\r\n"))
    first = getpass.getpass(f"new password for {args.name}: ")
    check_password_policy(first)
    if getpass.getpass("again: ") != first:
        raise PasswordPolicyError("the two passwords differ")
    return first


def _run(args: argparse.Namespace, open_database: Opener, action: Callable[[CentralDatabase], str]) -> int:
    database = open_database(args)
    if isinstance(database, int):
        return database
    try:
        message = action(database)
    except (CentralIndexError, PasswordPolicyError, ValueError) as exc:
        _say(f"error: {args.central_command} {getattr(args, 'name', '')}: {exc}".replace("  ", " "))
        return 1
    finally:
        database.close()
    _say(message)
    return 0


def _account(args: argparse.Namespace, open_database: Opener, key_path: KeyPath) -> int:
    by = _admin()
    name = args.name
    command = args.account_command

    def act(database: CentralDatabase) -> str:
        console = database.console
        if command == "add":
            console.create_account(name, hash_password(_read_password(args)), by=by)
            return (f"account {name} created; it signs in once granted a role (`edge central grant {name} "
                    "--role ...`); `edge central account enrol-totp` adds a second factor")
        if command == "reset-password":
            console.set_password(name, hash_password(_read_password(args)), by=by)
            return (f"account {name}: password reset (and any lockout cleared); "
                    f"{console.end_sessions_of(name)} console session(s) ended")
        if command in ("disable", "enable"):
            reason = args.reason.strip()
            if not reason:
                raise ValueError("--reason must say why (it is recorded)")
            console.set_account_active(name, command == "enable", by=by, reason=reason)
            if command == "enable":
                return f"account {name} enabled"
            ended = console.end_sessions_of(name)
            return f"account {name} disabled; {ended} console session(s) ended"
        if command == "enrol-totp":
            if console.account(name) is None:
                raise CentralIndexError(f"there is no account {name}")
            path = key_path(args)
            key = prepare_console_key(path, console, by=by)
            if key is None:
                raise CentralIndexError(f"the console key {path} is missing or unusable (see the error "
                                        "above); a TOTP secret is only stored sealed with it")
            secret = new_totp_secret()
            number = enrol_totp(console, key, name, secret, by=by)
            # The one time the secret is shown: for the account holder's authenticator app.
            print(totp_uri(name, secret))
            ended = console.end_sessions_of(name)
            return (f"account {name}: TOTP enrolled (enrolment {number}: every other secret of it is refused "
                    f"from now on); {ended} console session(s) ended; give the URI above "
                    f"(a QR code of it) to {name} only, then clear this terminal: sign-in now asks for the "
                    "6-digit code")
        if command == "remove-totp":
            if console.account(name) is None:
                raise CentralIndexError(f"there is no account {name}")
            path = key_path(args)
            if prepare_console_key(path, console, by=by) is None:
                raise CentralIndexError(f"the console key {path} is missing or unusable (see the error "
                                        "above); the removal is recorded beside it")
            remove_totp(console, path, name, by=by)
            return (f"account {name}: TOTP removed; {console.end_sessions_of(name)} console session(s) "
                    "ended; sign-in asks for the password only")
        if command == "sign-out":
            # A stolen cookie: end every session of NAME (an account or a certificate reader) now.
            return f"{name}: {console.end_sessions_of(name)} console session(s) ended"
        raise AssertionError(command)

    return _run(args, open_database, act)


def _grant(args: argparse.Namespace, open_database: Opener) -> int:
    by = _admin()

    def act(database: CentralDatabase) -> str:
        if args.revoke:
            database.console.revoke_grant(args.name, by=by, reason=args.reason)
            ended = database.console.end_sessions_of(args.name)
            return (f"{args.name} has no role any more: every read by it is refused; {ended} console "
                    "session(s) ended")
        grant = database.console.grant(args.name, Role(args.role), args.unit, by=by, reason=args.reason)
        units = " ".join(sorted(grant.units)) or "(all units)"
        return f"{grant.name}: role {grant.role}, units {units}; recorded by {by}"

    return _run(args, open_database, act)


def _station_unit(args: argparse.Namespace, open_database: Opener) -> int:
    by = _admin()

    def act(database: CentralDatabase) -> str:
        database.console.assign_station_unit(args.station, args.unit, by=by, reason=args.reason)
        return (f"station {args.station} belongs to unit {args.unit}: items it sends from now on are that "
                "unit's (items already accepted keep their unit)")

    return _run(args, open_database, act)


def _sensitive(args: argparse.Namespace, open_database: Opener) -> int:
    by = _admin()

    def act(database: CentralDatabase) -> str:
        if args.unmark:
            database.console.unmark_sensitive(args.item, by=by, reason=args.reason, remote=None)
            return f"item {args.item} is no longer sensitive; recorded by {by}"
        database.console.mark_sensitive(args.item, args.reader, by=by, reason=args.reason, remote=None)
        return f"item {args.item} is sensitive: only {', '.join(sorted(set(args.reader)))} may see it"

    return _run(args, open_database, act)


def add_console_admin_parsers(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    config_option: Callable[[argparse.ArgumentParser], None],
    open_database: Opener,
    key_path: KeyPath,
) -> None:
    """Add the console's administration commands under ``edge central``."""
    account = commands.add_parser("account", help="console sign-in accounts: add, reset-password, disable, "
                                                  "enable, enrol-totp, remove-totp, sign-out")
    verbs = account.add_subparsers(dest="account_command", metavar="ACTION", required=True)
    for verb, helptext in (
        ("add", "create an account (password from a prompt, or --password-stdin)"),
        ("reset-password", "set a new password and clear a lockout"),
        ("disable", "refuse the account's sign-ins and end its sessions"),
        ("enable", "allow a disabled account again"),
        ("enrol-totp", "add a TOTP second factor; prints its otpauth:// URI once"),
        ("remove-totp", "remove the TOTP second factor"),
        ("sign-out", "end every console session of the reader now (a stolen cookie)"),
    ):
        parser = verbs.add_parser(verb, help=helptext)
        parser.add_argument("name", metavar="NAME", help="the account (reader) name the access log shows")
        config_option(parser)
        if verb in ("add", "reset-password"):
            parser.add_argument("--password-stdin", action="store_true",
                                help="read the password from the first line of standard input")
        if verb in ("disable", "enable"):
            parser.add_argument("--reason", required=True, help="why (recorded)")
        parser.set_defaults(func=lambda a: _account(a, open_database, key_path))

    grant = commands.add_parser("grant", help="give a reader (certificate or account) a role and units")
    grant.add_argument("name", metavar="NAME")
    config_option(grant)
    grant.add_argument("--role", choices=[str(r) for r in Role], default=None,
                       help="reader: the items of its units; supervisor: every unit")
    grant.add_argument("--unit", action="append", default=[], metavar="CODE",
                       help="a unit (单位) code the reader sees (repeat for several)")
    grant.add_argument("--revoke", action="store_true", help="withdraw the grant instead")
    grant.add_argument("--reason", required=True, help="why (recorded)")
    grant.set_defaults(func=lambda a: _grant_checked(a, open_database))

    unit = commands.add_parser("station-unit", help="assign a station to a unit (its new items belong to it)")
    unit.add_argument("station", metavar="STATION_ID")
    unit.add_argument("unit", metavar="UNIT_CODE")
    config_option(unit)
    unit.add_argument("--reason", required=True, help="why (recorded)")
    unit.set_defaults(func=lambda a: _station_unit(a, open_database))

    sensitive = commands.add_parser("sensitive", help="mark an item sensitive (only the named readers see "
                                                      "it) "
                                                      "or --unmark it")
    sensitive.add_argument("item", metavar="ITEM")
    config_option(sensitive)
    sensitive.add_argument("--reader", action="append", default=[], metavar="NAME",
                           help="a reader who may still see it (repeat for several)")
    sensitive.add_argument("--unmark", action="store_true", help="remove the marking")
    sensitive.add_argument("--reason", required=True, help="why (recorded)")
    sensitive.set_defaults(func=lambda a: _sensitive(a, open_database))


def _grant_checked(args: argparse.Namespace, open_database: Opener) -> int:
    if not args.revoke and args.role is None:
        _say("error: grant needs --role reader|supervisor (or --revoke)")
        return 2
    return _grant(args, open_database)
