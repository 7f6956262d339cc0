"""`edge demo --usb-mb-s N`: each docked recorder's reads are paced as a recorder on USB 2.0 delivers them
(the simulator's volume behind FUSE with a token bucket), so the pipeline benchmark can measure whether
uploading keeps up with an offload at field speed rather than at this machine's disk speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edge.cli import main
from tests.mounting import require_fuse

EDGE = [sys.executable, "-c", "import sys; from edge.cli import main; sys.exit(main())"]


def _demo(*args: str) -> dict[str, Any]:
    argv = [*EDGE, "demo", "--no-central", "--recorders", "1", "--files", "2", "--json", *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_a_paced_recorder_is_offloaded_no_faster_than_its_pace() -> None:
    require_fuse()
    paced = _demo("--file-mb", "1", "--usb-mb-s", "1")
    assert paced["errors"] == [] and paced["verified"] == paced["items"] == 2
    assert paced["usb_mb_s"] == 1.0
    # Every byte crossed the paced volume: at 1 MB/s (a burst of 64 KiB allowed) the copy cannot take
    # less than bytes / 10^6 seconds, whatever the machine.
    assert paced["offload_seconds"] >= (paced["bytes"] - 64 * 1024) / 1_000_000
    # Control: unpaced, the same recorder reports no pace (and is read as fast as the machine reads).
    unpaced = _demo("--file-mb", "1")
    assert unpaced["errors"] == [] and unpaced["usb_mb_s"] is None


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["demo", "--usb-mb-s", "0"], "expected 0.1 to 10000 MB/s, found '0'"),
        (["demo", "--usb-mb-s", "nan"], "expected 0.1 to 10000 MB/s, found 'nan'"),
        (["demo", "--usb-mb-s", "fast"], "expected MB/s as a number, found 'fast'"),
    ],
)
def test_a_pace_that_is_no_rate_is_refused(
    argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert complaint in capsys.readouterr().err


@pytest.mark.parametrize("other", [["--room"], ["--shift"], ["--source", "gb28181"]])
def test_a_pace_for_recorders_that_are_not_docked_is_refused(
    other: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--usb-mb-s", "35", *other]) == 2
    assert "--usb-mb-s paces the recorders docked over USB" in capsys.readouterr().err
