"""Logging set-up for every `edge` command: one record is one line, and no record drives a terminal.

Log messages quote what devices say (a recorder's file names, its serial number, an exception that
carries a name from the volume). Every record goes through :func:`edge.custody.text.printable`, the
one escaping function for device text, so a name holding a newline cannot forge a second log line and
one holding ESC sequences or bidi overrides cannot drive the terminal or the journal viewer. A
traceback keeps its own line structure (the frames are the station's code); the exception messages
in it, which can quote device text, are escaped like the message.
"""

from __future__ import annotations

import logging
import traceback
from typing import IO

from edge.custody.text import printable

__all__ = ["PrintableFormatter", "configure_logging", "printable_handler"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The lines of a formatted traceback that are the station's own (frames and chain separators).
_TRACEBACK_HEAD = "Traceback (most recent call last):\n"
_CHAIN_SEPARATORS = frozenset(
    {
        "\nThe above exception was the direct cause of the following exception:\n\n",
        "\nDuring handling of the above exception, another exception occurred:\n\n",
    }
)


class PrintableFormatter(logging.Formatter):
    """A formatter whose message and exception messages are escaped by `printable`."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record))

    def formatException(self, ei: logging._SysExcInfoType) -> str:
        exc = ei[1]
        if exc is None:
            return printable(super().formatException(ei))
        lines: list[str] = []
        for chunk in traceback.TracebackException.from_exception(exc).format():
            if chunk == _TRACEBACK_HEAD or chunk in _CHAIN_SEPARATORS or chunk.startswith("  "):
                lines.append(chunk)  # a frame (file, line, code) or the chain's own words
            else:
                lines.append(printable(chunk.removesuffix("\n")) + "\n")  # `Type: message` from anyone
        return "".join(lines).removesuffix("\n")

    def formatStack(self, stack_info: str) -> str:
        return stack_info  # the station's own frames


def printable_handler(stream: IO[str]) -> logging.Handler:
    """A handler writing the house format to `stream`, every record escaped."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(PrintableFormatter(LOG_FORMAT))
    return handler


def configure_logging(level: int, stream: IO[str]) -> None:
    """The root logger writes printable lines to `stream` (stderr: the journal under systemd)."""
    logging.basicConfig(level=level, handlers=[printable_handler(stream)])
