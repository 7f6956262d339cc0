"""Room sessions kept on disk under the store, so that a crash of the agent never loses one.

Layout under ``<store>/rooms/`` (:data:`ROOMS_DIR`; `edge verify` knows it):

* ``sessions/<session>.json``: each session as :meth:`RoomSession.to_json` (canonical JSON), replaced
  atomically (temp file, fsync, rename, directory fsync) at every change;
* ``capture/<session>/<source>/<run>/``: the segments ffmpeg writes and its segment list, until sealed;
* ``products-owed.json``: which stopped sessions still owe their products, read from the ledger up to a
  seq (edge.rooms.owed), so that a start reads only what the ledger gained since.

At start, :meth:`SessionFiles.load` reads every session back; one whose state says recording was
interrupted by the stop or crash and is resumed by the service. A file that is not a session is reported,
never deleted.
"""

from __future__ import annotations

import logging
import stat
from pathlib import Path

from edge.custody.canonical import canonical_json, parse_json
from edge.custody.errors import CanonicalJsonError
from edge.durable.files import SmallFileError, fsync_dir, make_dirs_durable, read_small_file, write_atomic
from edge.rooms.session import RoomSession, SessionError

log = logging.getLogger(__name__)

ROOMS_DIR = "rooms"
MAX_SESSION_FILE_BYTES = 4 << 20


class SessionFiles:
    """The session files of one store."""

    def __init__(self, store_root: Path) -> None:
        self.root = store_root / ROOMS_DIR
        self.sessions_dir = self.root / "sessions"
        self.capture_dir = self.root / "capture"

    def prepare(self) -> None:
        make_dirs_durable(self.sessions_dir)
        make_dirs_durable(self.capture_dir)

    def path(self, session: str) -> Path:
        return self.sessions_dir / f"{session}.json"

    def save(self, session: RoomSession) -> None:
        write_atomic(self.path(session.session), canonical_json(session.to_json()))

    def load(self) -> tuple[list[RoomSession], list[tuple[str, str]]]:
        """Every stored session, and (file name, why) of each file that is not one."""
        sessions: list[RoomSession] = []
        problems: list[tuple[str, str]] = []
        if not self.sessions_dir.is_dir():
            return sessions, problems
        for path in sorted(self.sessions_dir.iterdir()):
            if path.name.startswith("."):
                continue  # a temporary of an interrupted write
            try:
                doc = parse_json(read_small_file(path, MAX_SESSION_FILE_BYTES, expected="a room session"))
                session = RoomSession.from_json(doc)
                if path.name != f"{session.session}.json":
                    raise SessionError(f"names session {session.session}")
            except (SmallFileError, CanonicalJsonError, SessionError, ValueError) as exc:
                problems.append((path.name, str(exc)))
                continue
            sessions.append(session)
        return sessions, problems

    def run_dir(self, session: str, source: str, run: str) -> Path:
        return self.capture_dir / session / source / run

    def clear_capture(self, session: str) -> list[str]:
        """Remove a stopped session's capture directory once nothing in it awaits sealing: the segment
        lists and pid files go (the ledger holds every segment's times and hash). Returns the segment
        files still there (not sealed: the directory stays, for the next look), empty when it went. An
        empty segment file (ffmpeg opened it and was stopped before it wrote a byte) holds nothing to
        seal and is never sealed (:func:`edge.rooms.recording.leftover_segments` skips it): it does not keep
        the session unfinished for ever."""
        base = self.capture_dir / session
        if not base.is_dir():
            return []
        left = sorted(
            str(p.relative_to(base)) for p in base.rglob("*")
            if (p.suffix == ".mp4" and not _empty_file(p)) or p.suffix == ".json"
        )
        if left:
            return left
        for path in sorted(base.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            else:
                path.unlink()
        base.rmdir()
        fsync_dir(self.capture_dir)
        return []


def _empty_file(path: Path) -> bool:
    """A regular file (not a link) of 0 bytes."""
    try:
        info = path.lstat()
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_size == 0
