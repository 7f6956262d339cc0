"""Logging set-up for every `edge` command: one record is one line (or one journal entry), with the
event's item, bay, device and station as fields, and no record drives a terminal.

Log messages quote what devices say (a recorder's file names, its serial number, an exception that
carries a name from the volume). Every record goes through :func:`edge.custody.text.printable`, the
one escaping function for device text, so a name holding a newline cannot forge a second log line and
one holding ESC sequences or bidi overrides cannot drive the terminal or the journal viewer. A
traceback keeps its own line structure (the frames are the station's code); the exception messages
in it, which can quote device text, are escaped like the message.

**Fields.** A log call names what it is about with :func:`event_fields`::

    log.warning("recorder refused: %s", reason, extra=event_fields(device=serial, bay=3))

and every format carries them as fields: ``item``, ``bay``, ``device``, ``station`` (and any other
snake_case name). Values are escaped like the message.

**Formats** (:func:`configure_logging`):

- ``journal``: the systemd journal's native protocol (a datagram per record to
  ``/run/systemd/journal/socket``; a record too large for a datagram goes as a sealed memfd, as
  libsystemd's ``sd_journal_send`` does). ``MESSAGE``, ``PRIORITY`` (syslog level), ``SYSLOG_IDENTIFIER``
  (``edge``), ``LOGGER``, ``CODE_FILE``/``CODE_LINE``/``CODE_FUNC`` and each field upper-cased
  (``ITEM=``, ``BAY=``, ``DEVICE=``, ``STATION=``), so ``journalctl -u edge-station DEVICE=3300001``
  finds one recorder's events. Written here (about 60 lines) rather than taken from systemd-python,
  which needs libsystemd's headers and a C compiler at install time; the protocol is small and
  stable (systemd.io/JOURNAL_NATIVE_PROTOCOL) and the tests read it back from a real socket.
- ``json``: one JSON object per line: ``time`` (UTC ISO 8601), ``level``, ``logger``, ``message``, the
  fields, ``exception`` (the formatted traceback) when there is one.
- ``text``: the house line ``TIME LEVEL LOGGER: MESSAGE``; a record with fields reads
  ``TIME LEVEL LOGGER: key=value ... | MESSAGE``: the fields first, each value a bare word or a JSON
  string, so device text in the message cannot put a forged ``device=`` ahead of the real one.
- ``auto`` (the default): ``journal`` when stderr is the journal (systemd sets ``JOURNAL_STREAM`` to
  the device and inode of the stream it connected; a match means stderr goes to the journal and no
  redirection happened in between), otherwise ``text``. ``json`` is chosen explicitly, for log
  shippers (``edge --log-format json``).

No secrets: the formats print the message and the fields the code passed, nothing from the
environment or the configuration; passwords are resolved at the moment of use and never passed to a
log call (``tests/station/test_logs_no_secrets.py`` feeds them through the paths that log).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import struct
import sys
import traceback
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import IO, Any, Literal

from edge.custody.text import printable

__all__ = [
    "EVENT_FIELDS",
    "JOURNAL_SOCKET",
    "LOG_FORMATS",
    "JournalHandler",
    "JsonLineFormatter",
    "LogFormat",
    "PrintableFormatter",
    "configure_logging",
    "event_fields",
    "journal_is_stderr",
    "printable_handler",
    "record_fields",
    "text_fields",
]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LogFormat = Literal["auto", "text", "json", "journal"]
LOG_FORMATS: tuple[LogFormat, ...] = ("auto", "text", "json", "journal")
# The attribute of a LogRecord that holds its fields (set through `extra=event_fields(...)`).
EVENT_FIELDS = "edge_fields"
JOURNAL_SOCKET = "/run/systemd/journal/socket"
SYSLOG_IDENTIFIER = "edge"
# The lines of a formatted traceback that are the station's own (frames and chain separators).
_TRACEBACK_HEAD = "Traceback (most recent call last):\n"
_CHAIN_SEPARATORS = frozenset(
    {
        "\nThe above exception was the direct cause of the following exception:\n\n",
        "\nDuring handling of the above exception, another exception occurred:\n\n",
    }
)
_MAX_FIELD_NAME = 32
_MAX_FIELD_CHARS = 1024
# What the handler itself writes: event fields of the same name are written as EDGE_<NAME>.
_JOURNAL_OWN_FIELDS = frozenset(
    {"MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "LOGGER", "CODE_FILE", "CODE_LINE", "CODE_FUNC"}
)
# syslog(3) priorities of the logging levels.
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


def event_fields(**values: object) -> dict[str, Any]:
    """``extra=`` for a log call: the event's structured fields (``item``, ``bay``, ``device``,
    ``station``, ...). ``None`` values are left out."""
    return {EVENT_FIELDS: {name: value for name, value in values.items() if value is not None}}


def _field_value(value: object) -> str | int | float | bool:
    if isinstance(value, bool | int | float):
        return value
    text = printable(str(value))
    return text if len(text) <= _MAX_FIELD_CHARS else text[: _MAX_FIELD_CHARS - 3] + "..."


def record_fields(record: logging.LogRecord) -> dict[str, str | int | float | bool]:
    """The record's fields, names checked (snake_case ASCII) and values escaped."""
    raw = getattr(record, EVENT_FIELDS, None)
    if not isinstance(raw, Mapping):
        return {}
    fields: dict[str, str | int | float | bool] = {}
    for name, value in raw.items():
        if (isinstance(name, str) and 0 < len(name) <= _MAX_FIELD_NAME and name[0].isalpha()
                and all(ch.isascii() and (ch.islower() or ch.isdigit() or ch == "_") for ch in name)):
            fields[name] = _field_value(value)
    return fields


