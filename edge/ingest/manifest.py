"""Build an item's manifest (DESIGN.md "Evidence item") from its origin and what the pipeline learned.

Pure. Every source fills the same blocks (:class:`edge.ingest.source.Origin`), so items from a USB
recorder, a GB/T 28181 download or a room segment have one manifest shape.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from edge.ingest.source import Origin

MANIFEST_FORMAT = "evidence-edge/manifest/1"


def iso_from_ns(ns: int) -> str:
    """UTC ISO-8601 of a file time; a time no calendar can hold (corrupt FAT entry) is kept as raw ns."""
    try:
        return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    except (OverflowError, ValueError, OSError):
        return f"unrepresentable: {ns} ns since 1970"


def build_manifest(
    *,
    item: str,
    sha256: str,
    size: int,
    origin: Origin,
    media: dict[str, Any],
    acquired_utc: str,
    chain_seq: int,
    chain_hash: str,
    sidecar_reason: str | None = None,
) -> dict[str, Any]:
    """The unsigned manifest. `sidecar_reason` is why the manifest cannot be embedded in the file
    (None: it is, in a trailing evidence box); the `seal` block says which, so a verifier knows whether
    the whole file is the original even when it carries an evidence box of its own."""
    seal: dict[str, Any] = {"embedded": sidecar_reason is None}
    if sidecar_reason is not None:
        seal["reason"] = sidecar_reason
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "item": item,
        "sha256": sha256,
        "size": size,
        "media": media,
        "original": dict(origin.original),
        "source": dict(origin.source),
        "time": {**origin.time, "acquired_utc": acquired_utc},
        "case": dict(origin.case),
        "chain": {"seq": chain_seq, "entry_hash": chain_hash},
        "seal": seal,
    }
    if origin.assignment is not None:
        manifest["assignment"] = dict(origin.assignment)
    return manifest
