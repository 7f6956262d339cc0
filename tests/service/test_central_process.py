"""The central receiver as edge-central.service runs it: the unit's ExecStart, a real sd_notify socket.

Type=notify: READY=1 only once it listens. WatchdogSec=: pings inside the timeout. KillSignal= and
TimeoutStopSec=: SIGTERM stops it within the budget and frees the store. RestartPreventExitStatus=: an
unusable configuration or identity (a missing or replaced signing key over a signed log included) exits
with a status listed there. One receiver per store: a second exits 75 naming the first, while enroll and
revoke keep working beside it.
"""

from __future__ import annotations

import itertools
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from edge.central.config import load_central_config
from edge.central.log import MerkleLog
from edge.central.sqlite import SqliteDatabase
from edge.custody.keys import StationKey
from edge.durable.lock import StoreLock
from tests.service.processes import (
    EDGE,
    NotifySocket,
    exec_start,
    kill_signal,
    restart_prevented,
    running,
    stop_timeout_s,
)

UNIT = "edge-central.service"
REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(root: Path) -> Path:
    path = root / "central.toml"
    path.write_text(
        f'[central]\nid = "central-proc"\nstore_dir = "{root / "store"}"\n'
        f'[server]\nlisten = "127.0.0.1"\nport = {_free_port()}\nnames = ["localhost", "127.0.0.1"]\n',
        encoding="utf-8",
    )
    return path


def _edge(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(EDGE), *argv], capture_output=True, text=True, timeout=120)


def _initialised(root: Path) -> Path:
    config = _config(root)
    done = _edge("central", "init", "--config", str(config))
    assert done.returncode == 0, done.stderr
    return config


def _signed_log(config_path: Path) -> str:
    """Sign a tree head with the central's key, as a central that has served does; returns its key id."""
    config = load_central_config(config_path)
    key = StationKey.load(config.layout.signing_key)
    database = SqliteDatabase.open(config.layout.index_db)
    try:
        with database.transaction():
            MerkleLog(database.log_store, key, config.central.id).tree_head()
    finally:
        database.close()
    return key.key_id


Breakage = Callable[[Path], tuple[Path, str]]


def _missing(root: Path) -> tuple[Path, str]:
    return root / "absent.toml", "absent.toml: cannot read: No such file or directory"


def _station_file(root: Path) -> tuple[Path, str]:
    station = REPO / "config" / "station.toml"
    return (
        station,
        "configures a docking station or room PC ([station]), not the central receiver; check it "
        f"with `edge check-config {station}`",
    )


def _invalid_value(root: Path) -> tuple[Path, str]:
    path = _config(root)
    path.write_text(path.read_text().replace('listen = "127.0.0.1"', 'listen = "not a host!"'))
    return path, "line 5: server.listen"


def _not_initialised(root: Path) -> tuple[Path, str]:
    return _config(root), "missing: run `edge central init --config FILE` first"


def _signing_key_lost(root: Path) -> tuple[Path, str]:
    config = _initialised(root)
    key_id = _signed_log(config)
    (root / "store" / "identity" / "signing.key").unlink()
    return config, f"holds 1 tree head(s) signed with key {key_id}"


def _signing_key_replaced(root: Path) -> tuple[Path, str]:
    config = _initialised(root)
    key_id = _signed_log(config)
    for name in ("signing.key", "signing.key.pub"):
        (root / "store" / "identity" / name).unlink()
    StationKey.create(root / "store" / "identity" / "signing.key")
    return config, f"is signed with key {key_id}: the signing key was replaced"


BREAKAGES: dict[str, Breakage] = {
    "missing file": _missing,
    "a station's file": _station_file,
    "invalid value": _invalid_value,
    "not initialised": _not_initialised,
    "signing key lost over a signed log": _signing_key_lost,
    "signing key replaced": _signing_key_replaced,
}


@pytest.mark.parametrize("breakage", BREAKAGES.values(), ids=BREAKAGES.keys())
def test_an_unusable_configuration_or_identity_exits_78_which_the_unit_never_restarts(
    tmp_path: Path, notify: NotifySocket, breakage: Breakage
) -> None:
    config, expected = breakage(tmp_path)
    done = subprocess.run(
        exec_start(UNIT, config), env=notify.env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 78, done.stderr[-2000:]
    assert 78 in restart_prevented(UNIT)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expected in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert not any("READY" in fields for fields in notify.pending())
    if breakage is _signing_key_lost:  # no key was made in place of the lost one
        assert not (tmp_path / "store" / "identity" / "signing.key").exists()


def test_init_never_makes_a_signing_key_over_a_signed_log(tmp_path: Path) -> None:
    config = _initialised(tmp_path)
    key_id = _signed_log(config)
    (tmp_path / "store" / "identity" / "signing.key").unlink()
    done = _edge("central", "init", "--config", str(config))
    assert done.returncode == 1
    assert f"tree head(s) signed with key {key_id}" in done.stderr and "restore signing.key" in done.stderr
    assert not (tmp_path / "store" / "identity" / "signing.key").exists()


def test_ready_once_listening_watchdog_inside_the_timeout_and_a_clean_sigterm_stop(
    tmp_path: Path, notify: NotifySocket
) -> None:
    config = _initialised(tmp_path)
    port = load_central_config(config).server.port
    watchdog_usec = 3_000_000
    with running(exec_start(UNIT, config), notify.env(WATCHDOG_USEC=str(watchdog_usec))) as central:
        notify.wait_ready(central, "central")
        socket.create_connection(("127.0.0.1", port), timeout=10).close()  # listening when it said so
        pings = [notify.wait_for("WATCHDOG", timeout_s=watchdog_usec / 1e6)[0] for _ in range(3)]
        gaps = [later - earlier for earlier, later in itertools.pairwise(pings)]
        assert all(gap < watchdog_usec / 1e6 for gap in gaps), gaps
        central.send_signal(kill_signal(UNIT))
        notify.wait_for("STOPPING", timeout_s=stop_timeout_s(UNIT))
        assert central.wait(timeout=stop_timeout_s(UNIT)) == 0
    StoreLock.acquire(tmp_path / "store", purpose="test").release()  # the store was let go


def test_one_receiver_per_store_while_enroll_and_revoke_work_beside_it(
    tmp_path: Path, notify: NotifySocket
) -> None:
    config = _initialised(tmp_path)
    station_key = StationKey.create(tmp_path / "station" / "station.key")
    with running(exec_start(UNIT, config), notify.env()) as central:
        notify.wait_ready(central, "central")
        for argv in (exec_start(UNIT, config)[1:], ["central", "init", "--config", str(config)]):
            second = _edge(*argv)
            assert second.returncode == 75, second.stderr[-2000:]
            holder = f"is in use by pid {central.pid} (central receiver: edge central --config {config}"
            assert holder in second.stderr
            assert "Traceback" not in second.stderr
        assert 75 not in restart_prevented(UNIT)
        enrolled = _edge("central", "enroll", "ST-1", "--config", str(config), "--signing-key",
                         str(station_key.public_path), "--out", str(tmp_path / "bundle"))
        assert enrolled.returncode == 0, enrolled.stderr
        revoked = _edge("central", "revoke", "ST-1", "--config", str(config), "--reason", "lost laptop")
        assert revoked.returncode == 0, revoked.stderr
        central.send_signal(signal.SIGKILL)
        central.wait(timeout=60)
    with running(exec_start(UNIT, config), notify.env()) as again:
        notify.wait_ready(again, "central")  # a receiver killed with -9 leaves no lock behind
        again.send_signal(signal.SIGTERM)
        assert again.wait(timeout=stop_timeout_s(UNIT)) == 0