class PrintableFormatter(logging.Formatter):
    """A formatter whose message and exception messages are escaped by `printable`; the record's fields
    come first after ``LOGGER:``, as ``key=value`` (see :func:`text_fields`), then ``|`` and the message.

    The fields go before the message because the message quotes device text: a recorder file named
    ``x device=3399999 bay=7 .MP4`` would otherwise put a forged ``device=`` ahead of the real one for
    a logfmt reader that takes the first (Loki, Vector, fluent-bit)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = record_fields(record)
        if not fields:
            return printable(line)
        message = record.message  # set by format() just before; the house format ends with it
        if message and line.endswith(message):
            head = line[: len(line) - len(message)]
            return printable(head) + text_fields(fields) + " | " + printable(message)
        return printable(line) + " | " + text_fields(fields)  # a format without the message last

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


class _MessageFormatter(PrintableFormatter):
    """The escaped message and traceback only: the JSON and journal formats carry the rest as fields."""

    def __init__(self) -> None:
        super().__init__("%(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(logging.Formatter.formatMessage(self, record))  # the fields go separately


class JsonLineFormatter(logging.Formatter):
    """One JSON object per record, on one line (see the module)."""

    def __init__(self) -> None:
        super().__init__()
        self._message = _MessageFormatter()

    def format(self, record: logging.LogRecord) -> str:
        message = self._message.format(record)
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        text, _newline, trace = message.partition("\n")
        doc["message"] = text
        for name, value in record_fields(record).items():
            doc.setdefault(name, value)
        if trace:
            doc["exception"] = trace
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


def _journal_field(name: str, value: str) -> bytes:
    encoded = value.encode("utf-8", "backslashreplace")
    if b"\n" in encoded:
        # Binary-safe form: the name, a newline, the length as little-endian 64 bits, the value.
        return name.encode() + b"\n" + struct.pack("<Q", len(encoded)) + encoded + b"\n"
    return name.encode() + b"=" + encoded + b"\n"


class JournalHandler(logging.Handler):
    """Sends each record to journald over its native protocol (see the module)."""

    def __init__(self, address: str = JOURNAL_SOCKET, *, identifier: str = SYSLOG_IDENTIFIER) -> None:
        super().__init__()
        self._address = address
        self._identifier = identifier
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.setFormatter(_MessageFormatter())

    def __repr__(self) -> str:
        return f"JournalHandler(address={self._address!r})"

    def payload(self, record: logging.LogRecord) -> bytes:
        """The datagram for ``record``."""
        parts = [
            _journal_field("MESSAGE", self.format(record)),
            _journal_field("PRIORITY", str(_PRIORITY.get(record.levelno, 6))),
            _journal_field("SYSLOG_IDENTIFIER", self._identifier),
            _journal_field("LOGGER", record.name),
            _journal_field("CODE_FILE", record.pathname or ""),
            _journal_field("CODE_LINE", str(record.lineno)),
        ]
        if record.funcName:
            parts.append(_journal_field("CODE_FUNC", record.funcName))
        for name, value in record_fields(record).items():
            journal_name = name.upper()
            if journal_name in _JOURNAL_OWN_FIELDS:
                journal_name = "EDGE_" + journal_name  # a field may not pose as the entry's own
            parts.append(_journal_field(journal_name, str(value)))
        return b"".join(parts)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = self.payload(record)
            try:
                self._sock.sendto(data, self._address)
            except OSError as exc:
                if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                    raise
                self._send_memfd(data)
        except Exception:
            self.handleError(record)

    def _send_memfd(self, data: bytes) -> None:
        """A record too large for a datagram: its bytes in a sealed memfd, the descriptor passed."""
        fd = os.memfd_create("edge-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.write(fd, data)
            import fcntl

            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
                        | fcntl.F_SEAL_SEAL)
            self._sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))], 0,
                               self._address)
        finally:
            os.close(fd)

    def close(self) -> None:
        try:
            self._sock.close()
        finally:
            super().close()


def journal_is_stderr(stream: IO[str] | None = None, env: Mapping[str, str] | None = None) -> bool:
    """Whether ``stream`` (stderr) is connected to the journal: ``JOURNAL_STREAM`` names its device and
    inode (systemd.exec(5))."""
    environ = os.environ if env is None else env
    value = environ.get("JOURNAL_STREAM", "")
    device, _colon, inode = value.partition(":")
    if not device.isdigit() or not inode.isdigit():
        return False
    target = sys.stderr if stream is None else stream
    try:
        stat = os.fstat(target.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (stat.st_dev, stat.st_ino) == (int(device), int(inode))


def printable_handler(stream: IO[str]) -> logging.Handler:
    """A handler writing the house format to `stream`, every record escaped."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(PrintableFormatter(LOG_FORMAT))
    return handler


