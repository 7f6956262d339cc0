"""The collector settings the station and the central apply once they have started (edge.runtime.gcsettle)."""

from __future__ import annotations

import json
import subprocess
import sys

# In a process of its own: freezing the test runner's heap would outlive the test.
SCRIPT = """
import gc, json
from edge.runtime.gcsettle import GEN0_THRESHOLD, settle_after_startup
before = gc.get_threshold()
settle_after_startup()
frozen = gc.get_freeze_count()
settle_after_startup()  # once per process: a second call freezes nothing more
print(json.dumps({"before": before, "after": gc.get_threshold(), "frozen": frozen,
                  "frozen_again": gc.get_freeze_count(), "enabled": gc.isenabled(), "gen0": GEN0_THRESHOLD}))
"""


def test_settle_freezes_start_up_and_raises_the_young_threshold() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], check=True, capture_output=True, text=True).stdout
    got = json.loads(out)
    assert got["enabled"]  # the collector stays on for the cycles requests leave behind
    assert got["after"] == [got["gen0"], got["before"][1], got["before"][2]]
    assert got["gen0"] > got["before"][0]
    assert got["frozen"] > 1000  # the modules' objects
    assert got["frozen_again"] == got["frozen"]
