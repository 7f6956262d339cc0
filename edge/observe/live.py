"""Live per-bay progress for a long command (`edge demo`): rich progress bars on a terminal, one plain
line per change that matters (a state, a file done) otherwise. Fed by the status board's change stream,
the same one the dock screen reads."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from edge.observe.board import StatusBoard
from edge.observe.terminal import bay_line, state_words


class LiveBays:
    """Shows the board's bays until stopped. ``show_empty``: also bays that have nothing docked."""

    def __init__(self, board: StatusBoard, stream: TextIO, *, show_empty: bool = False) -> None:
        self.board = board
        self.console = Console(file=stream, highlight=False)
        self.show_empty = show_empty
        self._task: asyncio.Task[None] | None = None
        self._progress: Progress | None = None
        self._rows: dict[str, TaskID] = {}
        self._last_line: dict[str, tuple[Any, ...]] = {}

    @property
    def live(self) -> bool:
        return self.console.is_terminal

    async def __aenter__(self) -> LiveBays:
        if self.live:
            self._progress = Progress(
                TextColumn("{task.description}", markup=False),
                BarColumn(bar_width=30),
                TextColumn("{task.fields[files]}"),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                refresh_per_second=8,
            )
            self._progress.start()
        self._task = asyncio.create_task(self._follow(), name="live-bays")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for bay in self.board.bays():
            self._show(bay)  # the last state of each bay, whatever the stream had not delivered
        if self._progress is not None:
            self._progress.stop()

    def print(self, text: str) -> None:
        """A line of the command's own between the bars (rich keeps the bars below it)."""
        self.console.print(Text(text), soft_wrap=True)

    async def _follow(self) -> None:
        subscription = self.board.subscribe()
        try:
            while True:
                kind, data = await subscription.get()
                if kind == "snapshot":
                    for bay in data["bays"]:
                        self._show(bay)
                elif kind == "bay":
                    self._show(data)
        finally:
            subscription.close()

    def _show(self, bay: dict[str, Any]) -> None:
        key = str(bay["bay"])
        unseen = key not in self._rows and key not in self._last_line
        if bay["state"] in ("empty", "removed") and unseen and not self.show_empty:
            return
        if self._progress is None:
            if bay["state"] == "copying" and not bay["files_total"]:
                return  # its files are being counted: the next change says how many
            # Plain: a line when the state or the count of files done changes, not for every byte.
            mark = (bay["state"], bay.get("error_class"), bay["files_done"], bay["files_total"])
            if self._last_line.get(key) != mark:
                self._last_line[key] = mark
                self.print(bay_line(bay))
            return
        officer = bay.get("officer") or {}
        who = f"{officer.get('name', '')} {officer.get('badge', '')}".strip()
        description = f"bay {key:>2} {who:<12} {state_words(bay):<18}"
        files = f"{bay['files_done']}/{bay['files_total']} files" if bay["files_total"] else ""
        row = self._rows.get(key)
        if row is None:
            row = self._rows[key] = self._progress.add_task(description, total=None, files=files)
        total = bay["bytes_total"] or None
        self._progress.update(row, description=description, total=total, completed=bay["bytes_done"],
                              files=files)
