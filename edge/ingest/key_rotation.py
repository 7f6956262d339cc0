"""`edge keys rotate`: replace a station's signing key explicitly, on the record.

The new key is written crash-safely beside the old one (`keys/station.key.next`), then one SQLite
transaction appends a ``key_rotated`` ledger entry naming both keys (see
:mod:`edge.custody.keyschedule`) and signs checkpoints at it: with the old key when it is available, so
the old key vouches for the new one, and with the new key. Only then are the files moved: the old key is
kept as `station.key.<keyid>.retired` (never deleted: it verifies what it signed) and the new one takes
its place. A crash after the commit is finished at the next open of the store
(:func:`edge.ingest.station_key.open_station_key`); a crash before it leaves the old key in force and a
staged file that is discarded.

With ``lost_key`` the old private key is gone: the entry says so and is signed by the new key only. Its
public key must still be known (the store's `.pub` file, or the file the station was enrolled with),
since it is what verifies every checkpoint and manifest signed before the rotation.

The central accepts the new key once the station is enrolled again with it (`edge central enroll`);
until then it refuses the station's new ledger entries and uploads wait in the spool.
"""

from __future__ import annotations

import base64
import logging
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from edge.custody.errors import CustodyError
from edge.custody.keys import StationKey, key_id_of, load_public_key, public_key_raw
from edge.custody.keyschedule import KEY_ROTATED, rotation_data
from edge.custody.ledger import Ledger, ledger_key_facts
from edge.durable.files import adopt_owner
from edge.durable.sqlite import immediate_transaction
from edge.ingest.station_key import (
    StationKeyProblem,
    finish_rotation,
    open_station_key,
    retired_key_path,
    staged_key_path,
)
from edge.ingest.store import (
    StoreError,
    StoreLayout,
    adopt_store_owner,
    lock_store,
    open_db,
    read_station_id,
)

__all__ = ["RotationError", "RotationResult", "rotate_station_key"]

log = logging.getLogger(__name__)

_MAX_REASON_CHARS = 500


class RotationError(Exception):
    """The rotation was refused; nothing was changed. The message says why and what to do."""


@dataclass(frozen=True)
class RotationResult:
    seq: int
    old_key_id: str
    new_key_id: str
    old_key_lost: bool
    retired_path: Path | None  # where the old private key is kept (None when it was lost)
    public_path: Path  # the new public key, to enroll with the central


def rotate_station_key(
    store_dir: Path,
    station_id: str,
    *,
    lost_key: bool = False,
    old_public_key: Path | None = None,
    reason: str = "",
    by: str = "",
) -> RotationResult:
    """Rotate the key of the store at ``store_dir`` (holding its lock throughout).

    Raises :class:`edge.durable.lock.StoreBusy` when another process holds the store,
    :class:`StoreError` when it is not a usable store of ``station_id``, and :class:`RotationError`
    when the rotation asked for does not fit the store (a key that is not lost, a lost key whose
    public half is unknown).
    """
    reason = reason.strip()
    if len(reason) > _MAX_REASON_CHARS or not all(ch.isprintable() for ch in reason):
        raise RotationError(f"--reason must be one line of printable text, at most {_MAX_REASON_CHARS} "
                            "characters")
    layout = StoreLayout(store_dir)
    if not layout.db.is_file():
        raise StoreError(f"{store_dir} is not a station store (no state.db)")
    lock = lock_store(store_dir, "edge keys rotate")
    try:
        conn = open_db(layout.db)
        try:
            recorded = read_station_id(conn)
            if recorded != station_id:
                raise StoreError(f"{store_dir} belongs to station {recorded!r}, not {station_id!r}")
            return _rotate(layout, conn, station_id, lost_key, old_public_key, reason, by)
        finally:
            conn.close()
            # The new public key file, and anything SQLite left, belong to the store's owner too.
            adopt_store_owner(layout)
    finally:
        lock.release()


