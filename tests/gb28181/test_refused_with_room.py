"""Which disk-full copies count toward a give-up (`stuck_disk_full`, review 29): only those cut by a write
refused while statvfs showed room (EDQUOT; ENOSPC with a flush's worth free), never the guard's cut nor an
ENOSPC on a disk statvfs showed full; a manifest's `write_refused` is read back only as one of the two
names it can hold (hostile or garbled values count as no refusal)."""

from __future__ import annotations

from typing import Any

import pytest

from edge.gb28181.media import FLUSH_BYTES
from edge.sources.gb28181.downloads import refused_with_room, stuck_disk_full
from edge.sources.gb28181.recordings import (
    _SEALED_FACTS,
    INTERRUPTED_DISK_FULL,
    SealedDownload,
    _sealed_download,
)


def _cut(attempt: int, reached: int, refused: str | None = None, free: int | None = None) -> SealedDownload:
    return SealedDownload(f"item-{attempt}", attempt, complete=False, interrupted=INTERRUPTED_DISK_FULL,
                          received_bytes=reached, written_bytes=reached, write_refused=refused,
                          write_refused_free_bytes=free)


def test_repeated_quota_refusals_at_the_same_byte_are_stuck() -> None:
    cuts = [_cut(1, 1000, "EDQUOT", 1 << 30), _cut(2, 1000, "EDQUOT", 1 << 30),
            _cut(3, 900, "ENOSPC", FLUSH_BYTES)]
    assert [d.attempt for d in stuck_disk_full(cuts)] == [2, 3]


def test_guard_cuts_and_enospc_on_a_full_disk_are_never_stuck() -> None:
    cuts = [_cut(1, 1000), _cut(2, 500), _cut(3, 400, "ENOSPC", 0), _cut(4, 300, "ENOSPC", FLUSH_BYTES - 1),
            _cut(5, 200, "ENOSPC", None)]
    assert stuck_disk_full(cuts) == []
    # control: the same reach, refused by a quota, counts
    assert [d.attempt for d in stuck_disk_full([*cuts, _cut(6, 200, "EDQUOT")])] == [6]


def _facts(**given: tuple[str | None, Any]) -> dict[str, tuple[str | None, Any]]:
    facts: dict[str, tuple[str | None, Any]] = {name: (None, None) for name in _SEALED_FACTS}
    facts.update(given)
    return facts


@pytest.mark.parametrize("value", ["EDQUOT\n", "edquot", "E" * 10_000, "ENOSPC; EDQUOT", ""])
def test_a_garbled_write_refused_in_a_manifest_counts_as_none(value: str) -> None:
    sealed = _sealed_download("raw-ps#2", "item", _facts(write_refused=("text", value),
                                                         write_refused_free_bytes=("integer", 1 << 30)))
    assert sealed is not None and sealed.write_refused is None and not refused_with_room(sealed)


def test_a_manifest_write_refused_is_read_back() -> None:
    sealed = _sealed_download("raw-ps#2", "item", _facts(write_refused=("text", "ENOSPC"),
                                                         write_refused_free_bytes=("integer", 1 << 30)))
    assert sealed is not None and sealed.write_refused == "ENOSPC" and refused_with_room(sealed)
    negative = _sealed_download("raw-ps", "item", _facts(write_refused=("text", "ENOSPC"),
                                                         write_refused_free_bytes=("integer", -5)))
    assert negative is not None and negative.write_refused_free_bytes is None
    assert not refused_with_room(negative)
