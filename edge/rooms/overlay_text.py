"""The text a composite burns in, written to files that ffmpeg's drawtext reads; never into its filter graph.

Room names and case numbers come from the configuration and from operators; spliced into an ffmpeg
filter graph, a ``,`` ``;`` ``[`` or ``'`` in them would change the graph (and ``%{...}`` would be
expanded by drawtext). So the composite's graph names two files only (:mod:`edge.rooms.composite`):

* ``clock.txt``: the station's constant clock line ``%{localtime:...}``, expanded by drawtext at every
  frame (the station's local time: the agent's ``TZ``);
* ``info.txt``: the room name, the case number, the elapsed time of the session and an optional extra line
  (a room panel's temperature and humidity, :meth:`OverlayText.set_extra_line`), drawn with
  ``expansion=none`` (every character as it is) and ``reload=1`` (read again at every frame).

:class:`OverlayText` rewrites ``info.txt`` atomically (a temporary file renamed over it: drawtext reads
the old file or the new one, never half of one, and never finds it missing) whenever its text changes: at
every second of elapsed time, at a change of the session's case number, at a new extra line. The elapsed
time counts from the session's start (its ``started_utc``), not from the composite's run, so a restarted
composite, or a session resumed after the agent stopped, shows the time since the proceeding began.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from edge.durable.files import make_dirs_durable
from edge.rooms.session import RoomSession

log = logging.getLogger(__name__)

CLOCK_FILE = "clock.txt"
INFO_FILE = "info.txt"
# drawtext's expansion of the station's clock: `:` separates a function's arguments, so it is escaped.
CLOCK_TEXT = "%{localtime:%Y-%m-%d %H\\:%M\\:%S}"
MAX_EXTRA_LINE = 64


class OverlayLineError(ValueError):
    """An extra line that cannot be shown (not one printable line, or too long)."""


def format_elapsed(seconds: float) -> str:
    """``HH:MM:SS`` (hours grow past 99 on a very long session; never negative)."""
    whole = max(0, int(seconds))
    return f"{whole // 3600:02d}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def overlay_lines(room_name: str, case_number: str, elapsed_s: float, extra: str = "") -> str:
    """The text of ``info.txt``: one item a line, the extra line last when there is one."""
    lines = [room_name, f"案件编号 {case_number}", f"已用时 {format_elapsed(elapsed_s)}"]
    if extra:
        lines.append(extra)
    return "\n".join(lines)


def check_extra_line(text: str) -> str:
    """`text` as an extra line: printable (no line breaks or control characters), at most 64 characters,
    white space at its ends removed; "" clears the line."""
    if not isinstance(text, str):
        raise OverlayLineError(f"an overlay line must be text, got {type(text).__name__}")
    text = text.strip()
    if not text.isprintable():
        raise OverlayLineError("an overlay line must be one line of printable characters")
    if len(text) > MAX_EXTRA_LINE:
        raise OverlayLineError(f"an overlay line is at most {MAX_EXTRA_LINE} characters, got {len(text)}")
    return text


def started_ns(session: RoomSession) -> int:
    """The session's start (``started_utc``) in ns since the epoch."""
    moment = datetime.strptime(session.started_utc, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000


def replace_text(path: Path, text: str) -> None:
    """`path` now holds `text`: a temporary beside it renamed over it. Not fsynced: the overlay's text is
    not evidence (the segments that show it are), and it is written every second."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


class OverlayText:
    """The overlay files of one session's composite, kept current while :meth:`run` runs."""

    def __init__(
        self,
        directory: Path,
        session: Callable[[], RoomSession],
        *,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.directory = directory
        self.session = session  # read at every write: a changed case number shows within a second
        self.clock_ns = clock_ns
        self.extra = ""
        self.shown: str | None = None

    @property
    def clock_path(self) -> Path:
        return self.directory / CLOCK_FILE

    @property
    def info_path(self) -> Path:
        return self.directory / INFO_FILE

    def set_extra_line(self, text: str) -> None:
        """Show `text` as the last line (a room panel's reading, "温度 22.5℃ 湿度 45%"); "" removes it.
        OverlayLineError when it is not one short printable line (the line shown stays)."""
        self.extra = check_extra_line(text)
        if self.shown is not None:
            self.write()

    def text(self) -> str:
        session = self.session()
        elapsed_s = (self.clock_ns() - started_ns(session)) / 1e9
        return overlay_lines(session.room_name, session.case_number, elapsed_s, self.extra)

    def write(self) -> None:
        """Both files as they should be now (``info.txt`` replaced only when its text changed)."""
        if self.shown is None:
            make_dirs_durable(self.directory)
            replace_text(self.clock_path, CLOCK_TEXT)
        text = self.text()
        if text != self.shown:
            replace_text(self.info_path, text)
            self.shown = text

    async def run(self) -> None:
        """Keep the files current until cancelled: written at once, then just after each whole second of
        elapsed time (and at once when :meth:`set_extra_line` is called)."""
        while True:
            try:
                self.write()
            except OSError as exc:  # a full disk: the composite shows the last text until it is written
                log.warning("overlay text %s not written: %s", self.directory, exc.strerror or exc)
            elapsed_ns = self.clock_ns() - started_ns(self.session())
            await asyncio.sleep((1_000_000_000 - elapsed_ns % 1_000_000_000) / 1e9 + 0.01)
