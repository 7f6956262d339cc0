"""Log formats: journald's native protocol read back from a real socket, JSON lines, text with fields,
the choice of format from JOURNAL_STREAM, and retries summarised instead of one warning per attempt."""

from __future__ import annotations

import array
import io
import json
import logging
import os
import socket
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.custody.ledger import LedgerEntry
from edge.ingest.events import LedgerEventLog
from edge.runtime import logs
from edge.runtime.logs import JournalHandler, JsonLineFormatter, PrintableFormatter, event_fields
from edge.runtime.retrylog import RetrySummary

DEVICE_TEXT = "DSJ\x1b[31m-01\nERROR forged line\u202e"


def parse_native(data: bytes) -> dict[str, str]:
    """journald's native protocol (systemd.io/JOURNAL_NATIVE_PROTOCOL), as journald itself reads it."""
    fields: dict[str, str] = {}
    rest = data
    while rest:
        line_end = rest.index(b"\n")
        line = rest[:line_end]
        if b"=" in line:
            name, value = line.split(b"=", 1)
            rest = rest[line_end + 1:]
        else:
            name = line
            (size,) = struct.unpack("<Q", rest[line_end + 1: line_end + 9])
            value = rest[line_end + 9: line_end + 9 + size]
            assert rest[line_end + 9 + size: line_end + 10 + size] == b"\n"
            rest = rest[line_end + 10 + size:]
        assert name.decode().isupper() or "_" in name.decode(), name
        fields[name.decode()] = value.decode()
    return fields


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[tuple[socket.socket, JournalHandler]]:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(tmp_path / "journal.socket"))
    server.settimeout(10)
    handler = JournalHandler(str(tmp_path / "journal.socket"))
    yield server, handler
    handler.close()
    server.close()


def receive(server: socket.socket) -> dict[str, str]:
    """One entry: a datagram, or a memfd passed with SCM_RIGHTS (read as journald does)."""
    fds = array.array("i")
    data, ancillary, _flags, _address = server.recvmsg(1 << 20, socket.CMSG_SPACE(fds.itemsize))
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    if fds:
        assert data == b""
        fd = fds[0]
        try:
            size = os.fstat(fd).st_size
            data = os.pread(fd, size, 0)
        finally:
            os.close(fd)
    return parse_native(data)


def record(text: str, *args: object, level: int = logging.WARNING, **fields: object) -> logging.LogRecord:
    logger = logging.getLogger("edge.sources.usb.session")
    made = logger.makeRecord(logger.name, level, __file__, 42, text, args, None, func="dock",
                             extra=event_fields(**fields))
    return made


def test_journal_entries_carry_the_event_fields_over_the_native_protocol(
    journal: tuple[socket.socket, JournalHandler],
) -> None:
    server, handler = journal
    handler.emit(record("recorder %s refused: %s", DEVICE_TEXT, "not on the allow-list", item="a1b2",
                        bay=3, device=DEVICE_TEXT, station="ST-01", priority=0, message="forged"))
    entry = receive(server)
    # A field cannot pose as the entry's own (its priority or message).
    assert entry["EDGE_PRIORITY"] == "0" and entry["EDGE_MESSAGE"] == "forged"
    assert entry["PRIORITY"] == "4" and entry["SYSLOG_IDENTIFIER"] == "edge"
    assert entry["LOGGER"] == "edge.sources.usb.session" and entry["CODE_LINE"] == "42"
    assert (entry["ITEM"], entry["BAY"], entry["STATION"]) == ("a1b2", "3", "ST-01")
    # Device text is escaped in the message and in its field: one entry, nothing drives a terminal.
    for text in (entry["MESSAGE"], entry["DEVICE"]):
        assert "\x1b" not in text and "\n" not in text and "\u202e" not in text
        assert "\\x1b" in text and "\\x0a" in text
    assert entry["MESSAGE"].startswith("recorder DSJ\\x1b[31m-01\\x0aERROR forged line")


def test_a_multi_line_message_uses_the_binary_safe_form(
    journal: tuple[socket.socket, JournalHandler],
) -> None:
    server, handler = journal
    try:
        raise ValueError("device said: \x1b]0;owned\x07")
    except ValueError:
        made = logging.getLogger("edge.test").makeRecord("edge.test", logging.ERROR, __file__, 7, "failed",
                                                         (), sys.exc_info())
    handler.emit(made)
    entry = receive(server)
    assert entry["PRIORITY"] == "3"
    lines = entry["MESSAGE"].splitlines()
    assert lines[0] == "failed" and lines[1].startswith("Traceback")
    assert "\x1b" not in entry["MESSAGE"]
    assert "ValueError: device said: \\x1b]0;owned\\x07" in entry["MESSAGE"]


def test_a_record_too_large_for_a_datagram_goes_as_a_memfd(
    journal: tuple[socket.socket, JournalHandler],
) -> None:
    server, handler = journal
    big = "x" * (4 << 20)  # beyond any AF_UNIX datagram (net.core.wmem_max)
    handler.emit(record("%s", big, device="3300001"))
    entry = receive(server)
    assert entry["MESSAGE"] == big and entry["DEVICE"] == "3300001"


