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
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from edge.verify.station import verify_store

ROUNDS = 20
SEED = 20261121
RECORDERS = 2
PASSWORD = "000000"


def _hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_config(root: Path, serials: list[tuple[str, str]]) -> Path:
    password = root / "recorder-password"
    password.write_text(PASSWORD + "\n")
    password.chmod(0o600)
    allow = "\n".join(
        f'[[recorders.allow]]\ndevice_serial = "{s}"\nusb_serial = "{u}"\n' for s, u in serials
    )
    config = root / "station.toml"
    config.write_text(f"""
[station]
id = "CRASH-TEST"
store_dir = "store"
clock = "trusted"

[usb]
backend = "simulator"
simulator_socket = "sim/bus.sock"
poll_interval_s = 0.1
mount_root = "media"
volume_timeout_s = 20

[recorders]
default_password = "file:{password}"
{allow}

[offload]
min_free_bytes = 0

[wipe]
# No central here to witness: erase once verified (what this test counts).
policy = "after-verify"
""")
    return config


def _db_rows(db: Path, query: str) -> list[tuple[object, ...]]:
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute(query).fetchall()
    finally:
        conn.close()


def _evidence_left(state: Path) -> int:
    listing = subprocess.run(
        [sys.executable, "-m", "simulators", "recorder", "list", "--socket", str(state.parent / "bus.sock")],
        capture_output=True,
        check=True,
        text=True,
    )
    recorders = json.loads(listing.stdout)
    return sum(1 for r in recorders for f in r["files_present"] if not f.endswith("PARAM.INI"))


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    sim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "simulators",
            "recorder",
            "serve",
            "--state",
            str(tmp_path / "sim" / "state"),
            "--mount-root",
            str(tmp_path / "media"),
            "--socket",
            str(tmp_path / "sim" / "bus.sock"),
            "--recorders",
            str(RECORDERS),
            "--files",
            "5",
            "--file-mb",
            "3",
            "--rate-limit-mbps",
            "40",
            "--seed",
            "5",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    agent: subprocess.Popen[bytes] | None = None
    try:
        assert sim.stdout is not None
        hello = json.loads(sim.stdout.readline())
        serials = [(r["device_serial"], r["usb_serial"]) for r in hello["recorders"]]
        truth = Counter(
            _hash(p)
            for p in (tmp_path / "sim" / "state" / "recorders").rglob("*")
            if p.is_file() and "volume" in p.parts and p.name != "PARAM.INI"
        )
        assert sum(truth.values()) == RECORDERS * 5
        config = _write_config(tmp_path, serials)
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
        head = _db_rows(db, "SELECT COALESCE(MAX(seq), 0) FROM ledger")[0][0]
        agent = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not _db_rows(
            db, f"SELECT 1 FROM ledger WHERE type='station_started' AND seq > {head}"
        ):
            time.sleep(0.1)  # the agent handles SIGTERM once it has started
        while time.monotonic() < deadline:
            sealed = _db_rows(db, "SELECT COUNT(*) FROM items WHERE path IS NOT NULL")
            if (
                sealed
                and sealed[0][0] >= sum(truth.values())
                and _evidence_left(tmp_path / "sim" / "state") == 0
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
        sim.send_signal(signal.SIGTERM)
        sim.wait(timeout=30)
        if sim.stdout is not None:
            sim.stdout.close()

    stored = Counter(str(r[0]) for r in _db_rows(db, "SELECT sha256 FROM items WHERE path IS NOT NULL"))
    assert stored == truth, "every recorder file stored exactly once, with its true hash"
    report = verify_store(tmp_path / "store")
    assert report.ok, report.problems
    # No erasure before verification: every wiped item was verified and sealed earlier in the ledger.
    order: dict[str, list[str]] = {}
    for item, type_ in _db_rows(db, "SELECT item, type FROM ledger WHERE item IS NOT NULL ORDER BY seq"):
        order.setdefault(str(item), []).append(str(type_))
    wiped = [item for item, types in order.items() if "wiped" in types]
    assert len(wiped) == sum(truth.values())
    for item in wiped:
        types = order[item]
        assert types.index("verified") < types.index("sealed") < types.index("wiped"), (item, types)
    assert not any(p.name.endswith(".part") for p in (tmp_path / "store" / "tmp").iterdir())
    os.sync()
