"""`systemctl reload edge-station` on the real agent process: the unit's own ExecReload= (SIGHUP) while
a recorder is being copied through the simulator's throttled FUSE volume.

The copy in progress finishes untouched under the configuration it started with; the next docking
sees the new allow-list; a new file that changes what needs a restart, or that is invalid, is refused
(an ERROR line, a `config_refused` ledger entry) and the agent keeps running with the configuration in
force; systemd hears RELOADING=1 and then READY=1 each time.
"""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.agent_process import recorder_simulator, simulator_cli, state_rows, write_station_config
from tests.mounting import require_fuse
from tests.service.processes import NotifySocket, exec_start, unit
from tests.service.test_unit_files import one

UNIT = "edge-station.service"
FILES = 3


def write_config(root: Path, allow: list[tuple[str, str]], *, store: str = "store", extra: str = "") -> Path:
    return write_station_config(root, allow, station_id="RELOAD-TEST", wipe_policy="never", store=store,
                                extra=extra)


class Ledger:
    def __init__(self, db: Path) -> None:
        self.db = db

    def entries(self, type_: str | None = None) -> list[tuple[int, str, dict[str, Any]]]:
        rows = state_rows(self.db, "SELECT seq, type, data FROM ledger ORDER BY seq")
        return [(int(seq), str(kind), json.loads(data)) for seq, kind, data in rows
                if type_ is None or kind == type_]

    def wait(self, what: str, condition: Callable[[], bool], process: subprocess.Popen[bytes],
             timeout_s: float = 90) -> None:
        """Until ``condition()`` holds (the ledger has no change signal across processes: polled)."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert process.poll() is None, f"the agent exited ({process.returncode}) waiting for {what}"
            assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
            time.sleep(0.05)


def acquired_by(ledger: Ledger, device: str) -> list[int]:
    return [seq for seq, _t, data in ledger.entries("acquired") if data.get("device_serial") == device]


def sealed_items_of(ledger: Ledger, device: str) -> set[str]:
    rows = state_rows(ledger.db, "SELECT item FROM acquisitions WHERE device=? AND state='sealed'", (device,))
    return {str(row[0]) for row in rows}


def refusals_of(ledger: Ledger, usb_serial: str) -> int:
    return sum(1 for _s, _t, data in ledger.entries("refused") if data.get("usb_serial") == usb_serial)


def reload_via_unit(pid: int) -> None:
    """What `systemctl reload` runs: the unit's ExecReload= with $MAINPID."""
    argv = [str(pid) if word == "$MAINPID" else word for word in shlex.split(one(unit(UNIT), "Service",
                                                                                   "ExecReload"))]
    subprocess.run(argv, check=True, timeout=10)


def await_reload_notifications(notify: NotifySocket) -> None:
    _at, reloading = notify.wait_for("RELOADING", timeout_s=30)
    assert reloading["RELOADING"] == "1" and int(reloading["MONOTONIC_USEC"]) > 0
    _at, ready = notify.wait_for("READY", timeout_s=30)
    assert ready["READY"] == "1"


def test_reload_mid_copy_applies_to_the_next_docking_and_refuses_what_needs_a_restart(
    tmp_path: Path, notify: NotifySocket
) -> None:
    require_fuse()  # the throttled volumes are FUSE mounts
    with recorder_simulator(
        tmp_path, recorders=3, files=FILES, file_mb=2, rate_limit_mbps=2, seed=8
    ) as recorders:
        (a_serial, a_usb), (b_serial, b_usb), (c_serial, c_usb) = (
            (r["device_serial"], r["usb_serial"]) for r in recorders)
        ports = {r["device_serial"]: r["port_path"] for r in recorders}
        config = write_config(tmp_path, [(a_serial, a_usb)])
        ledger = Ledger(tmp_path / "store" / "state.db")
        log_path = tmp_path / "agent.log"
        with log_path.open("wb") as log_file:
            agent = subprocess.Popen(exec_start(UNIT, config), env=notify.env(), stdout=subprocess.DEVNULL,
                                     stderr=log_file)
            try:
                notify.wait_ready(agent, "the agent")  # type: ignore[arg-type]
                # A is copying (slowly); B and C, not on the allow-list, are refused.
                ledger.wait("A's first file", lambda: len(acquired_by(ledger, a_serial)) >= 1, agent)
                ledger.wait("B and C refused", lambda: refusals_of(ledger, b_usb) == 1
                            and refusals_of(ledger, c_usb) == 1, agent)
                assert len(acquired_by(ledger, a_serial)) < FILES, "A must still be copying"

                write_config(tmp_path, [(a_serial, a_usb), (b_serial, b_usb)])
                reload_via_unit(agent.pid)
                await_reload_notifications(notify)
                ledger.wait("config_reloaded", lambda: bool(ledger.entries("config_reloaded")), agent)
                ((reloaded_at, _t, reloaded),) = ledger.entries("config_reloaded")
                assert reloaded["sections"] == ["recorders"] and len(reloaded["config_sha256"]) == 64

                # A's copy finishes untouched: every file, some of them acquired after the reload.
                ledger.wait("A sealed", lambda: len(sealed_items_of(ledger, a_serial)) == FILES, agent)
                assert max(acquired_by(ledger, a_serial)) > reloaded_at
                assert not [d for _s, _t, d in ledger.entries("error") if d.get("device_serial") == a_serial]

                # The next docking of B sees the new allow-list.
                simulator_cli(tmp_path, "unplug", b_serial)
                simulator_cli(tmp_path, "plug", b_serial, "--port", ports[b_serial])
                ledger.wait("B sealed", lambda: len(sealed_items_of(ledger, b_serial)) == FILES, agent)

                # A change that needs a restart (the store) refuses the whole file, C's entry with it.
                write_config(tmp_path, [(a_serial, a_usb), (b_serial, b_usb), (c_serial, c_usb)],
                             store="elsewhere")
                reload_via_unit(agent.pid)
                await_reload_notifications(notify)
                ledger.wait("refused reload", lambda: len(ledger.entries("config_refused")) == 1, agent)
                # An invalid file is refused the same way.
                config.write_text(config.read_text() + "\n[recorders\n")
                reload_via_unit(agent.pid)
                await_reload_notifications(notify)
                ledger.wait("invalid reload", lambda: len(ledger.entries("config_refused")) == 2, agent)
                refused = [d for _s, _t, d in ledger.entries("config_refused")]
                assert refused[0]["sections"] == ["station"] and "restart" in refused[0]["reason"]
                assert refused[1]["sections"] == [] and "invalid" in refused[1]["reason"]
                assert agent.poll() is None  # still running

                # C is still refused: the configuration in force is the last one applied.
                simulator_cli(tmp_path, "unplug", c_serial)
                simulator_cli(tmp_path, "plug", c_serial, "--port", ports[c_serial])
                ledger.wait("C refused again", lambda: refusals_of(ledger, c_usb) == 2, agent)
                assert sealed_items_of(ledger, c_serial) == set()
                assert not (tmp_path / "elsewhere").exists()

                agent.send_signal(signal.SIGTERM)
                assert agent.wait(timeout=90) == 0
            finally:
                if agent.poll() is None:
                    agent.kill()
                    agent.wait()
    said = log_path.read_text(encoding="utf-8", errors="replace")
    assert said.count("configuration reload REFUSED") == 2, said[-3000:]
    assert "configuration reloaded from" in said and "[recorders] now in force" in said
    # Each ledger event is a line naming its device (text format: stderr is not the journal here).
    assert "acquired item " in said and f"device={a_serial}" in said and "station=RELOAD-TEST" in said
