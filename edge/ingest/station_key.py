"""The station key of a store: opened only when it is the key the store's ledger says it signs with.

A key is created only for a store whose ledger is empty. A store whose ledger has entries but whose key
file is gone, or holds another key, is refused with what is known (the ledger's length, the key its
checkpoints were signed with) and what to do: restore the key from backup, or rotate it explicitly with
`edge keys rotate --lost-key`, which puts the loss on the record. A silently created key would orphan
the ledger: every checkpoint after it would be signed by a key nothing announced.

`edge keys rotate` (see :mod:`edge.ingest.key_rotation`) stages the new key beside the old one
(`keys/station.key.next`), commits the ``key_rotated`` ledger entry, then moves the files. A crash
between the commit and the move is finished here, at the next open: the ledger is the truth, and a
staged key it announces is moved into place.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from pathlib import Path

from edge.custody.errors import CustodyError
from edge.custody.keys import StationKey
from edge.custody.ledger import LedgerKeyFacts, ledger_key_facts
from edge.durable.files import fsync_dir

__all__ = [
    "StationKeyProblem",
    "finish_rotation",
    "open_station_key",
    "retired_key_path",
    "staged_key_path",
]

log = logging.getLogger(__name__)


class StationKeyProblem(Exception):
    """The store's key cannot be used; the message says why and what the operator can do."""


def staged_key_path(private_path: Path) -> Path:
    """Where `edge keys rotate` writes the new key before the ledger announces it."""
    return private_path.with_name(private_path.name + ".next")


def retired_key_path(private_path: Path, key_id: str) -> Path:
    """Where a rotated-out key is kept, never deleted: `station.key.<keyid>.retired`."""
    return private_path.with_name(f"{private_path.name}.{key_id}.retired")


def _load(path: Path) -> StationKey:
    try:
        return StationKey.load(path)
    except CustodyError as exc:
        raise StationKeyProblem(str(exc)) from None


def open_station_key(store_root: Path, private_path: Path, conn: sqlite3.Connection) -> StationKey:
    """The store's key, checked against its ledger; created only for an empty ledger.

    Raises :class:`StationKeyProblem` for a missing key of a non-empty ledger, a key file that holds
    another key than the ledger's, and a key file that cannot be read (mode, format).
    """
    facts = ledger_key_facts(conn)
    staged = staged_key_path(private_path)
    if os.path.lexists(private_path):
        key = _load(private_path)
        if facts.current_key_id is not None and key.key_id != facts.current_key_id:
            if _holds(staged, facts.current_key_id):
                log.warning("store %s: finishing the key rotation to %s that a crash interrupted",
                            store_root, facts.current_key_id)
                return finish_rotation(private_path, key.key_id)
            raise StationKeyProblem(
                f"station store {store_root}: {private_path} is key {key.key_id}, but {facts.describe()}: "
                f"the key file was replaced. Restore key {facts.current_key_id} from backup; the agent "
                f"never signs with a key its ledger did not announce"
            )
        _discard_stale_staged(staged, facts)
        _check_public_file(store_root, key)
        return key
    if _holds(staged, facts.current_key_id):
        log.warning("store %s: finishing the key rotation to %s that a crash interrupted",
                    store_root, facts.current_key_id)
        return finish_rotation(private_path, facts.previous_key_id)
    if facts.head_seq == 0:
        _discard_stale_staged(staged, facts)
        try:
            return StationKey.create(private_path)
        except CustodyError as exc:
            raise StationKeyProblem(str(exc)) from None
    raise StationKeyProblem(
        f"station store {store_root}: the station key {private_path} is missing, but {facts.describe()}. "
        f"A new key would orphan that ledger, so none is made. Restore the key file from backup (mode "
        f"0600, owned by the service user); or, if it is lost for good, start a new key with "
        f"`edge keys rotate --config FILE --lost-key`, which records in the ledger that the old key was "
        f"lost, and then re-enroll the station with the central"
    )


def _check_public_file(store_root: Path, key: StationKey) -> None:
    try:
        key.ensure_public_file()
    except CustodyError as exc:
        raise StationKeyProblem(f"station store {store_root}: {exc}") from None
    except OSError as exc:
        raise StationKeyProblem(
            f"station store {store_root}: cannot write {key.public_path}: {exc.strerror or exc}"
        ) from None


def _holds(path: Path, key_id: str | None) -> bool:
    if key_id is None or not path.is_file():
        return False
    try:
        return StationKey.load(path).key_id == key_id
    except CustodyError:
        return False


def _discard_stale_staged(staged: Path, facts: LedgerKeyFacts) -> None:
    """A staged key the ledger never announced is from a rotation that did not commit: it never signed
    anything, so nothing is lost by removing it."""
    if os.path.lexists(staged) and not _holds(staged, facts.current_key_id):
        log.warning("removing %s: a key rotation that never reached the ledger left it", staged)
        with contextlib.suppress(OSError):
            staged.unlink()
            fsync_dir(staged.parent)


def finish_rotation(private_path: Path, old_key_id: str | None) -> StationKey:
    """Move the staged key into place after the ledger announced it (idempotent, crash-safe).

    The old key is first linked to `station.key.<keyid>.retired` (and its `.pub` likewise), so it is
    never lost; then the public key file is removed, the staged key renamed over the private key, and
    the public key file written anew. A crash at any step leaves a state this function, run again at
    the next open, completes: the two key files never disagree on disk except when one was replaced.
    """
    staged = staged_key_path(private_path)
    public = private_path.with_name(private_path.name + ".pub")
    if old_key_id is not None:
        retired = retired_key_path(private_path, old_key_id)
        if private_path.exists() and not retired.exists():
            os.link(private_path, retired)
        retired_pub = retired.with_name(retired.name + ".pub")
        if public.exists() and not retired_pub.exists():
            os.link(public, retired_pub)
        fsync_dir(private_path.parent)
    with contextlib.suppress(FileNotFoundError):
        public.unlink()
    os.replace(staged, private_path)
    fsync_dir(private_path.parent)
    key = _load(private_path)
    _check_public_file(private_path.parent, key)
    log.info("station key is now %s (%s)", key.key_id, private_path)
    return key
