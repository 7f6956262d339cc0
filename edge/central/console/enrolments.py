"""Each console account's current TOTP enrolment, and whether it has TOTP, kept outside ``index.db``.

A sealed TOTP secret is bound, in its AEAD associated data, to its account and to an enrolment id
(:mod:`edge.central.console.secret_key`). Every ``enrol-totp`` and every ``remove-totp`` of an account takes
a new **random** id (128 random bits, above 2**128: never one of the small counters an earlier build
handed out, and never repeated), and ``identity/console-enrolments`` (beside
``console.key``, mode 0600, written like it: a temporary file, fsynced, renamed into place, the directory
fsynced) records it, and whether the account now has TOTP (enrolled) or not (removed), before ``index.db``
stores the new secret. A secret whose id is not the recorded one is refused at sign-in, logged and
recorded (``totp_refused`` in ``account_events``), and named by `edge verify`: another sealed secret of the
same account put back into ``index.db`` (restored from a backup, or by whoever can write the database but
not ``identity/``) does not work again after a re-enrolment or a removal (review R8). Its id cannot be
changed without the key (it is in the associated data), and the record is not in ``index.db``.

Ids are random, not counted (review 6): a counter kept in the record alone started again from the
record's backup when ``identity/`` was restored, so a re-enrolment reused the id of a secret replaced
before the restore, and that secret, put back, signed in again. A random id is never handed out twice,
whatever was restored.

An account the record says has TOTP, whose secret is missing from ``index.db`` (``index.db`` restored from
before the enrolment, or the column emptied by a database writer), is refused at sign-in even where
password-only sign-in is allowed, and named by `edge verify` (review 6): the second factor is never
dropped silently. ``remove-totp`` records the removal, after which the password alone signs in (where
allowed).

The first start that keeps the record seals every secret of an older central (plain, or ``sealed-v1``
bound to the account only) under a new id and then writes the record; from then on such a secret is
refused, never sealed again (it was put back from a backup made before). A record that is missing while
``index.db`` holds numbered secrets is written again from them, with a warning: it has been lost, and a
rollback made meanwhile cannot be seen. A record of the first format (a number per account, without the
enrolled/removed state) gets the state from ``index.db`` at the next start: enrolled when the account's
secret is of the recorded id.

Writers (the administration commands, a starting central) hold an exclusive ``flock`` on ``identity/``
from reading the record until ``index.db`` has the new secret, so two enrolments at once cannot lose one
another's id. When storing the secret in ``index.db`` fails, the record is put back as it was. A crash
between the record and the database leaves the account's old secret refused (its id is not the recorded
one; the refusal says so among its possible causes): it is enrolled again. A start removes the record's
temporary files that crashed writers left (review 6: `edge verify` named them as planted). The file is
small (a name, an id and a flag per account) and read at each TOTP sign-in, so an enrolment by the command
line applies at once to a running central.

Restoring ``identity/`` and ``index.db`` together from one backup brings back every secret enrolled at
backup time: an account enrolled again, or whose TOTP was removed, since that backup is back to the
secret it had then, until an administrator enrols it again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from edge.central.console.secret_key import (
    SEALED_PREFIX,
    ConsoleKeyError,
    ConsoleSecretKey,
    SealedSecretError,
    enrolment_id,
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
    "Enrolment",
    "EnrolmentRecord",
    "StaleEnrolmentError",
    "enrol_totp",
    "enrolment_problems",
    "missing_totp_refusal",
    "new_enrolment_id",
    "open_enrolled_totp",
    "prepare_totp_secrets",
    "record_path",
    "remove_totp",
]

log = logging.getLogger(__name__)

ENROLMENTS_FILE = "console-enrolments"  # in identity/, beside console.key
_FORMAT_V1 = "edge-console-enrolments v1"  # {name: number}: no enrolled/removed state
_FORMAT = "edge-console-enrolments v2"  # {name: {"enrolment": id, "totp": true|false}}
_MAX_BYTES = 8 << 20  # ~100 000 accounts
# Random ids lie above every counter an earlier build handed out (1, 2, 3...): never one of them.
_ID_BASE = 1 << 128


def new_enrolment_id() -> int:
    """A new enrolment id: 128 random bits (above 2**128), never handed out twice."""
    return _ID_BASE | secrets.randbits(128)


class StaleEnrolmentError(SealedSecretError):
    """A sealed secret that opens, but of another enrolment than the recorded one (put back)."""


def record_path(key_path: Path) -> Path:
    return key_path.with_name(ENROLMENTS_FILE)


@dataclass(frozen=True)
class Enrolment:
    """An account's recorded enrolment: its id, and whether it has TOTP (None: a record of the first
    format, which did not say; the next start fills it in)."""

    id: int
    totp: bool | None


@dataclass(frozen=True)
class EnrolmentRecord:
    """The recorded enrolment of each account; ``exists`` False before the first start that keeps the
    record."""

    path: Path
    exists: bool
    entries: Mapping[str, Enrolment] = field(default_factory=dict)

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
        fmt = doc.get("format") if isinstance(doc, dict) else None
        accounts = doc.get("accounts") if fmt in (_FORMAT, _FORMAT_V1) else None
        entries: dict[str, Enrolment] = {}
        if isinstance(accounts, dict):
            for name, value in accounts.items():
                entry = _entry(value) if fmt == _FORMAT else _entry({"enrolment": value})
                if entry is None:
                    break
                entries[str(name)] = entry
            else:
                return cls(path, True, entries)
        raise ConsoleKeyError(f"{path}: not a console enrolment record ({_FORMAT!r} with a positive "
                              "enrolment id and a TOTP flag per account)")

    def entry(self, account: str) -> Enrolment | None:
        return self.entries.get(account)

    def number(self, account: str) -> int:
        """The account's recorded enrolment id (0: never enrolled)."""
        entry = self.entries.get(account)
        return 0 if entry is None else entry.id

    def has_totp(self, account: str) -> bool | None:
        """Whether the record says the account has TOTP (None: the record does not say)."""
        entry = self.entries.get(account)
        return False if entry is None else entry.totp

    def with_entries(self, entries: Mapping[str, Enrolment | None]) -> EnrolmentRecord:
        """The record with ``entries`` (merged over this one's; None removes an account's entry),
        written crash-safely; the new record."""
        merged = dict(self.entries)
        for name, entry in entries.items():
            if entry is None:
                merged.pop(name, None)
            else:
                merged[name] = entry
        accounts = {name: ({"enrolment": e.id} if e.totp is None else {"enrolment": e.id, "totp": e.totp})
                    for name, e in sorted(merged.items())}
        data = json.dumps({"format": _FORMAT, "accounts": accounts}, indent=1) + "\n"
        _write_replacing(self.path, data.encode("utf-8"))
        return EnrolmentRecord(self.path, True, merged)


