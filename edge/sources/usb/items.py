"""A recorder file as an item for the ingest pipeline: its identity, its readers and its origin facts.

Identity: (device serial, exact path bytes on the volume, size, mtime), so a file re-recorded at the
same path is a new original. Size and mtime are not proof (a recorder whose clock was reset can write a
new file with the path, size and mtime of one it erased): a key that was erased is a new original
when it is listed again, and one that was sealed but not erased is proven the same by its hash
(:meth:`edge.ingest.pipeline.IngestPipeline.ingest`). A path that is not UTF-8 is recorded as its exact
bytes (`path_bytes_hex`, and `original_bytes_hex` in ledger entries) beside a readable form.

Readers open the file component by component without following symlinks
(:func:`open_volume_file`), relative to the session's bound volume root (never by path: see
:mod:`edge.sources.usb.mounted`), and refuse a file whose size or mtime changed since listing. Every read
drops the file's cached pages first and checks that none stayed (:class:`edge.ingest.source.FileReader`):
the one pass that is copied and hashed reads the recorder itself, and so does any later read again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from drivers.usb.mass_storage import parse_recorder_file_name
from edge.config.station import CaseDefaults
from edge.ingest.copy import read_error
from edge.ingest.manifest import iso_from_ns
from edge.ingest.source import FileReader, ItemReader, OfferedItem, Origin, OriginalKey, ReaderOpener
from edge.sources.usb.enumerate import VolumeFile
from edge.sources.usb.identity import SessionInfo
from edge.sources.usb.mounted import VolumeRoot

SOURCE_KIND = "usb"


def original_key(device_serial: str, file: VolumeFile) -> OriginalKey:
    return OriginalKey(SOURCE_KIND, device_serial, file.key, f"{file.size}:{file.mtime_ns}")


class _BoundFileReader(FileReader):
    """A reader that stops at the next chunk once the station saw the volume's mount go (a bind or
    lazily unmounted mount can still serve an open file: the session must not go on as if docked)."""

    def __init__(self, root: VolumeRoot, fd: int, **kwargs: Any) -> None:
        self.root = root
        super().__init__(fd, **kwargs)

    def readinto(self, buffer: memoryview) -> int:
        try:
            self.root.check_not_lost()
        except OSError as exc:
            raise read_error(exc, self.what) from exc
        return super().readinto(buffer)


def file_opener(root: VolumeRoot, file: VolumeFile, *, what: str) -> ReaderOpener:
    def open_reader() -> ItemReader:
        fd = root.open_file(file)
        return _BoundFileReader(root, fd, size=file.size, mtime_ns=file.mtime_ns, what=what, drop_cache=True)

    return open_reader


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


def manifest_time(recorded_start: str | None, session: SessionInfo) -> dict[str, Any]:
    """The manifest's `time` block (the pipeline adds `acquired_utc`): device time as written, the
    clock offset measured at docking or, for recorders that cannot be asked, its labelled estimate."""
    clock = session.clock
    facts: dict[str, Any] = {
        # As the device wrote it (local device time, from the file name), never corrected.
        "recorded_start": recorded_start,
        # Measured over the control protocol at docking; None when the device has no readable clock.
        "device_clock_offset_ms": clock.offset_ms,
        "device_tz_offset_min": clock.tz_offset_min,
        "station_clock_synchronised": clock.station_synchronised,
        # Which time-sync source decided (chrony, timesyncd, timedated, adjtimex, config, none).
        "station_clock_source": clock.station_clock_source,
    }
    if clock.estimate is not None:
        # Mass-storage-only recorders: what the volume's times suggest, labelled as an estimate.
        facts["device_clock_offset_estimate"] = clock.estimate.as_dict()
    return facts


def path_bytes_fact(file: VolumeFile) -> dict[str, str]:
    """For the ledger's entries, beside the readable `original`: the exact bytes of a path that is
    not UTF-8 (two such paths can read alike)."""
    return {} if file.path_is_utf8 else {"original_bytes_hex": file.raw_path.hex()}


def file_origin(file: VolumeFile, session: SessionInfo, case_defaults: CaseDefaults,
                assignment: Mapping[str, Any] | None = None) -> Origin:
    parsed = parse_recorder_file_name(file.name)
    original: dict[str, Any] = {
        "name": file.name,
        "path": file.display_path,
        "device_mtime": iso_from_ns(file.mtime_ns),
    }
    if not file.path_is_utf8:
        # `path` is then only a readable rendering (several byte strings can render alike): the
        # exact bytes of the whole path, any component not UTF-8, are the recorded identity.
        original["path_bytes_hex"] = file.raw_path.hex()
        original["path_readable_from"] = file.readable_from
    identity = session.identity
    return Origin(
        device=identity.device_serial,
        officer_no=identity.officer_no,
        original=original,
        source={
            "kind": SOURCE_KIND,
            "station": session.station_id,
            "session": session.session,
            "bay": session.bay,
            "device_serial": identity.device_serial,
            "usb_serial": identity.usb_serial,
            **({"usb_port": identity.usb_port} if identity.usb_port else {}),
            "id_code": identity.id_code,
            "identity_source": identity.source,
            "officer_no": identity.officer_no,
            "officer_name": identity.officer_name,
            "unit_code": identity.unit_code,
            "unit_name": identity.unit_name,
        },
        time=manifest_time(parsed.recorded_at.isoformat() if parsed else None, session),
        case=case_block(case_defaults, session, important=bool(parsed and parsed.important)),
        facts={"session": session.session, "bay": session.bay, **path_bytes_fact(file),
               **assignment_facts(assignment)},
        assignment=assignment,
    )


def assignment_facts(assignment: Mapping[str, Any] | None) -> dict[str, Any]:
    """For the item's `acquired` ledger entry: the assignment status and holder, so that a mismatch or a
    recording no assignment covers is flagged in the ledger with the item, not only in its manifest."""
    if assignment is None:
        return {}
    holder = assignment.get("holder")
    return {"assignment_status": assignment.get("status"),
            "assignment_holder": holder.get("officer_no") if isinstance(holder, Mapping) else None}


def volume_item(
    root: VolumeRoot, file: VolumeFile, session: SessionInfo, case_defaults: CaseDefaults,
    assignment: Mapping[str, Any] | None = None,
) -> OfferedItem:
    device = session.identity.device_serial
    return OfferedItem(
        key=original_key(device, file),
        name=file.name,
        display=file.display_path,
        size=file.size,
        origin=file_origin(file, session, case_defaults, assignment),
        open=file_opener(root, file, what=f"{device}:{file.display_path}"),
        reopen=file_opener(root, file, what=file.display_path),
    )
