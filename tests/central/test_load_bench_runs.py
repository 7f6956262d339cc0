"""The central load benchmark (tests/bench/central_load.py) is not part of `make test`, so it could rot
unnoticed: this runs it with a handful of stations, on PostgreSQL and Ceph with two receivers and on the
embedded backends, and checks what it reports, not how fast: every item receipted and every receipt
verified at its station, and the figures it promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.central.ceph import CEPH_TOOLS
from tests.central.pg import postgres_bindir
from tests.prerequisites import require, require_tool

BENCH = Path(__file__).resolve().parents[1] / "bench" / "central_load.py"
# Ceph's and PostgreSQL's start, 3 stations' set-up and their uploads, on a machine shared with others.
BENCH_TIMEOUT_S = 900


def run_bench(tmp_path: Path, *argv: str) -> tuple[dict[str, Any], str]:
    require_tool("ffmpeg")
    done = subprocess.run(
        [sys.executable, str(BENCH), "--items", "1", "--item-mb", "0.25", "--json",
         "--workdir", str(tmp_path / "bench"), *argv],
        capture_output=True, text=True, timeout=BENCH_TIMEOUT_S, check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stdout


def check_common(figures: dict[str, Any], stations: int) -> None:
    assert figures["stations"] == stations
    assert figures["items"] == figures["receipts"] == figures["receipts_verified"] == stations
    assert figures["all_receipts_verified"] is True
    assert figures["aggregate_mb_s"] > 0 and figures["items_s"] > 0
    assert 0 < figures["registration_p50_s"] <= figures["registration_p99_s"]
    assert figures["ratio"] == pytest.approx(figures["seconds"] / figures["baseline_s"], rel=0.03)
    assert figures["station_cpu_s_per_gb"] > 0 and figures["central_cpu_s_per_gb"] > 0
    assert figures["baseline_station_cpu_s_per_gb"] > 0 and figures["baseline_central_cpu_s_per_gb"] > 0
    assert figures["peak_rss_mb"]["stations_process"] > 0


def test_the_load_benchmark_on_postgresql_and_ceph_with_two_receivers(tmp_path: Path) -> None:
    require(postgres_bindir() is not None, "needs PostgreSQL's initdb and pg_ctl (Debian: postgresql)")
    for tool in CEPH_TOOLS:
        require_tool(tool)
    figures, phases = run_bench(tmp_path, "--stations", "3", "--receivers", "2")
    check_common(figures, 3)
    assert figures["storage"] == "postgresql+ceph" and figures["receivers"] == 2
    # Stations are pinned round-robin: both receivers took uploads and registrations.
    assert len(figures["receiver_cpu_s_per_gb"]) == 2 and all(v > 0 for v in figures["receiver_cpu_s_per_gb"])
    assert sum(figures["receiver_cpu_s_per_gb"]) == pytest.approx(figures["central_cpu_s_per_gb"], abs=0.01)
    assert set(figures["storage_cpu_s_per_gb"]) == {"postgresql", "ceph"}
    assert figures["storage_cpu_s_per_gb"]["ceph"] > 0  # every object went to the bucket
    assert len(figures["peak_rss_mb"]["receivers"]) == 2
    for phase in ("set-up:", "baseline (plain tus POSTs):", "upload, registration, receipts:",
                  "station stores verified:"):
        assert phase in phases
    # The receivers' configuration files name their secrets (environment references), never hold them.
    configs = "".join(p.read_text() for p in (tmp_path / "bench").glob("receiver-*.toml"))
    assert 'password = "env:' in configs and 'secret_access_key = "env:' in configs


def test_the_load_benchmark_on_the_embedded_backends(tmp_path: Path) -> None:
    figures, _ = run_bench(tmp_path, "--stations", "2", "--embedded")
    check_common(figures, 2)
    assert figures["storage"] == "sqlite+files" and figures["receivers"] == 1
    assert figures["storage_cpu_s_per_gb"] == {}
