"""Kill -9 the station agent at random moments during offloads; restart it each time.

Afterwards every recorder file must be in the store exactly once with its true hash, the store must
verify, and no recorder file may have been erased before its stored copy was verified.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from edge.verify.station import verify_store
from tests.agent_process import recorder_simulator, simulator_cli, state_rows, write_station_config

ROUNDS = 20
SEED = 20261121
RECORDERS = 2


def _hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _evidence_left(root: Path) -> int:
    recorders = json.loads(simulator_cli(root, "list"))
    return sum(1 for r in recorders for f in r["files_present"] if not f.endswith("PARAM.INI"))


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    agent: subprocess.Popen[bytes] | None = None
    with recorder_simulator(
        tmp_path, recorders=RECORDERS, files=5, file_mb=3, rate_limit_mbps=40, seed=5
    ) as recorders:
        try:
            serials = [(r["device_serial"], r["usb_serial"]) for r in recorders]
            truth = Counter(
                _hash(p)
                for p in (tmp_path / "sim" / "state" / "recorders").rglob("*")
                if p.is_file() and "volume" in p.parts and p.name != "PARAM.INI"
            )
            assert sum(truth.values()) == RECORDERS * 5
            # No central here to witness: erase once verified (what this test counts).
            config = write_station_config(
                tmp_path, serials, station_id="CRASH-TEST", wipe_policy="after-verify"
            )
            command = [sys.executable, "-m", "edge.cli", "run", "--config", str(config)]
            kills = 0
            for _ in range(ROUNDS):
                agent = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(rng.uniform(0.4, 2.5))  # the world: power fails at a random (seeded) moment
                if agent.poll() is None:
                    agent.send_signal(signal.SIGKILL)
                    kills += 1
                agent.wait()
                agent = None
            assert kills >= ROUNDS - 1, "the agent must have been running when killed"
            # Last run: let it finish, then stop it properly.
            db = tmp_path / "store" / "state.db"
            # On a loaded machine every kill may have come before the agent made its store: no ledger yet.
            before = state_rows(db, "SELECT COALESCE(MAX(seq), 0) FROM ledger")
            head = before[0][0] if before else 0
            agent = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not state_rows(
                db, f"SELECT 1 FROM ledger WHERE type='station_started' AND seq > {head}"
            ):
                time.sleep(0.1)  # the agent handles SIGTERM once it has started
            while time.monotonic() < deadline:
                sealed = state_rows(db, "SELECT COUNT(*) FROM items WHERE path IS NOT NULL")
                if (
                    sealed
                    and sealed[0][0] >= sum(truth.values())
                    and _evidence_left(tmp_path) == 0
                ):
                    break
                time.sleep(0.3)
            agent.send_signal(signal.SIGTERM)
            _, stderr = agent.communicate(timeout=60)
            assert agent.returncode == 0, stderr.decode()[-2000:]
            agent = None
        finally:
            if agent is not None and agent.poll() is None:
                agent.kill()
                agent.wait()

    stored = Counter(str(r[0]) for r in state_rows(db, "SELECT sha256 FROM items WHERE path IS NOT NULL"))
    assert stored == truth, "every recorder file stored exactly once, with its true hash"
    report = verify_store(tmp_path / "store")
    assert report.ok, report.problems
    # No erasure before verification: every wiped item was verified and sealed earlier in the ledger.
    order: dict[str, list[str]] = {}
    for item, type_ in state_rows(db, "SELECT item, type FROM ledger WHERE item IS NOT NULL ORDER BY seq"):
        order.setdefault(str(item), []).append(str(type_))
    wiped = [item for item, types in order.items() if "wiped" in types]
    assert len(wiped) == sum(truth.values())
    for item in wiped:
        types = order[item]
        assert types.index("verified") < types.index("sealed") < types.index("wiped"), (item, types)
    assert not any(p.name.endswith(".part") for p in (tmp_path / "store" / "tmp").iterdir())
    os.sync()
