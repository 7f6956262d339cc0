"""Files in a directory of the station itself, as a source of the ingest pipeline.

For evidence that is already on the station's disk: a drop folder an operator fills from a card
reader, and the pattern the room source follows for the segments its ffmpeg has just closed (files the
station wrote itself, with the case known up front). Only regular files directly in the directory are
offered; each is opened relative to the directory's descriptor without following symlinks, so nothing
outside it is read, and anything else is reported as refused. Identity: (directory label, file name,
size, mtime), as for a recorder file, so a file replaced under the same name is a new original.

The original stays where it is: removing it after sealing is the caller's decision.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.ingest.manifest import iso_from_ns
from edge.ingest.source import FileReader, ItemReader, OfferedItem, Origin, OriginalKey, ReaderOpener

SOURCE_KIND = "local"
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
MAX_FILES = 10_000


@dataclass(frozen=True)
class LocalListing:
    items: list[OfferedItem] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (printable name, why)


class LocalDirectory:
    """A `Source`: the regular files of one directory on the station."""

    kind = SOURCE_KIND

    def __init__(
        self,
        directory: Path,
        *,
        label: str,
        station_id: str,
        case: Mapping[str, Any],
        collector_no: str = "",
        station_clock_synchronised: bool = False,
    ) -> None:
        self.directory = directory
        self.label = label
        self.station_id = station_id
        self.case = dict(case)
        self.collector_no = collector_no
        self.station_clock_synchronised = station_clock_synchronised

    @property
    def device(self) -> str:
        return self.label

    def reachable(self) -> bool:
        return self.directory.is_dir()

    def listing(self) -> LocalListing:
        listing = LocalListing()
        dir_fd = os.open(self.directory, DIR_FLAGS)
        try:
            for raw in sorted(os.fsencode(n) for n in os.listdir(dir_fd)):
                name = os.fsdecode(raw)
                shown = raw.decode("utf-8", errors="backslashreplace")
                try:
                    info = os.stat(raw, dir_fd=dir_fd, follow_symlinks=False)
                except OSError as exc:
                    listing.refused.append((shown, f"cannot stat: {exc.strerror or exc}"))
                    continue
                if not stat.S_ISREG(info.st_mode):
                    listing.refused.append((shown, "not a regular file (symlinks are never followed)"))
                elif len(listing.items) >= MAX_FILES:
                    listing.refused.append((shown, f"more than {MAX_FILES} files in the directory"))
                else:
                    listing.items.append(self._item(name, raw, shown, info))
        finally:
            os.close(dir_fd)
        return listing

    def _item(self, name: str, raw: bytes, shown: str, info: os.stat_result) -> OfferedItem:
        try:
            key = raw.decode("utf-8")
        except UnicodeDecodeError:
            key = "hex:" + raw.hex()
        original: dict[str, Any] = {
            "name": shown,
            "path": shown,
            "device_mtime": iso_from_ns(info.st_mtime_ns),
        }
        if key.startswith("hex:"):
            original["path_bytes_hex"] = raw.hex()
        origin = Origin(
            device=self.label,
            officer_no=self.collector_no,
            original=original,
            source={"kind": SOURCE_KIND, "station": self.station_id, "directory": self.label},
            time={
                "recorded_start": None,
                # Written on the station's own disk: the station clock is the device clock.
                "device_clock_offset_ms": 0,
                "station_clock_synchronised": self.station_clock_synchronised,
            },
            case=self.case,
        )
        return OfferedItem(
            key=OriginalKey(SOURCE_KIND, self.label, key, f"{info.st_size}:{info.st_mtime_ns}"),
            name=name,
            display=shown,
            size=info.st_size,
            origin=origin,
            open=self._opener(raw, info, shown, verification=False),
            reopen=self._opener(raw, info, shown, verification=True),
        )

    def _opener(self, raw: bytes, info: os.stat_result, shown: str, *, verification: bool) -> ReaderOpener:
        def open_reader() -> ItemReader:
            dir_fd = os.open(self.directory, DIR_FLAGS)
            try:
                fd = os.open(raw, FILE_FLAGS, dir_fd=dir_fd)
            finally:
                os.close(dir_fd)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise OSError(f"{shown}: no longer a regular file")
            os.set_blocking(fd, True)
            return FileReader(
                fd, size=info.st_size, mtime_ns=info.st_mtime_ns, what=f"{self.label}:{shown}",
                drop_cache=verification,
            )

        return open_reader