def _entry(value: object) -> Enrolment | None:
    if not isinstance(value, dict):
        return None
    number, totp = value.get("enrolment"), value.get("totp")
    if not isinstance(number, int) or isinstance(number, bool) or number < 1:
        return None
    if totp is not None and not isinstance(totp, bool):
        return None
    return Enrolment(number, totp)


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


def _recorded_then_stored(path: Path, name: str, entry: Enrolment, store: Callable[[], None]) -> None:
    """Record ``entry`` for ``name``, then ``store`` the change in index.db; when storing fails, the record
    is put back as it was (so the account's secret in index.db stays the recorded one) and the error
    raised. Only a crash in between leaves the record ahead of index.db."""
    with _locked(path.parent):
        record = EnrolmentRecord.load(path)
        before = record.entry(name)
        record = record.with_entries({name: entry})
        try:
            store()
        except BaseException:
            try:
                record.with_entries({name: before})
            except ConsoleKeyError as exc:
                log.error("console: storing the TOTP change of %s in index.db failed, and %s could not be "
                          "put back as it was (%s): the current secret of %s is refused until enrolled again",
                          name, path, exc, name)
            raise


def enrol_totp(accounts: TotpAccounts, key: ConsoleSecretKey, name: str, secret: str, *, by: str) -> int:
    """Store ``secret`` as ``name``'s TOTP secret under a new random enrolment id (recorded first);
    returns the id. Every other sealed secret of the account is refused from now on."""
    number = new_enrolment_id()
    sealed = key.seal_totp(name, secret, enrolment=number)
    _recorded_then_stored(record_path(key.path), name, Enrolment(number, True),
                          lambda: accounts.set_totp(name, sealed, by=by))
    return number


def remove_totp(accounts: TotpAccounts, key_path: Path, name: str, *, by: str) -> None:
    """Remove ``name``'s TOTP secret under a new enrolment id, recorded as removed: the secret removed,
    put back later, is refused, and the password alone signs in (where password-only sign-in is on)."""
    _recorded_then_stored(record_path(key_path), name, Enrolment(new_enrolment_id(), False),
                          lambda: accounts.set_totp(name, None, by=by))


def open_enrolled_totp(key: ConsoleSecretKey, name: str, stored: str) -> str:
    """``name``'s TOTP secret, if it opens and is of the recorded enrolment; :class:`SealedSecretError`
    (:class:`StaleEnrolmentError` for another enrolment) naming why not."""
    secret, number = key.open_totp(name, stored)
    record = EnrolmentRecord.load(record_path(key.path))
    if number != record.number(name):
        raise StaleEnrolmentError(_stale(name, number, record))
    return secret


def missing_totp_refusal(key_path: Path, name: str) -> str | None:
    """Why ``name``, which has no TOTP secret in index.db, may not sign in with its password alone: the
    record says it has TOTP (or cannot be read); None when it may (never enrolled, or removed)."""
    try:
        record = EnrolmentRecord.load(record_path(key_path))
    except ConsoleKeyError as exc:
        return f"{exc}: whether {name} has TOTP cannot be told; refused"
    if record.has_totp(name):
        return _stripped(name, record)
    return None


