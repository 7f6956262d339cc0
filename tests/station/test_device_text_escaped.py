"""Device text shown to a reader cannot forge a line or drive a terminal (issue 7, 1.8).

Names from a recorder (and anything a forger wrote into a store) are recorded exactly, but every log
line and every line of `edge verify` goes through one escaping function
(:func:`edge.custody.text.printable`): newlines, C0/C1 controls (ESC sequences) and bidi overrides
come out as visible escapes. Each test has a control showing ordinary text passes unchanged.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import subprocess
import unicodedata
from collections.abc import Callable
from pathlib import Path

import pytest

from edge.config.station import StationConfig
from edge.custody.text import json_printable, printable
from edge.ingest.store import StationStore
from edge.runtime.logs import printable_handler
from edge.sources.usb.offload import VolumeOffload
from simulators.recorder.faultfs import VolumeFaults
from simulators.recorder.volume import mount_volume
from tests.mounting import require_fuse
from tests.service.processes import EDGE

from .conftest import session_info

HOSTILE = "evil\nOK: forged line\r\x1b[2J\x1b]0;owned\x07\x9b31m\u202etxt.MP4"
SHOWN = "evil\\x0aOK: forged line\\x0d\\x1b[2J\\x1b]0;owned\\x07\\x9b31m\\u202etxt.MP4"
# What must never reach a reader raw: controls, DEL, C1, bidi embeddings/overrides/isolates, LS/PS.
RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (HOSTILE, SHOWN),
        ("\u2066isolate\u2069 \u200fmark", "\\u2066isolate\\u2069 \\u200fmark"),
        ("录像_0001.MP4 IMP", "录像_0001.MP4 IMP"),  # control: readable text is left as it is
        # Review R10: look-alike spaces and invisible format characters (ideographic and no-break
        # space, zero-width space and joiner, soft hyphen, BOM, a tag character).
        ("a\u3000b\u00a0c\u200bd\u200de\u00adf\ufeffg\U000e0041",
         "a\\u3000b\\xa0c\\u200bd\\u200de\\xadf\\ufeffg\\U000e0041"),
    ],
)
def test_printable_escapes_controls_and_bidi_only(text: str, shown: str) -> None:
    assert printable(text) == shown
    assert json.loads(json_printable(json.dumps({"name": text}, ensure_ascii=False))) == {"name": text}


def test_printable_escapes_every_control_format_and_non_ascii_space_character() -> None:
    """Every Cc, Cf, Zl, Zp and Zs (but U+0020) code point of the running Unicode database is escaped;
    control: letters, CJK ideographs, digits, punctuation and the ASCII space are not."""
    unsafe = {"Cc", "Cf", "Zl", "Zp", "Zs"}
    for code in range(0x110000):
        char = chr(code)
        category = unicodedata.category(char)
        if category in unsafe and char != " ":
            assert printable(char) != char, f"U+{code:04X} ({category}) shown raw"
            assert json.loads(json_printable(json.dumps(char, ensure_ascii=False))) == char
        elif category[0] in "LNPS" or char == " ":
            assert printable(char) == char, f"U+{code:04X} ({category}) escaped"



def _planted_store(tmp_path: Path, name: str) -> Path:
    store = StationStore(tmp_path / "store", "ESC-TEST")
    store.close()
    (store.layout.root / name).write_bytes(b"planted")
    return store.layout.root


def _verify(store: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "EDGE_STATION_CONFIG"}
    return subprocess.run(
        [str(EDGE), "verify", str(store), *args], capture_output=True, text=True, timeout=120, env=env,
        cwd=store.parent,
    )


def test_edge_verify_shows_a_hostile_name_escaped_on_one_line(tmp_path: Path) -> None:
    store = _planted_store(tmp_path, HOSTILE)
    done = _verify(store)
    assert done.returncode == 1, done.stdout + done.stderr
    assert not RAW.search(done.stdout), repr(done.stdout)
    named = [line for line in done.stdout.splitlines() if "evil" in line]
    assert named == [f"FAIL file {SHOWN}: not part of a station store (planted, or left by something else)"]
    assert not any(line.startswith("OK: forged") for line in done.stdout.splitlines())

    as_json = _verify(store, "--json")
    assert not RAW.search(as_json.stdout), repr(as_json.stdout)
    report = json.loads(as_json.stdout)
    assert any(p["where"] == f"file {HOSTILE}" for p in report["problems"]), "the JSON means the same"


def test_edge_verify_control_an_ordinary_name_is_shown_as_it_is(tmp_path: Path) -> None:
    store = _planted_store(tmp_path, "录像 0001.MP4")
    done = _verify(store)
    assert "FAIL file 录像 0001.MP4: not part of a station store" in done.stdout


async def test_log_lines_quote_device_names_escaped(
    store: StationStore, volume_template: Path, tmp_path: Path, config_factory: Callable[..., StationConfig]
) -> None:
    """A read error on a hostile-named recorder file is logged with its name: on one line, escaped."""
    require_fuse()
    backing = tmp_path / "backing"
    shutil.copytree(volume_template, backing)
    media = backing / "DCIM" / "100MEDIA"
    (media / HOSTILE).write_bytes(b"x" * 4096)
    (media / "PLAIN_0009.MP4").write_bytes(b"y" * 4096)  # control: its name is logged as it is
    stream = io.StringIO()
    handler = printable_handler(stream)
    logger = logging.getLogger("edge")
    logger.addHandler(handler)
    volume = mount_volume(backing, tmp_path / "media" / "ZFY_3300001",
                          faults=VolumeFaults(read_error=("*", 100)))
    try:
        await VolumeOffload(store, config_factory(wipe={"policy": "never"}), session_info(),
                            volume.mount_point).run()
    finally:
        volume.unmount()
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert not RAW.search(text), repr(text)
    lines = text.splitlines()
    record = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ edge\.")
    assert lines and all(record.match(line) for line in lines), "one record, one line"
    assert any(SHOWN in line for line in lines)
    assert any("DCIM/100MEDIA/PLAIN_0009.MP4" in line for line in lines)