def _rotate(
    layout: StoreLayout,
    conn: sqlite3.Connection,
    station_id: str,
    lost_key: bool,
    old_public_key: Path | None,
    reason: str,
    by: str,
) -> RotationResult:
    private = layout.private_key
    facts = ledger_key_facts(conn)
    old_key: StationKey | None = None
    if lost_key:
        old_id, old_b64 = _lost_key_identity(layout, facts.current_key_id, old_public_key)
    else:
        if not os.path.lexists(private):
            raise RotationError(
                f"the station key {private} is missing: if it is lost for good, run again with "
                "--lost-key (the ledger then records the loss); otherwise restore it from backup"
            )
        try:
            old_key = open_station_key(layout.root, private, conn)
        except StationKeyProblem as exc:
            raise StoreError(str(exc)) from None
        old_id, old_b64 = old_key.key_id, old_key.public_key_b64
    staged = staged_key_path(private)
    staged.unlink(missing_ok=True)  # a rotation that never committed left it; it never signed anything
    new_key = StationKey.generate()
    try:
        new_key.save_new(staged)
        # Run as root (`sudo edge keys rotate`): the key belongs to the service user from the start, so
        # that the agent can read it even if a crash leaves the rotation for it to finish.
        adopt_owner(staged, layout.root)
    except (OSError, CustodyError) as exc:
        raise StoreError(f"cannot write the new key {staged}: {exc}") from None
    signer = new_key.at(staged)
    data = rotation_data(
        old_id, old_b64, signer.key_id, signer.public_key_b64, old_key_lost=lost_key, reason=reason, by=by
    )
    with immediate_transaction(conn):
        entry = Ledger(conn, station_id, signer).append(KEY_ROTATED, None, data)
        if old_key is not None:
            # The old key vouches for the new one; then the new key signs the same head.
            Ledger(conn, station_id, old_key).checkpoint()
        Ledger(conn, station_id, signer).checkpoint()
    log.info("station %s: ledger seq %d rotates the signing key %s -> %s%s", station_id, entry.seq,
                old_id, signer.key_id, " (old key lost)" if lost_key else "")
    new = finish_rotation(private, old_id)
    retired = retired_key_path(private, old_id)
    assert new.public_path is not None
    return RotationResult(
        seq=entry.seq,
        old_key_id=old_id,
        new_key_id=new.key_id,
        old_key_lost=lost_key,
        retired_path=retired if retired.exists() else None,
        public_path=new.public_path,
    )


def _lost_key_identity(
    layout: StoreLayout, ledger_key_id: str | None, old_public_key: Path | None
) -> tuple[str, str]:
    """The key id and public key (base64) of a lost key: from the given file or the store's `.pub`."""
    private = layout.private_key
    if os.path.lexists(private):
        try:
            present = StationKey.load(private)
        except CustodyError as exc:
            raise RotationError(
                f"{private} exists but cannot be used ({exc}); move it out of the keys directory (keep it "
                "for investigation) and run again"
            ) from None
        raise RotationError(
            f"the station key {private} (key {present.key_id}) is not lost: rotate without --lost-key, so "
            "that the old key vouches for the new one"
        )
    source = old_public_key if old_public_key is not None else layout.public_key
    if not source.exists():
        raise RotationError(
            f"the old key's public half is needed to verify what it signed, and {layout.public_key} is "
            "missing too: give --old-public-key FILE (the station.key.pub the station was enrolled with; "
            "a backup, or the copy used for `edge central enroll`)"
        )
    try:
        public = load_public_key(source)
    except CustodyError as exc:
        raise RotationError(f"--old-public-key: {exc}") from None
    key_id = key_id_of(public)
    if ledger_key_id is not None and key_id != ledger_key_id:
        raise RotationError(
            f"{source} is key {key_id}, but the ledger is signed with key {ledger_key_id}: give the public "
            f"key of {ledger_key_id} with --old-public-key FILE"
        )
    return key_id, base64.b64encode(public_key_raw(public)).decode("ascii")
