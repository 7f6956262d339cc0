"""Space on the store's disk that writers who cannot wait hold beyond the store's reserve (issue 11).

The ingest keeps the store's reserve ([offload] min_free_bytes) free of every copy. But while a room records,
its ffmpeg writes into the same free space, and the recording reserve (edge.rooms.reserve) stops a room's
source once the disk is under the reserve plus the rooms' recording margin: a docking copy (or a GB/T 28181
recording download) taking that margin would stop an interview's recording to copy a file that could have
waited on its device. So writers that cannot wait register here while they write (a group, such as the
rooms, with its members, such as the rooms recording, and the group's rule for the bytes it holds); a copy
that can wait keeps those bytes free too, or is refused as the store being full (the original stays on its
device and is copied at a later docking).

This module knows no group: edge.rooms registers its rule (edge.rooms.space.rooms_kept_free), so edge.ingest
never imports edge.rooms.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from edge.ingest.copy import StoreFullError


@dataclass(frozen=True)
class KeptFree:
    """Bytes a group of writers holds beyond the store's reserve, and what to say about them."""

    bytes: int
    # For a refusal, after "keeping free ... for": names the members and the settings behind the figure.
    what: str
    group: str  # "rooms"
    members: tuple[str, ...]  # the rooms recording

    def to_json(self) -> dict[str, Any]:
        return {"group": self.group, "members": list(self.members), "bytes": self.bytes}


class SpaceKeptError(StoreFullError):
    """A copy that would take space writers hold (`kept`): refused like a full store, the original left on
    its device for a later docking; the store itself is not full (its ledger reserve stays held)."""

    def __init__(self, reason: str, kept: Sequence[KeptFree]) -> None:
        super().__init__(reason)
        self.kept = tuple(kept)


# The bytes a group holds, from its members now (sorted; never empty).
KeptFreeRule = Callable[[Sequence[str]], KeptFree]


class KeptSpace:
    """The groups holding space now, each with its members; shared by every copy into one store."""

    def __init__(self) -> None:
        self._members: dict[str, list[str]] = {}
        self._rules: dict[str, KeptFreeRule] = {}

    @contextlib.contextmanager
    def holding(self, group: str, member: str, rule: KeptFreeRule) -> Iterator[None]:
        """`member` of `group` holds the group's space (by `rule`) for as long as the block runs."""
        self._rules[group] = rule
        self._members.setdefault(group, []).append(member)
        try:
            yield
        finally:
            members = self._members[group]
            members.remove(member)
            if not members:
                del self._members[group]

    def now(self) -> list[KeptFree]:
        """What each group holding space holds now (read at every copy: members come and go). On the event
        loop, where the members register."""
        return [self._rules[group](sorted(set(members))) for group, members in sorted(self._members.items())]

    def bytes_now(self) -> int:
        return sum(kept.bytes for kept in self.now())

    def said_now(self) -> str:
        """For a refusal: " and N held for ..." (empty when nothing is held)."""
        held = [kept for kept in self.now() if kept.bytes]
        return "".join(f" and {kept.bytes} held for {kept.what}" for kept in held)
