"""Watch the recorder mount root (watchdog/inotify) and report volumes as they become readable."""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VolumeEvent:
    path: Path
    present: bool


class _Handler(FileSystemEventHandler):
    def __init__(
        self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[VolumeEvent], root: Path
    ) -> None:
        self.loop = loop
        self.queue = queue
        self.root = root

    def _emit(self, raw: str | bytes, present: bool) -> None:
        path = Path(os.fsdecode(raw))
        if path.parent != self.root or path.name.startswith("."):
            return
        self.loop.call_soon_threadsafe(self.queue.put_nowait, VolumeEvent(path, present))

    def on_created(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            self._emit(event.src_path, True)

    def on_moved(self, event: FileSystemEvent) -> None:
        self._emit(event.src_path, False)
        self._emit(event.dest_path, True)

    def on_deleted(self, event: FileSystemEvent) -> None:
        self._emit(event.src_path, False)


class VolumeWatcher:
    """Volumes appearing under and leaving the mount root, starting with those already there."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.queue: asyncio.Queue[VolumeEvent] = asyncio.Queue()
        self._observer: Observer | None = None  # type: ignore[valid-type]

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        observer = Observer()
        observer.schedule(
            _Handler(asyncio.get_running_loop(), self.queue, self.root), str(self.root), recursive=False
        )
        observer.daemon = True
        observer.start()
        self._observer = observer
        for entry in sorted(self.root.iterdir()):
            if entry.is_dir() and not entry.name.startswith("."):
                self.queue.put_nowait(VolumeEvent(entry, True))

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None


async def wait_until_readable(path: Path, timeout_s: float, interval_s: float = 0.05) -> bool:
    """A new directory is a volume once it is a mount point or has content (a FUSE or udisks mount
    shows the empty mount point first); False when it never became readable or went away."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        try:
            if os.path.ismount(path) or _has_entries(path):
                return True
        except OSError:
            return False
        await asyncio.sleep(interval_s)
    return False


def _has_entries(path: Path) -> bool:
    with os.scandir(path) as entries:
        return any(True for _ in entries)