def _stale(name: str, number: int | None, record: EnrolmentRecord) -> str:
    found = ("bound to no enrolment (sealed by an older central)" if number is None
             else f"of enrolment {number}")
    entry = record.entry(name)
    if entry is None:
        now = "no enrolment of it"
    elif entry.totp is False:
        now = f"its TOTP removed (enrolment {entry.id})"
    else:
        now = f"enrolment {entry.id}"
    return (f"the sealed TOTP secret of {name} is {found}, but {record.path} records {now}: it is not the "
            "account's current secret (put back into index.db from a backup or by a database writer, or "
            "identity/ restored from a backup older than index.db, or an enrolment that crashed before "
            "index.db stored its secret); refused, enrol TOTP again")


def _stripped(name: str, record: EnrolmentRecord) -> str:
    return (f"{name} has no TOTP secret in index.db, but {record.path} records it enrolled (enrolment "
            f"{record.number(name)}), never removed: index.db was put back from before the enrolment, or the "
            "secret was emptied past `edge central account remove-totp`; the password alone is refused, "
            "enrol TOTP again (or remove-totp, to record the removal)")


def enrolment_problems(stored: list[tuple[str, str]], key: ConsoleSecretKey | None,
                       record: EnrolmentRecord, without_secret: Sequence[str] = ()) -> list[tuple[str, str]]:
    """``(account, problem)`` of every stored TOTP secret a sign-in would refuse (for `edge verify`): not
    sealed, not opening with ``key`` (when given), or not of the recorded enrolment; and of every account
    of ``without_secret`` (accounts with no secret) that the record says has TOTP."""
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
            number = enrolment_id(text[len(SEALED_PREFIX):].partition(":")[0])
        if number != record.number(name):
            problems.append((name, _stale(name, number, record)))
    problems.extend((name, _stripped(name, record)) for name in without_secret if record.has_totp(name))
    return sorted(problems)


class SealingStore(Protocol):
    """What a start needs to seal the secrets of an older central (and to name accounts stripped of
    TOTP)."""

    def accounts_without_totp(self) -> list[str]: ...
    def seal_totp_secret(self, name: str, stored_before: str, sealed: str, *, by: str) -> bool: ...
    def scrub_replaced(self) -> bool: ...


def prepare_totp_secrets(key: ConsoleSecretKey, store: SealingStore, stored: list[tuple[str, str]], *,
                         by: str) -> None:
    """At a start (or before an enrolment): the first time, every secret of an older central sealed under
    a new enrolment id and the record written; afterwards, every secret a sign-in would refuse logged (and
    every account the record says has TOTP whose secret is missing), and a record of the first format
    given each account's enrolled/removed state. Temporaries of the record
    left by a crashed writer are removed."""
    path = record_path(key.path)
    with _locked(path.parent):
        remove_stale_temporaries(path)  # a crashed enrol-totp/remove-totp: `edge verify` names them
        record = EnrolmentRecord.load(path)
        if record.exists:
            record = _fill_in_the_state(key, record, stored)
            for name, problem in enrolment_problems(stored, key, record, store.accounts_without_totp()):
                log.error("console: %s: %s; that account cannot sign in until TOTP is enrolled again", name,
                          problem)
            return
        numbers = _number_the_secrets(key, store, stored, by=by)
        if any(text.startswith(SEALED_PREFIX) for _, text in stored):
            log.warning("console: %s was missing while index.db holds numbered TOTP secrets: written again "
                        "from them (a secret put back while it was missing cannot be seen)", path)
        record.with_entries({name: Enrolment(number, True) for name, number in numbers.items()})


def _fill_in_the_state(key: ConsoleSecretKey, record: EnrolmentRecord,
                       stored: list[tuple[str, str]]) -> EnrolmentRecord:
    """A record of the first format: each account enrolled when index.db holds a secret of its recorded
    id, removed otherwise (what that format could not say); the record as written."""
    unknown = [name for name, entry in record.entries.items() if entry.totp is None]
    if not unknown:
        return record
    texts = dict(stored)
    filled: dict[str, Enrolment | None] = {}
    for name in unknown:
        number = record.number(name)
        try:
            current = name in texts and key.open_totp(name, texts[name])[1] == number
        except SealedSecretError:
            current = False
        filled[name] = Enrolment(number, current)
    log.info("console: %s now records whether each of its %d accounts has TOTP", record.path, len(filled))
    return record.with_entries(filled)


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
        number = new_enrolment_id()
        if store.seal_totp_secret(name, text, key.seal_totp(name, secret, enrolment=number), by=by):
            numbers[name] = number
            plain_sealed += not is_sealed(text)
            log.info("console: the TOTP secret of %s, stored by an older central, is now sealed with console "
                     "key %s as enrolment %d", name, key.fingerprint, number)
    if plain_sealed and not store.scrub_replaced():
        log.warning("console: the plain TOTP secrets just sealed may remain in index.db-wal until the "
                    "next checkpoint (another connection was reading)")
    return numbers
