"""Review 21 (#6, #7): the allow-lists of ffmpeg inputs in `[rooms]` against the ffmpeg the station runs.

* #6: ``stimeout`` was allowed, but ffmpeg 5.1 (Debian 12) no longer has it (renamed ``timeout``): a
  configuration naming it loads and every run of the source then fails. Each allow-listed option, input
  format and lavfi filter is checked against the installed ffmpeg (``-h full``, ``-formats``, ``-filters``),
  so the lists cannot drift from it.
* #7: the lavfi sources ``life`` and ``cellauto`` read a file (``filename=``/``f=``): a lavfi input could
  read any file the agent can. Refused; control: a generated source loads.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from edge.config.base import ConfigError, parse_toml_model
from edge.config.rooms import (
    LAVFI_FILTERS,
    RoomsSection,
    allowed_input_formats,
    allowed_input_options,
)

pytestmark = pytest.mark.usefixtures("ffmpeg")


def _ffmpeg(*args: str) -> str:
    done = subprocess.run(["ffmpeg", "-hide_banner", *args], capture_output=True, text=True, timeout=60,
                          check=True)
    return done.stdout


def test_every_allowed_input_option_is_an_option_of_the_installed_ffmpeg() -> None:
    help_text = _ffmpeg("-h", "full")
    known = set(re.findall(r"^\s*-([a-z0-9_]+)\s", help_text, flags=re.MULTILINE))
    assert {"rtsp_transport", "timeout", "thread_queue_size"} <= known  # control: the help is parsed
    missing = sorted(allowed_input_options() - known)
    assert missing == [], f"allow-listed input options the installed ffmpeg does not know: {missing}"


def test_every_allowed_input_format_and_lavfi_filter_is_in_the_installed_ffmpeg() -> None:
    formats: set[str] = set()
    for line in _ffmpeg("-formats").splitlines():
        match = re.match(r"^\s*D[E ]?\s+(\S+)", line)
        if match:
            formats.update(match[1].split(","))
    assert "lavfi" in formats and "rtsp" in formats  # control: the list is parsed
    missing_formats = sorted(allowed_input_formats() - formats)
    assert missing_formats == [], f"allow-listed input formats ffmpeg cannot read: {missing_formats}"
    filters = {m[1] for m in re.finditer(r"^ [.A-Z|]{3} (\S+) ", _ffmpeg("-filters"), flags=re.MULTILINE)}
    assert "testsrc2" in filters  # control
    missing_filters = sorted(LAVFI_FILTERS - filters)
    assert missing_filters == [], f"allow-listed lavfi filters the installed ffmpeg lacks: {missing_filters}"


def _rooms(input_lines: str) -> RoomsSection:
    text = ('[[room]]\nid = "xw-1"\nname = "第一询问室"\naddress = "文三路 100 号"\n'
            '[[room.source]]\nid = "cam"\n[[room.source.input]]\n' + input_lines)
    return parse_toml_model(text, "station.toml", RoomsSection)


def test_stimeout_is_refused_and_timeout_loads() -> None:
    with pytest.raises(ConfigError, match="option 'stimeout' is not an input option"):
        _rooms('url = "rtsp://192.0.2.10/ch1"\noptions = { stimeout = "5000000" }\n')
    loaded = _rooms('url = "rtsp://192.0.2.10/ch1"\noptions = { timeout = "5000000" }\n')
    assert loaded.room[0].source[0].input[0].options == {"timeout": "5000000"}


@pytest.mark.parametrize("graph", ["life=filename=/etc/passwd", "cellauto=filename=/etc/passwd",
                                   "cellauto=f=/etc/passwd:size=64x64"])
def test_lavfi_sources_that_read_files_are_refused(graph: str) -> None:
    with pytest.raises(ConfigError, match="is not allowed: a lavfi input"):
        _rooms(f'format = "lavfi"\nurl = "{graph}"\n')


def test_a_generated_lavfi_source_loads() -> None:
    """Control of the refusal above: the same path with a source that reads nothing."""
    loaded = _rooms('format = "lavfi"\nurl = "mandelbrot=size=160x120:rate=25"\n')
    assert loaded.room[0].source[0].input[0].url.startswith("mandelbrot=")
