"""The number of each console account's current TOTP enrolment, kept outside ``index.db``.

A sealed TOTP secret is bound, in its AEAD associated data, to its account and to an enrolment number
(:mod:`edge.central.console.secret_key`). Every ``enrol-totp`` and every ``remove-totp`` of an account takes
its next number, and ``identity/console-enrolments`` (beside ``console.key``, mode 0600, written like it:
a temporary file, fsynced, renamed into place, the directory fsynced) records it before ``index.db`` stores
the new secret. A secret whose number is not the recorded one is refused at sign-in, logged and recorded
(``totp_refused`` in ``account_events``), and named by `edge verify`: an older sealed secret of the same
account put back into ``index.db`` (restored from a backup, or by whoever can write the database but not
``identity/``) does not work again after a re-enrolment or a removal (review R8). Its number cannot be
changed without the key (it is in the associated data), and the record is not in ``index.db``.

The first start that keeps the record seals every secret of an older central (plain, or ``sealed-v1``
bound to the account only) as enrolment 1 and then writes the record; from then on such a secret is
refused, never sealed again (it was put back from a backup made before). A record that is missing while
``index.db`` holds numbered secrets is written again from them, with a warning: it has been lost, and a
rollback made meanwhile cannot be seen.

Writers (the administration commands, a starting central) hold an exclusive ``flock`` on ``identity/``
from reading the record until ``index.db`` has the new secret, so two enrolments at once cannot lose one
another's number. A crash between the record and the database leaves the account's old secret refused
(its number is behind): it is enrolled again. The file is small (a name and a number per account) and
read at each TOTP sign-in, so an enrolment by the command line applies at once to a running central.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from edge.central.console.secret_key import (
    SEALED_PREFIX,
    ConsoleKeyError,
    ConsoleSecretKey,
    SealedSecretError,
    is_sealed,
)
from edge.durable.files import (
    SmallFileError,
    adopt_owner,
    fsync_dir,
    read_small_file,
    remove_stale_temporaries,
    write_new_file,
)

__all__ = [
    "ENROLMENTS_FILE",
    "EnrolmentRecord",
    "StaleEnrolmentError",
    "enrol_totp",
    "enrolment_problems",
    "open_enrolled_totp",
    "prepare_totp_secrets",
    "record_path",
    "remove_totp",
]

log = logging.getLogger(__name__)

ENROLMENTS_FILE = "console-enrolments"  # in identity/, beside console.key
_FORMAT = "edge-console-enrolments v1"
_MAX_BYTES = 4 << 20  # ~100 000 accounts


class StaleEnrolmentError(SealedSecretError):
    """A sealed secret that opens, but of another enrolment than the recorded one (put back)."""


def record_path(key_path: Path) -> Path:
    return key_path.with_name(ENROLMENTS_FILE)


@dataclass(frozen=True)
class EnrolmentRecord:
    """The recorded enrolment number of each account (0: never enrolled); ``exists`` False before the
    first start that keeps the record."""

    path: Path
    exists: bool
    numbers: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> EnrolmentRecord:
        if not (path.exists() or path.is_symlink()):
            return cls(path, False)
        try:
            data = read_small_file(path, _MAX_BYTES, expected="the console's enrolment record", private=True)
            doc = json.loads(data)
        except SmallFileError as exc:
            raise ConsoleKeyError(str(exc)) from None
        except (UnicodeDecodeError, ValueError):
            raise ConsoleKeyError(f"{path}: the console's enrolment record is not JSON") from None
        accounts = doc.get("accounts") if isinstance(doc, dict) and doc.get("format") == _FORMAT else None
        if not isinstance(accounts, dict) or not all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in accounts.values()):
            raise ConsoleKeyError(f"{path}: not a console enrolment record ({_FORMAT!r} with a positive "
                                  "number per account)")
        return cls(path, True, {str(name): int(n) for name, n in accounts.items()})

    def number(self, account: str) -> int:
        return self.numbers.get(account, 0)

    def written(self, numbers: Mapping[str, int]) -> EnrolmentRecord:
        """The record with ``numbers`` (merged over this one's), written crash-safely; the new record."""
        merged = {**self.numbers, **numbers}
        data = json.dumps({"format": _FORMAT, "accounts": dict(sorted(merged.items()))}, indent=1) + "\n"
        _write_replacing(self.path, data.encode("utf-8"))
        return EnrolmentRecord(self.path, True, merged)


def _write_replacing(path: Path, data: bytes) -> None:
    try:
        remove_stale_temporaries(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        write_new_file(tmp, data, 0o600)
        try:
            adopt_owner(tmp, path.parent)  # written by a root-run command: the service must read it
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        fsync_dir(path.parent)
    except OSError as exc:
        raise ConsoleKeyError(f"{path}: cannot write the console's enrolment record: "
                              f"{exc.strerror or exc}") from None


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive lock of the record's writers (the directory itself: no lock file to leave behind)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConsoleKeyError(f"{directory}: cannot open it to record a TOTP enrolment: "
                              f"{exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


class TotpAccounts(Protocol):
    """What enrolment needs of the console store."""

    def set_totp(self, name: str, secret: str | None, *, by: str) -> None: ...
    def seal_totp_secret(self, name: str, stored_before: str, sealed: str, *, by: str) -> bool: ...
    def scrub_replaced(self) -> bool: ...


def enrol_totp(accounts: TotpAccounts, key: ConsoleSecretKey, name: str, secret: str, *, by: str) -> int:
    """Store ``secret`` as ``name``'s TOTP secret under its next enrolment number (recorded first);
    returns the number. Every older sealed secret of the account is refused from now on."""
    path = record_path(key.path)
    with _locked(path.parent):
        record = EnrolmentRecord.load(path)
        number = record.number(name) + 1
        record.written({name: number})
        accounts.set_totp(name, key.seal_totp(name, secret, enrolment=number), by=by)
    return number


def remove_totp(accounts: TotpAccounts, key_path: Path, name: str, *, by: str) -> None:
    """Remove ``name``'s TOTP secret, and take its next enrolment number: the secret removed, put back
    later, is refused."""
    path = record_path(key_path)
    with _locked(path.parent):
        record = EnrolmentRecord.load(path)
        record.written({name: record.number(name) + 1})
        accounts.set_totp(name, None, by=by)


def open_enrolled_totp(key: ConsoleSecretKey, name: str, stored: str) -> str:
    """``name``'s TOTP secret, if it opens and is of the recorded enrolment; :class:`SealedSecretError`
    (:class:`StaleEnrolmentError` for another enrolment) naming why not."""
    secret, number = key.open_totp(name, stored)
    recorded = EnrolmentRecord.load(record_path(key.path)).number(name)
    if number != recorded:
        raise StaleEnrolmentError(_stale(name, number, recorded, record_path(key.path)))
    return secret


def _stale(name: str, number: int | None, recorded: int, path: Path) -> str:
    found = ("bound to no enrolment (sealed by an older central)" if number is None
             else f"of enrolment {number}")
    now = f"enrolment {recorded}" if recorded else "no enrolment"
    return (f"the sealed TOTP secret of {name} is {found}, but {path} records {now}: an older secret was "
            "put back into index.db (from a backup?); refused, enrol TOTP again")


def enrolment_problems(stored: list[tuple[str, str]], key: ConsoleSecretKey | None,
                       record: EnrolmentRecord) -> list[tuple[str, str]]:
    """``(account, problem)`` of every stored TOTP secret a sign-in would refuse (for `edge verify`): not
    sealed, not opening with ``key`` (when given), or not of the recorded enrolment."""
    problems: list[tuple[str, str]] = []
    for name, text in stored:
        if not is_sealed(text):
            problems.append((name, "its TOTP secret is stored in plain text"))
            continue
        number: int | None = None
        if key is not None:
            try:
                number = key.open_totp(name, text)[1]
            except SealedSecretError as exc:
                problems.append((name, str(exc)))
                continue
        elif text.startswith(SEALED_PREFIX):
            digits = text[len(SEALED_PREFIX):].partition(":")[0]
            number = int(digits) if digits.isascii() and digits.isdigit() else None
        if number != record.number(name):
            problems.append((name, _stale(name, number, record.number(name), record.path)))
    return problems


class SealingStore(Protocol):
    """What a start needs to seal the secrets of an older central."""

    def seal_totp_secret(self, name: str, stored_before: str, sealed: str, *, by: str) -> bool: ...
    def scrub_replaced(self) -> bool: ...


def prepare_totp_secrets(key: ConsoleSecretKey, store: SealingStore, stored: list[tuple[str, str]], *,
                         by: str) -> None:
    """At a start (or before an enrolment): the first time, every secret of an older central sealed as
    enrolment 1 and the record written; afterwards, every secret a sign-in would refuse logged."""
    path = record_path(key.path)
    with _locked(path.parent):
        record = EnrolmentRecord.load(path)
        if record.exists:
            for name, problem in enrolment_problems(stored, key, record):
                log.error("console: %s: %s; that account cannot sign in with TOTP until it is enrolled again",
                          name, problem)
            return
        numbers = _number_the_secrets(key, store, stored, by=by)
        if any(text.startswith(SEALED_PREFIX) for _, text in stored):
            log.warning("console: %s was missing while index.db holds numbered TOTP secrets: written again "
                        "from them (a secret put back while it was missing cannot be seen)", path)
        record.written(numbers)


def _number_the_secrets(key: ConsoleSecretKey, store: SealingStore, stored: list[tuple[str, str]], *,
                        by: str) -> dict[str, int]:
    numbers: dict[str, int] = {}
    plain_sealed = 0
    for name, text in stored:
        try:
            if is_sealed(text):
                secret, number = key.open_totp(name, text)
                if number is not None:  # numbered by a first start that died before the record
                    numbers[name] = number
                    continue
            else:
                secret = text
                secret.encode("ascii")
        except SealedSecretError as exc:
            log.error("console: %s; that account cannot sign in until TOTP is enrolled again", exc)
            continue
        except UnicodeEncodeError:
            # One damaged row must not stop the central (evidence intake included); that account cannot
            # sign in with TOTP until it is enrolled again. The secret itself is never logged.
            log.error("console: the plain TOTP secret of %r is not ASCII (a damaged or hand-edited row): "
                      "left as it is, unsealed; that account cannot sign in until TOTP is enrolled again",
                      name)
            continue
        if store.seal_totp_secret(name, text, key.seal_totp(name, secret, enrolment=1), by=by):
            numbers[name] = 1
            plain_sealed += not is_sealed(text)
            log.info("console: the TOTP secret of %s, stored by an older central, is now sealed with console "
                     "key %s as enrolment 1", name, key.fingerprint)
    if plain_sealed and not store.scrub_replaced():
        log.warning("console: the plain TOTP secrets just sealed may remain in index.db-wal until the "
                    "next checkpoint (another connection was reading)")
    return numbers
