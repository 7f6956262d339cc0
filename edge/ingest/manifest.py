"""Build an item's manifest (DESIGN.md "Evidence item") from what the offload learned. Pure."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from drivers.usb.mass_storage import parse_recorder_file_name
from edge.config.station import CaseDefaults
from edge.sources.usb.enumerate import VolumeFile
from edge.sources.usb.identity import SessionInfo

MANIFEST_FORMAT = "evidence-edge/manifest/1"


def iso_from_ns(ns: int) -> str:
    """UTC ISO-8601 of a file time; a time no calendar can hold (corrupt FAT entry) is kept as raw ns."""
    try:
        return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    except (OverflowError, ValueError, OSError):
        return f"unrepresentable: {ns} ns since 1970"


def case_block(defaults: CaseDefaults, session: SessionInfo, important: bool) -> dict[str, Any]:
    identity = session.identity
    collector = defaults.collector or (
        f"{identity.officer_name}({identity.officer_no})" if identity.officer_name else identity.officer_no
    )
    return {
        "case_number": defaults.case_number,
        "location": defaults.location,
        "collector": collector,
        "subject": defaults.subject,
        "important": important,
        "category": defaults.category,
        "retention": "permanent" if important and defaults.retention == "6-months" else defaults.retention,
    }


def build_manifest(
    *,
    item: str,
    sha256: str,
    size: int,
    file: VolumeFile,
    session: SessionInfo,
    media: dict[str, Any],
    acquired_utc: str,
    case_defaults: CaseDefaults,
    chain_seq: int,
    chain_hash: str,
) -> dict[str, Any]:
    parsed = parse_recorder_file_name(file.name)
    original: dict[str, Any] = {
        "name": file.name,
        "path": file.display_path,
        "device_mtime": iso_from_ns(file.mtime_ns),
    }
    if not file.name_is_utf8:
        original["path_bytes_hex"] = b"/".join(file.parts).hex()
    identity = session.identity
    clock = session.clock
    return {
        "format": MANIFEST_FORMAT,
        "item": item,
        "sha256": sha256,
        "size": size,
        "media": media,
        "original": original,
        "source": {
            "kind": "usb",
            "station": session.station_id,
            "session": session.session,
            "bay": session.bay,
            "device_serial": identity.device_serial,
            "usb_serial": identity.usb_serial,
            "id_code": identity.id_code,
            "identity_source": identity.source,
            "officer_no": identity.officer_no,
            "officer_name": identity.officer_name,
            "unit_code": identity.unit_code,
            "unit_name": identity.unit_name,
        },
        "time": {
            # As the device wrote it (local device time, from the file name), never corrected.
            "recorded_start": parsed.recorded_at.isoformat() if parsed else None,
            "device_clock_offset_ms": clock.offset_ms,
            "device_tz_offset_min": clock.tz_offset_min,
            "acquired_utc": acquired_utc,
            "station_clock_synchronised": clock.station_synchronised,
        },
        "case": case_block(case_defaults, session, important=bool(parsed and parsed.important)),
        "chain": {"seq": chain_seq, "entry_hash": chain_hash},
    }
