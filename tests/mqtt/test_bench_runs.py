"""The MQTT benchmark (tests/bench/mqtt.py) is not part of `make test`, so it can rot unnoticed: it did
once, waiting for a broker log line that secret client ids removed. This runs it on a few MiB and checks
what it reports, not how fast: every file moved both ways with a receipt, and the figures it promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.mqtt.broker import require_mosquitto

BENCH = Path(__file__).resolve().parents[1] / "bench" / "mqtt.py"


def test_the_mqtt_benchmark_moves_every_file_both_ways_and_prints_its_figures(tmp_path: Path) -> None:
    require_mosquitto()
    done = subprocess.run(
        [sys.executable, str(BENCH), "--total-mb", "4", "--files", "2", "--rounds", "1", "--json",
         "--workdir", str(tmp_path / "bench")],
        capture_output=True, text=True, timeout=240, check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["receipts"] == {"http": 2, "mqtt": 2}
    assert figures["http_s"] > 0 and figures["mqtt_s"] > 0
    # The times are printed rounded to milliseconds; the ratio comes from the unrounded ones.
    assert figures["ratio"] == pytest.approx(figures["mqtt_s"] / figures["http_s"], rel=0.03)
    for per_gb in ("station_cpu_s_per_gb", "central_cpu_s_per_gb"):
        assert figures[per_gb]["http"] > 0 and figures[per_gb]["mqtt"] > 0
    # The broker's CPU comes from /proc in clock ticks (10 ms): relaying these 4 MB may take less than one,
    # so here it is only shown to be measured for both transports, not to be above zero.
    assert set(figures["broker_cpu_s_per_gb"]) == {"http", "mqtt"}
    assert all(value >= 0 for value in figures["broker_cpu_s_per_gb"].values())
    assert figures["peak_rss_mb"] > 0