def test_json_lines_carry_fields_and_escape_device_text() -> None:
    formatter = JsonLineFormatter()
    line = formatter.format(record("recorder %s refused", DEVICE_TEXT, bay=3, device=DEVICE_TEXT, item=None))
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["level"] == "warning" and doc["logger"] == "edge.sources.usb.session"
    assert doc["bay"] == 3 and "item" not in doc and doc["time"].endswith("Z")
    for text in (doc["message"], doc["device"]):
        assert "\x1b" not in text and "\n" not in text and "\\x0a" in text


def test_text_lines_put_the_fields_before_the_message() -> None:
    line = PrintableFormatter(logs.LOG_FORMAT).format(record("docked", bay=2, device="3300001",
                                                             station="ST-01"))
    assert line.endswith("WARNING edge.sources.usb.session: bay=2 device=3300001 station=ST-01 | docked")
    plain = PrintableFormatter(logs.LOG_FORMAT).format(record("docked"))
    assert plain.endswith("WARNING edge.sources.usb.session: docked")  # no fields: the house line


def _logfmt_first(line: str) -> dict[str, str]:
    """What a logfmt reader that keeps the first occurrence of a key (Loki, Vector) reads."""
    seen: dict[str, str] = {}
    for token in line.split():
        name, equals, value = token.partition("=")
        if equals:
            seen.setdefault(name, value)
    return seen


def test_a_file_name_cannot_forge_the_fields_of_a_text_line(caplog: pytest.LogCaptureFixture) -> None:
    """Review R10: the name `x device=3399999 bay=7 station=OTHER` put forged fields ahead of the real
    ones (they were appended after the message); U+3000 and U+00A0 passed unescaped."""
    caplog.set_level(logging.INFO, logger="edge.ingest.events")
    name = "DCIM/x device=3399999 bay=7 station=OTHER\u3000station=FAKE\u00a0bay=9 .MP4"
    for reason, forged in ((f"{name}: read error", True), ("DCIM/0001.MP4: read error", False)):
        entry = LedgerEntry(seq=5, time="2026-12-05T00:00:00Z", type="error",
                            item="0b5c2a5e-0000-4000-8000-000000000001",
                            data={"device_serial": "3300001", "bay": 2, "stage": "copy", "reason": reason},
                            prev="0" * 64, hash="1" * 64)
        LedgerEventLog("TEST-STATION").committed([entry])
        line = PrintableFormatter(logs.LOG_FORMAT).format(caplog.records[-1])
        fields = _logfmt_first(line)
        assert (fields["device"], fields["bay"], fields["station"]) == ("3300001", "2", "TEST-STATION"), line
        assert ("device=3399999" in line) is forged  # the name is still shown, after the fields
        assert "\u3000" not in line and "\u00a0" not in line
        if forged:
            assert "\\u3000station=FAKE\\xa0bay=9" in line


def test_text_field_values_read_back_unambiguously() -> None:
    line = PrintableFormatter(logs.LOG_FORMAT).format(
        record("refused", device='a b="c" | d=e', bay=1, reason=""))
    head = line.split(": ", 1)[1]
    assert head.startswith('device="a b=\\"c\\" | d=e" bay=1 reason="" | refused'), line


def test_auto_picks_the_journal_only_when_stderr_is_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (tmp_path / "stderr").open("w") as stream:
        stat = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{stat.st_dev}:{stat.st_ino}")
        assert logs.journal_is_stderr(stream)
        chosen = logs._handler("auto", stream)
        try:
            assert isinstance(chosen, JournalHandler)
        finally:
            chosen.close()
        # Control: stderr redirected elsewhere (the variable is inherited, the stream is not the journal).
        monkeypatch.setenv("JOURNAL_STREAM", f"{stat.st_dev}:{stat.st_ino + 1}")
        assert not logs.journal_is_stderr(stream)
        assert not isinstance(logs._handler("auto", stream), JournalHandler)
        monkeypatch.delenv("JOURNAL_STREAM")
        assert not logs.journal_is_stderr(stream)


# -- retries summarised --------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_retries_warn_once_then_summarise_at_most_every_interval_and_on_recovery() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("edge.test.retries")
    logger.propagate = False
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLineFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    clock = FakeClock()
    summary = RetrySummary(logger, "uploads to the central", interval_s=300, clock=clock)
    try:
        for attempt in range(10):  # 10 failures within the first 300 s
            summary.failed(f"503 from the central (attempt {attempt})", item="i-1")
            clock.now += 20
        clock.now += 200  # past the interval: the next failure brings the summary
        summary.failed("connection refused", item="i-2")
        summary.failed("connection refused", item="i-2")
        clock.now += 10
        summary.succeeded()
        summary.succeeded()  # nothing more to say
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["level"], line["message"].split(":")[0]) for line in lines] == [
        ("warning", "uploads to the central failing"),
        ("warning", "uploads to the central still failing"),
        ("info", "uploads to the central recovered after 12 failures in 410 s; last error"),
    ]
    assert "10 failures in the last 400 s, 11 since 400 s ago" in lines[1]["message"]
    assert lines[1]["message"].endswith("last error: connection refused") and lines[1]["item"] == "i-2"
    assert lines[2]["retry_count"] == 12
