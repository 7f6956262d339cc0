"""The station agent as edge-station.service runs it: the unit's ExecStart, a real sd_notify socket.

Each test checks a behaviour a key of the unit relies on, by running the program: Type=notify (READY=1
only once the store is open and locked), WatchdogSec= (pings at half the interval), KillSignal= and
TimeoutStopSec= (SIGTERM stops it cleanly within the budget, ledger closed), RestartPreventExitStatus=
(every way the configuration or the store is unusable exits with a status listed there, with one clear
line and no traceback), and one process per store (a second writer exits 75, which systemd retries).
"""

from __future__ import annotations

import itertools
import os
import signal
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from edge.custody.keys import StationKey
from edge.durable.lock import StoreBusy, StoreLock
from edge.ingest.store import StationStore
from edge.verify.station import verify_store
from tests.service.processes import (
    EDGE,
    NotifySocket,
    exec_start,
    kill_signal,
    restart_prevented,
    running,
    stop_timeout_s,
)

UNIT = "edge-station.service"
REPO = Path(__file__).resolve().parents[2]
STATION = "PROC-TEST"


def _config(root: Path, extra: str = "", *, store: str = "store", station: str = STATION) -> Path:
    (root / "media").mkdir(exist_ok=True)
    path = root / "station.toml"
    path.write_text(
        f'[station]\nid = "{station}"\nstore_dir = "{store}"\nclock = "untrusted"\n'
        f'[usb]\nmount_root = "media"\npoll_interval_s = 0.2\n{extra}',
        encoding="utf-8",
    )
    return path


def _store_with_history(root: Path, station: str = STATION) -> Path:
    """A store whose ledger has entries signed by its key (what a station has after its first day)."""
    store = StationStore(root / "store", station)
    try:
        with store.transaction():
            store.ledger.append("station_started", None, {"station": station})
            store.ledger.checkpoint()
    finally:
        store.close()
    return root / "store"


