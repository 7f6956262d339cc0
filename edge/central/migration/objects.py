"""The objects of a local store copied into an S3 bucket with Object Lock, each locked as its items require.

Which objects: the content of every accepted item (the index's ``items.sha256``), one object per distinct
content, in name order. Each is locked (COMPLIANCE) until the latest end any of its items requires: every
retention class the item ever had (its manifest's, each tag's, the current one) counted from its acceptance,
as the central locked and extended it while it ran (edge.central.registration), and under a legal hold
when one of them is permanent. Nothing is shortened: a class changed to a shorter one later keeps the
longer lock, as it would have on S3 from the start.

Each object is read once: hashed on the same read that sends it (:meth:`S3ObjectStore.copy_in`), so a
local file whose bytes are not the SHA-256 its index row records never becomes an object and is named
(:class:`ObjectRefused`). Resumable: an object already in the bucket under its name with the size of
its row, written by the central (its recorded SHA-256 is the name), is not sent again; its lock is
checked and extended when short. An object whose bucket copy disagrees is hashed there, and refused
when its bytes are wrong (a locked version cannot be replaced). `edge verify`, run on the target at the
end, hashes every object in the bucket.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum

from edge.central.objects import FileObjectStore, ObjectMismatch, Retention, is_sha256_hex
from edge.central.retention import RetentionPolicy, parse_utc
from edge.central.s3_objects import S3ObjectStore
from edge.custody.canonical import parse_json
from edge.custody.errors import CanonicalJsonError

__all__ = ["ObjectOutcome", "ObjectRefused", "ObjectToCopy", "copy_object", "objects_to_copy",
           "unreferenced_objects"]

_LOCK_MODE = "COMPLIANCE"


class ObjectRefused(Exception):
    """One object cannot be copied as it is (its bytes are not its index row's, it is missing...)."""


class ObjectOutcome(StrEnum):
    COPIED = "copied"
    PRESENT = "already in the bucket"
    RELOCKED = "already in the bucket, lock extended"


@dataclass
class ObjectToCopy:
    """One distinct content: its name, size and the items that hold it, with the strongest lock."""

    sha256: str
    size_bytes: int
    items: list[str] = field(default_factory=list)
    retention: Retention | None = None

    def hold(self, retention: Retention) -> None:
        """Keep the stronger of the lock so far and ``retention``."""
        if self.retention is None:
            self.retention = retention
            return
        until = max(self.retention.until, retention.until)
        self.retention = Retention(until, self.retention.legal_hold or retention.legal_hold)

    def named(self) -> str:
        more = f" and {len(self.items) - 3} more" if len(self.items) > 3 else ""
        shown = ", ".join(self.items[:3]) + more
        return f"object {self.sha256} (item {shown})"


def _classes_of(source: sqlite3.Connection, item: str, manifest: object, current: object) -> list[object]:
    """Every retention class an item has had: its manifest's, each tag's, the current one."""
    classes: list[object] = [current]
    parsed = _json(manifest)
    if parsed is not None:
        classes.append(RetentionPolicy.class_of(parsed))
    for (changes,) in source.execute("SELECT changes FROM metadata_history WHERE item = ? ORDER BY id",
                                     (item,)):
        fields = _json(changes)
        if fields is not None and "retention" in fields:
            classes.append(fields["retention"])
    return classes


def _json(text: object) -> dict[str, object] | None:
    if not isinstance(text, str):
        return None
    try:
        value = parse_json(text)
    except CanonicalJsonError:
        return None
    return value if isinstance(value, dict) else None


def objects_to_copy(source: sqlite3.Connection, policy: RetentionPolicy) -> Iterator[ObjectToCopy]:
    """Every distinct content the index's items hold, in name order, with its lock. Raises
    :class:`ObjectRefused` for items that disagree on the size of one content."""
    has_case = source.execute("SELECT 1 FROM sqlite_schema WHERE name = 'item_case'").fetchone() is not None
    current = "(SELECT retention FROM item_case c WHERE c.item = i.item)" if has_case else "NULL"
    cursor = source.execute(f"SELECT i.item, i.sha256, i.size, i.manifest, i.accepted_utc, {current} "
                            "FROM items i ORDER BY i.sha256, i.item")
    pending: ObjectToCopy | None = None
    while rows := cursor.fetchmany(500):
        for item, sha256, size, manifest, accepted_utc, retention_class in rows:
            if pending is not None and pending.sha256 != sha256:
                yield pending
                pending = None
            if pending is None:
                pending = ObjectToCopy(str(sha256), int(size))
            elif pending.size_bytes != size:
                raise ObjectRefused(f"{pending.named()}: item {item} records the same content with {size} "
                                    f"bytes, the others with {pending.size_bytes}: the index is damaged")
            pending.items.append(str(item))
            try:
                accepted = parse_utc(str(accepted_utc))
            except ValueError:
                raise ObjectRefused(f"item {item}: its acceptance time {str(accepted_utc)[:40]!r} is not a "
                                    "UTC time: its lock cannot be computed") from None
            for retention_class_ever in _classes_of(source, str(item), manifest, retention_class):
                pending.hold(policy.for_class(retention_class_ever, accepted, item=str(item)))
    if pending is not None:
        yield pending


def _lock_is_enough(bucket: S3ObjectStore, wanted: Retention, sha256: str) -> bool:
    mode, until, held = bucket.retention_of(sha256)
    long_enough = mode == _LOCK_MODE and until is not None and until >= wanted.until
    return long_enough and (held or not wanted.legal_hold)


def copy_object(local: FileObjectStore, bucket: S3ObjectStore, wanted: ObjectToCopy) -> ObjectOutcome:
    """Copy one object (or find it copied) and lock it. Raises :class:`ObjectRefused` for this object,
    :class:`~edge.central.objects.ObjectStoreError` when the bucket fails (the run stops; a rerun resumes)."""
    assert wanted.retention is not None
    if not is_sha256_hex(wanted.sha256):
        raise ObjectRefused(f"item {', '.join(wanted.items[:3])}: its index row names the content "
                            f"{wanted.sha256[:80]!r}, not a SHA-256: the index is damaged")
    stored = bucket.stored_as(wanted.sha256)
    if stored is None:
        path = local.path_of(wanted.sha256)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise ObjectRefused(f"{wanted.named()}: missing from {local.root}: an accepted item's content is "
                                "gone from the source") from None
        if size != wanted.size_bytes:
            raise ObjectRefused(f"{wanted.named()}: {path} holds {size} bytes, its index row says "
                                f"{wanted.size_bytes}: the source object was altered; nothing of it was sent")
        try:
            bucket.copy_in(path, wanted.sha256, wanted.retention)
        except ObjectMismatch as exc:
            raise ObjectRefused(f"{wanted.named()}: {path} hashes to {exc.found_sha256}, not to the SHA-256 "
                                "its index row records: the source object was altered; nothing of it became "
                                "an object in the bucket") from None
        return ObjectOutcome.COPIED
    size, recorded = stored
    if size != wanted.size_bytes or recorded != wanted.sha256:
        problem = bucket.verify(wanted.sha256)
        if problem is not None:
            raise ObjectRefused(f"{wanted.named()}: the bucket already holds a version under its name that "
                                f"{problem}; a locked version cannot be replaced: name another bucket or "
                                "prefix")
    if _lock_is_enough(bucket, wanted.retention, wanted.sha256):
        return ObjectOutcome.PRESENT
    bucket.retain(wanted.sha256, wanted.retention)
    return ObjectOutcome.RELOCKED


def unreferenced_objects(source: sqlite3.Connection, local: FileObjectStore) -> int:
    """How many objects in the local folder no item names (left by an interrupted registration, or
    planted): they are not copied."""
    if not local.root.is_dir():
        return 0
    count = 0
    for name in local.names():
        if source.execute("SELECT 1 FROM items WHERE sha256 = ? LIMIT 1", (name,)).fetchone() is None:
            count += 1
    return count

