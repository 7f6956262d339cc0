"""Which station key may sign what: the keys a ledger announces, and when each was retired.

A station's ledger is signed by one key at a time. `edge keys rotate` replaces it explicitly, with a
``key_rotated`` entry at some seq *r* whose data names both keys::

    {"alg": "Ed25519", "old_key_id": …, "old_public_key": <base64 raw key>, "new_key_id": …,
     "new_public_key": <base64 raw key>, "old_key": "retired" | "lost", "reason": …, "by": …}

The old key signs a checkpoint at *r* (unless it was lost) and the new key signs one too, in the same
transaction. So the rules a verifier applies are:

* every checkpoint is signed by a key the ledger announces: the first one (the old key of the first
  rotation, or the station key when there was none) or the new key of a rotation;
* a key signs nothing after the rotation that retired it (a checkpoint at a seq beyond *r*);
* a rotation whose old key was not lost carries a checkpoint at *r* by that old key: the old key vouches
  for the new one;
* each rotation retires the key then in force, and each announced key id is the id of the public key
  announced with it.

Any other key change (a replaced public key file, checkpoints signed by an unannounced key) is named.
Checkpoints carry only a key id; the public keys come from the rotation entries and from the anchor (the
store's public key file, or a key pinned from elsewhere).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.custody.errors import KeyFormatError
from edge.custody.keys import SIGNATURE_ALG, key_id_of, public_key_from_b64
from edge.custody.problems import Problem

__all__ = ["KEY_ROTATED", "KeyRotation", "KeySchedule", "ScheduledKey", "parse_rotation", "rotation_data"]

KEY_ROTATED = "key_rotated"
OLD_KEY_RETIRED = "retired"
OLD_KEY_LOST = "lost"


@dataclass(frozen=True)
class KeyRotation:
    """One ``key_rotated`` ledger entry, decoded."""

    seq: int
    old_key_id: str
    old_public_key: Ed25519PublicKey
    new_key_id: str
    new_public_key: Ed25519PublicKey
    old_key_lost: bool


@dataclass(frozen=True)
class ScheduledKey:
    key_id: str
    public_key: Ed25519PublicKey
    introduced_at: int  # seq of the rotation that announced it; 0 for the first key
    retired_at: int | None  # seq of the rotation that retired it; None while in force
    retired_as_lost: bool = False


def rotation_data(
    old_key_id: str,
    old_public_key_b64: str,
    new_key_id: str,
    new_public_key_b64: str,
    *,
    old_key_lost: bool,
    reason: str,
    by: str,
) -> dict[str, Any]:
    """The data of a ``key_rotated`` ledger entry."""
    return {
        "alg": SIGNATURE_ALG,
        "old_key_id": old_key_id,
        "old_public_key": old_public_key_b64,
        "new_key_id": new_key_id,
        "new_public_key": new_public_key_b64,
        "old_key": OLD_KEY_LOST if old_key_lost else OLD_KEY_RETIRED,
        "reason": reason,
        "by": by,
    }


def parse_rotation(seq: int, data: Mapping[str, Any]) -> KeyRotation:
    """Decode a ``key_rotated`` entry's data; :class:`KeyFormatError` says what is wrong with it."""
    if data.get("alg") != SIGNATURE_ALG:
        raise KeyFormatError(f"expected alg {SIGNATURE_ALG}, found {str(data.get('alg'))[:40]!r}")
    if data.get("old_key") not in (OLD_KEY_RETIRED, OLD_KEY_LOST):
        raise KeyFormatError(f"expected old_key 'retired' or 'lost', found {str(data.get('old_key'))[:40]!r}")
    keys: dict[str, Ed25519PublicKey] = {}
    for side in ("old", "new"):
        key_id, b64 = data.get(f"{side}_key_id"), data.get(f"{side}_public_key")
        if not isinstance(key_id, str) or not isinstance(b64, str):
            raise KeyFormatError(f"expected {side}_key_id and {side}_public_key as text")
        public_key = public_key_from_b64(b64)
        if key_id_of(public_key) != key_id:
            raise KeyFormatError(
                f"{side}_public_key is key {key_id_of(public_key)}, not the {side}_key_id {key_id[:40]!r} "
                "it is announced as"
            )
        keys[side] = public_key
    return KeyRotation(
        seq=seq,
        old_key_id=str(data["old_key_id"]),
        old_public_key=keys["old"],
        new_key_id=str(data["new_key_id"]),
        new_public_key=keys["new"],
        old_key_lost=data["old_key"] == OLD_KEY_LOST,
    )