def _rows(db: Path, query: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(query).fetchall()
    finally:
        conn.close()


# Each builds a broken installation in a directory and returns (config path, extra environment, what
# the error line must name).
Breakage = Callable[[Path], tuple[Path, dict[str, str], str]]


def _missing(root: Path) -> tuple[Path, dict[str, str], str]:
    return root / "absent.toml", {}, "absent.toml: cannot read: No such file or directory"


def _directory(root: Path) -> tuple[Path, dict[str, str], str]:
    (root / "dir.toml").mkdir()
    return root / "dir.toml", {}, "expected a TOML file, found a directory"


def _fifo(root: Path) -> tuple[Path, dict[str, str], str]:
    os.mkfifo(root / "fifo.toml")  # reading it would wait for a writer forever
    return root / "fifo.toml", {}, "found a FIFO"


def _not_utf8(root: Path) -> tuple[Path, dict[str, str], str]:
    (root / "station.toml").write_bytes(b'[station]\nid = "\xff\xfe"\n')
    return root / "station.toml", {}, "not UTF-8 text"


def _not_toml(root: Path) -> tuple[Path, dict[str, str], str]:
    (root / "station.toml").write_text("[station\nid = 1\n")
    return root / "station.toml", {}, "not valid TOML"


def _invalid_value(root: Path) -> tuple[Path, dict[str, str], str]:
    path = _config(root)
    path.write_text(path.read_text().replace("poll_interval_s = 0.2", "poll_interval_s = -1"))
    return path, {}, "line 7: usb.poll_interval_s: Input should be greater than 0"


def _central_file(root: Path) -> tuple[Path, dict[str, str], str]:
    return (
        REPO / "config" / "central.toml",
        {},
        "configures the central receiver ([central]), not a docking station or room PC; check it with "
        f"`edge central check-config --config {REPO / 'config' / 'central.toml'}`",
    )


def _env_secret(root: Path) -> tuple[Path, dict[str, str], str]:
    path = _config(root, '[recorders]\ndefault_password = "env:EDGE_TEST_UNSET"\n')
    return path, {}, "recorders.default_password: secret reference env:EDGE_TEST_UNSET: environment variable"


def _file_secret(root: Path) -> tuple[Path, dict[str, str], str]:
    path = _config(
        root, f'[recorders]\n[[recorders.allow]]\ndevice_serial = "3300001"\npassword = "file:{root}/gone"\n'
    )
    return path, {}, f"recorders.allow[0].password: secret reference file:{root}/gone: cannot read"


def _credential_outside_systemd(root: Path) -> tuple[Path, dict[str, str], str]:
    path = _config(root, '[recorders]\ndefault_password = "credential:recorder-password"\n')
    return path, {}, "credential:recorder-password: CREDENTIALS_DIRECTORY is not set"


def _missing_credential(root: Path) -> tuple[Path, dict[str, str], str]:
    path = _config(root, '[recorders]\ndefault_password = "credential:recorder-password"\n')
    (root / "credentials").mkdir()
    loaded = {"CREDENTIALS_DIRECTORY": str(root / "credentials")}
    return path, loaded, "credential:recorder-password: cannot read"


def _store_is_a_file(root: Path) -> tuple[Path, dict[str, str], str]:
    (root / "store").write_text("not a directory")
    return _config(root), {}, f"station store {root / 'store'} cannot be used"


def _store_of_another_station(root: Path) -> tuple[Path, dict[str, str], str]:
    _store_with_history(root, "OTHER-STATION")
    return _config(root), {}, f"belongs to station 'OTHER-STATION', not '{STATION}'"


def _key_readable_by_others(root: Path) -> tuple[Path, dict[str, str], str]:
    store = _store_with_history(root)
    (store / "keys" / "station.key").chmod(0o644)
    return _config(root), {}, "has mode 0644: it is readable or writable by group or others"


def _key_lost(root: Path) -> tuple[Path, dict[str, str], str]:
    store = _store_with_history(root)
    key_id = StationKey.load(store / "keys" / "station.key").key_id
    (store / "keys" / "station.key").unlink()
    return (
        _config(root),
        {},
        f"the station key {store / 'keys' / 'station.key'} is missing, but the ledger has 1 entry, and its 1 "
        f"checkpoint(s) are signed with key {key_id}",
    )


def _key_replaced(root: Path) -> tuple[Path, dict[str, str], str]:
    store = _store_with_history(root)
    for name in ("station.key", "station.key.pub"):
        (store / "keys" / name).unlink()
    other = StationKey.create(store / "keys" / "station.key")
    return _config(root), {}, f"is key {other.key_id}, but the ledger has 1 entry"


BREAKAGES: dict[str, Breakage] = {
    "missing file": _missing,
    "a directory": _directory,
    "a FIFO": _fifo,
    "not UTF-8": _not_utf8,
    "not TOML": _not_toml,
    "invalid value": _invalid_value,
    "a central's file": _central_file,
    "env: secret unset": _env_secret,
    "file: secret missing": _file_secret,
    "credential: outside systemd": _credential_outside_systemd,
    "credential: not loaded": _missing_credential,
    "store_dir is a file": _store_is_a_file,
    "another station's store": _store_of_another_station,
    "key readable by others": _key_readable_by_others,
    "key lost, ledger not empty": _key_lost,
    "key replaced": _key_replaced,
}


@pytest.mark.parametrize("breakage", BREAKAGES.values(), ids=BREAKAGES.keys())
def test_an_unusable_configuration_exits_78_which_the_unit_never_restarts(
    tmp_path: Path, notify: NotifySocket, breakage: Breakage
) -> None:
    config, extra_env, expected = breakage(tmp_path)
    done = subprocess.run(
        exec_start(UNIT, config), env=notify.env(**extra_env), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 78, done.stderr[-2000:]
    assert 78 in restart_prevented(UNIT)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expected in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    # Never ready: systemd must see a failed start, not a service that came up and died.
    assert not any("READY" in fields for fields in notify.pending())
    if breakage is _key_lost:  # no key was made in place of the lost one
        assert not (tmp_path / "store" / "keys" / "station.key").exists()


def test_ready_once_the_store_is_open_watchdog_at_half_the_interval_and_a_clean_sigterm_stop(
    tmp_path: Path, notify: NotifySocket
) -> None:
    config = _config(tmp_path)
    watchdog_usec = 3_000_000
    with running(exec_start(UNIT, config), notify.env(WATCHDOG_USEC=str(watchdog_usec))) as agent:
        notify.wait_ready(agent, "agent")
        # READY=1 came after the store was opened, locked by this very process, and put on the record.
        db = tmp_path / "store" / "state.db"
        assert _rows(db, "SELECT type FROM ledger ORDER BY seq") == [("station_started",)]
        with pytest.raises(StoreBusy) as busy:
            StoreLock.acquire(tmp_path / "store", purpose="test")
        assert busy.value.holder is not None and busy.value.holder.pid == agent.pid
        assert "station agent" in busy.value.holder.command
        # Pings keep coming, each well inside the timeout systemd enforces.
        pings = [notify.wait_for("WATCHDOG", timeout_s=watchdog_usec / 1e6)[0] for _ in range(3)]
        gaps = [later - earlier for earlier, later in itertools.pairwise(pings)]
        assert all(gap < watchdog_usec / 1e6 for gap in gaps), gaps
        agent.send_signal(kill_signal(UNIT))
        notify.wait_for("STOPPING", timeout_s=stop_timeout_s(UNIT))
        assert agent.wait(timeout=stop_timeout_s(UNIT)) == 0
    # The ledger was closed: a stop entry, signed, and the store verifies; the lock is free again.
    head = _rows(db, "SELECT seq, type FROM ledger ORDER BY seq DESC LIMIT 1")[0]
    assert head[1] == "station_stopped"
    assert _rows(db, "SELECT MAX(seq) FROM ledger_checkpoints")[0][0] == head[0]
    assert verify_store(tmp_path / "store").ok
    StoreLock.acquire(tmp_path / "store", purpose="test").release()


def test_one_writer_per_store_verify_beside_it_and_a_killed_agent_blocks_nothing(
    tmp_path: Path, notify: NotifySocket
) -> None:
    config = _config(tmp_path)
    with running(exec_start(UNIT, config), notify.env()) as agent:
        notify.wait_ready(agent, "agent")
        for argv in (
            exec_start(UNIT, config),
            [str(EDGE), "tag", "0f1d2c3b-0000-4000-8000-0123", "--config", str(config), "--case", "X"],
            [str(EDGE), "keys", "rotate", "--config", str(config)],
        ):
            second = subprocess.run(argv, capture_output=True, text=True, timeout=60)
            assert second.returncode == 75, second.stderr[-2000:]
            assert f"is in use by pid {agent.pid} (station agent: edge run --config {config}" in second.stderr
            assert "Traceback" not in second.stderr
        # 75 is EX_TEMPFAIL: the unit restarts after it (the holder may be a short `edge tag`).
        assert 75 not in restart_prevented(UNIT)
        # Reading needs no lock: the agent keeps running while the store is audited.
        audit = subprocess.run([str(EDGE), "verify", str(tmp_path / "store")], capture_output=True, text=True,
                               timeout=120)
        verdict = audit.stdout.splitlines()[-1] if audit.stdout else ""
        # A stand-alone station (no central to consult): every local check held, exit status 3.
        assert audit.returncode == 3 and verdict.startswith("LOCAL CHECKS ONLY"), audit.stdout + audit.stderr
        agent.send_signal(signal.SIGKILL)
        agent.wait(timeout=60)
    # The dead agent's name is still in the lock file, but the kernel let go of its lock.
    assert str(agent.pid) in (tmp_path / "store" / "store.lock").read_text()
    with running(exec_start(UNIT, config), notify.env()) as again:
        notify.wait_ready(again, "agent")
        again.send_signal(signal.SIGTERM)
        assert again.wait(timeout=stop_timeout_s(UNIT)) == 0


def test_a_loaded_credential_lets_the_agent_start(tmp_path: Path, notify: NotifySocket) -> None:
    """Control for the refusals above: the same reference resolves once systemd loaded the credential."""
    config = _config(tmp_path, '[recorders]\ndefault_password = "credential:recorder-password"\n')
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "recorder-password").write_text("246810\n")
    env = notify.env(CREDENTIALS_DIRECTORY=str(credentials))
    with running(exec_start(UNIT, config), env) as agent:
        notify.wait_ready(agent, "agent")
        agent.send_signal(signal.SIGTERM)
        code = agent.wait(timeout=stop_timeout_s(UNIT))
        stderr = agent.communicate()[1]
        assert code == 0, stderr  # a crash at shutdown leaves faulthandler's thread stacks here
        assert "246810" not in stderr


def test_a_crashing_agent_leaves_every_threads_stack(tmp_path: Path, notify: NotifySocket) -> None:
    """faulthandler is on in the agent itself (not only under PYTHONFAULTHANDLER): a fatal signal writes
    every thread's Python stack to stderr, the journal under systemd, before the process dies."""
    env = {k: v for k, v in notify.env().items() if k != "PYTHONFAULTHANDLER"}
    with running(exec_start(UNIT, _config(tmp_path, "")), env) as agent:
        notify.wait_ready(agent, "agent")
        agent.send_signal(signal.SIGSEGV)
        assert agent.wait(timeout=stop_timeout_s(UNIT)) == -signal.SIGSEGV
        stderr = agent.communicate()[1]
    assert "Fatal Python error: Segmentation fault" in stderr
    # The main thread's stack: `edge run` down to the event loop. Which coroutine (edge/station.py or
    # another) shows above it depends on whether the loop was idle in its selector when the signal came,
    # and whether it is headed "Current thread" depends on which thread the kernel gave the signal to.
    assert "edge/cli.py" in stderr and "in cmd_run" in stderr, stderr
    assert "threading.py" in stderr  # and the worker threads'
