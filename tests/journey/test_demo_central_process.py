"""`edge demo --central-process`: the central runs as deployed, `edge central run` in a process of its own
with mutual TLS, and the journey still ends with every item uploaded, receipted and erased, every receipt
verifying on its own, and each side's CPU reported apart."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

EDGE = [sys.executable, "-c", "import sys; from edge.cli import main; sys.exit(main())"]


def _edge(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EDGE, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})


@pytest.fixture(scope="module")
def journey(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    workdir = tmp_path_factory.mktemp("central-process")
    done = _edge("demo", "--central-process", "--recorders", "1", "--files", "3", "--file-mb", "0.5",
                 "--json", "--workdir", str(workdir))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return workdir, json.loads(done.stdout.strip().splitlines()[-1]), done.stdout


def test_the_journey_ends_with_every_item_receipted_by_a_central_in_its_own_process(
    journey: tuple[Path, dict[str, Any], str],
) -> None:
    workdir, summary, out = journey
    assert summary["central_process"] is True and summary["errors"] == []
    assert summary["items"] == summary["uploaded"] == summary["receipts"] == summary["wiped"] == 3
    assert summary["store_verified"] is True and summary["central_verified"] is True
    assert summary["left_on_recorders"] == 0
    # Each side's CPU from docking to the last receipt, measured apart.
    assert summary["station_cpu_s"] > 0 and summary["central_cpu_s"] > 0
    # It was `edge central run` on the configuration it wrote, and it is gone once the demo ends.
    started = re.search(r"`edge central run --config (\S+)` \(pid (\d+)", out)
    assert started is not None, out
    assert Path(started.group(1)) == workdir / "central.toml"
    assert (workdir / "central.log").is_file()
    assert not Path(f"/proc/{started.group(2)}").exists() or \
        "central" not in Path(f"/proc/{started.group(2)}/cmdline").read_bytes().decode(errors="replace")


def test_every_receipt_verifies_on_its_own_and_a_damaged_one_does_not(
    journey: tuple[Path, dict[str, Any], str],
) -> None:
    workdir, _, _ = journey
    central_key = str(workdir / "station-identity" / "central-signing.pub")
    receipts = sorted((workdir / "station-store" / "items").rglob("*.receipt.json"))
    assert len(receipts) == 3
    for receipt in receipts:
        done = _edge("verify", str(receipt), "--central-key", central_key, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
    # Control: the same check fails for a receipt whose signed tree head was altered.
    damaged = workdir / "damaged.receipt.json"
    document = json.loads(receipts[0].read_text())
    text = json.dumps(document)
    signature = re.search(r'"signature": "([A-Za-z0-9+/=_-]{20,})"', text)
    assert signature is not None, text[:500]
    flipped = signature.group(1)[:5] + ("A" if signature.group(1)[5] != "A" else "B") + signature.group(1)[6:]
    damaged.write_text(text.replace(signature.group(1), flipped))
    done = _edge("verify", str(damaged), "--central-key", central_key, timeout=120)
    assert done.returncode != 0, done.stdout


def test_central_process_goes_with_neither_no_central_nor_mqtt() -> None:
    for extra in (["--no-central"], ["--transport", "mqtt"]):
        done = _edge("demo", "--central-process", *extra, timeout=120)
        assert done.returncode == 2 and "--central-process" in done.stderr, done.stderr