class KeySchedule:
    """The station keys of one ledger, in order, with the seq at which each was retired."""

    def __init__(self, keys: list[ScheduledKey], rotations: list[KeyRotation]) -> None:
        if not keys:
            raise ValueError("a key schedule needs at least one key")
        self.keys = keys
        self.rotations = rotations
        self._by_id = {key.key_id: key for key in keys}

    def __repr__(self) -> str:
        return f"KeySchedule(keys={[key.key_id for key in self.keys]!r})"

    @classmethod
    def single(cls, public_key: Ed25519PublicKey) -> KeySchedule:
        """One key for the whole ledger (no rotation, or a verifier that knows only one key)."""
        return cls([ScheduledKey(key_id_of(public_key), public_key, 0, None)], [])

    @classmethod
    def from_rotations(
        cls,
        rotations: Iterable[tuple[int, Mapping[str, Any] | None]],
        anchor: Ed25519PublicKey,
        anchor_name: str,
    ) -> tuple[KeySchedule, list[Problem]]:
        """The schedule a ledger's ``key_rotated`` entries (seq, data; in seq order) announce.

        ``anchor`` is the key the verifier trusts (the store's public key file, or a pinned key);
        ``anchor_name`` says where it came from, for problems. The anchor must be one of the announced
        keys; when it is an older one (a key pinned before a rotation), every later rotation must have
        been vouched for by its old key, since a lost-key rotation cannot be traced back to the anchor.
        """
        problems: list[Problem] = []
        decoded: list[KeyRotation] = []
        for seq, data in rotations:
            where = f"ledger seq {seq}"
            if data is None:
                problems.append(Problem(where, "key_rotated entry data is not a JSON object"))
                continue
            try:
                rotation = parse_rotation(seq, data)
            except KeyFormatError as exc:
                problems.append(Problem(where, f"key_rotated entry is malformed: {exc}"))
                continue
            if decoded and rotation.old_key_id != decoded[-1].new_key_id:
                problems.append(
                    Problem(
                        where,
                        f"key_rotated retires key {rotation.old_key_id}, but the key in force since seq "
                        f"{decoded[-1].seq} is {decoded[-1].new_key_id}",
                    )
                )
            decoded.append(rotation)
        if not decoded:
            return cls.single(anchor), problems
        keys = [ScheduledKey(decoded[0].old_key_id, decoded[0].old_public_key, 0, None)]
        for rotation in decoded:
            last = keys[-1]
            keys[-1] = ScheduledKey(
                last.key_id, last.public_key, last.introduced_at, rotation.seq, rotation.old_key_lost
            )
            keys.append(ScheduledKey(rotation.new_key_id, rotation.new_public_key, rotation.seq, None))
        schedule = cls(keys, decoded)
        anchor_id = key_id_of(anchor)
        position = next((i for i, key in enumerate(keys) if key.key_id == anchor_id), None)
        if position is None:
            announced = ", ".join(key.key_id for key in keys)
            problems.append(
                Problem(
                    anchor_name,
                    f"is key {anchor_id}, which the ledger never announced (its keys are {announced}): "
                    "the key was replaced without `edge keys rotate`",
                )
            )
        else:
            for later in keys[position + 1 :]:
                rotation = next(r for r in decoded if r.seq == later.introduced_at)
                if rotation.old_key_lost:
                    problems.append(
                        Problem(
                            f"ledger seq {rotation.seq}",
                            f"key {later.key_id} replaced the lost key {rotation.old_key_id}; nothing the "
                            f"trusted key {anchor_id} signed vouches for it: trust the new key (from the "
                            "re-enrollment) to verify beyond this seq",
                        )
                    )
                    break
        return schedule, problems

    def get(self, key_id: str) -> ScheduledKey | None:
        return self._by_id.get(key_id)

    def in_force_at(self, seq: int) -> ScheduledKey:
        """The key that signs what is recorded at ``seq`` (the new key from its rotation entry on)."""
        current = self.keys[0]
        for key in self.keys[1:]:
            if key.introduced_at <= seq:
                current = key
        return current

    def trusted(self) -> dict[str, Ed25519PublicKey]:
        """Every announced key by id."""
        return {key.key_id: key.public_key for key in self.keys}

    @property
    def current(self) -> ScheduledKey:
        return self.keys[-1]