def text_fields(fields: Mapping[str, str | int | float | bool]) -> str:
    """Fields as ``key=value`` separated by single spaces; a value that is empty or holds a space, ``=``,
    a quote or a backslash is written as a JSON string, so every value reads back unambiguously (its
    other invisible or look-alike characters are already escaped by `printable`)."""
    shown: list[str] = []
    for name, value in fields.items():
        text = str(value)
        if text == "" or any(ch in text for ch in ' ="\\|'):
            text = json.dumps(text, ensure_ascii=False)
        shown.append(f"{name}={text}")
    return " ".join(shown)


def _handler(log_format: LogFormat, stream: IO[str]) -> logging.Handler:
    if log_format == "auto":
        log_format = "journal" if journal_is_stderr(stream) else "text"
    if log_format == "journal":
        return JournalHandler()
    if log_format == "json":
        handler = logging.StreamHandler(stream)
        handler.setFormatter(JsonLineFormatter())
        return handler
    return printable_handler(stream)


def configure_logging(level: int, stream: IO[str], log_format: LogFormat = "auto") -> None:
    """The root logger writes escaped records to `stream` (stderr: the journal under systemd) in
    ``log_format`` (see the module)."""
    logging.basicConfig(level=level, handlers=[_handler(log_format, stream)])
