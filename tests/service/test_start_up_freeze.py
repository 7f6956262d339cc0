"""Start-up objects out of the cyclic collector's reach (edge.runtime.collector): the station agent and the
central, run as their systemd units run them, freeze what they made while starting once they are ready;
and what freezing does, in a process of its own (a test's process must never freeze its objects)."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

from tests.service.processes import EDGE, NotifySocket, exec_start, kill_signal, running, stop_timeout_s

FROZEN_RE = re.compile(r"(station agent|central) started: (\d+) objects moved out of the cyclic collector")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _frozen_said(stderr: str, who: str) -> int:
    counts = [int(m.group(2)) for m in FROZEN_RE.finditer(stderr) if m.group(1) == who]
    assert len(counts) == 1, stderr[-3000:]
    return counts[0]


def _run_then_stop(unit: str, config: Path, notify: NotifySocket, who: str) -> str:
    """Run the unit's command until READY=1 and one watchdog ping after it (the loop turned since), stop
    it with the unit's signal, and return what it said on stderr."""
    with running(exec_start(unit, config), notify.env(WATCHDOG_USEC="1000000")) as process:
        notify.wait_ready(process, who)
        notify.wait_for("WATCHDOG", timeout_s=30)
        process.send_signal(kill_signal(unit))
        _out, err = process.communicate(timeout=stop_timeout_s(unit) + 30)
    assert process.returncode == 0, err[-3000:]
    return err


def test_the_station_agent_freezes_its_start_up_objects_once_ready(
    tmp_path: Path, notify: NotifySocket
) -> None:
    (tmp_path / "media").mkdir()
    config = tmp_path / "station.toml"
    config.write_text(
        '[station]\nid = "FREEZE-1"\nstore_dir = "store"\nclock = "untrusted"\n'
        '[usb]\nmount_root = "media"\npoll_interval_s = 0.2\n',
        encoding="utf-8",
    )
    stderr = _run_then_stop("edge-station.service", config, notify, "agent")
    # Modules, configuration models, the store's set-up: tens of thousands of objects.
    assert _frozen_said(stderr, "station agent") > 10_000


def test_edge_central_run_freezes_its_start_up_objects_once_listening(
    tmp_path: Path, notify: NotifySocket
) -> None:
    config = tmp_path / "central.toml"
    config.write_text(
        f'[central]\nid = "central-freeze"\nstore_dir = "{tmp_path / "store"}"\n'
        f'[server]\nlisten = "127.0.0.1"\nport = {_free_port()}\nnames = ["localhost", "127.0.0.1"]\n',
        encoding="utf-8",
    )
    init = subprocess.run([str(EDGE), "central", "init", "--config", str(config)],
                          capture_output=True, text=True, timeout=120)
    assert init.returncode == 0, init.stderr
    stderr = _run_then_stop("edge-central.service", config, notify, "central")
    assert _frozen_said(stderr, "central") > 10_000


FREEZING = """
import gc, json, weakref
import edge.station  # what the agent imports: nothing is frozen by importing it
imported = gc.get_freeze_count()

class Node:
    pass

garbage = Node()
garbage.me = garbage  # a cycle only the collector can reclaim
garbage_ref = weakref.ref(garbage)
del garbage
alive = [Node()]
tracked_before = any(o is alive for o in gc.get_objects())

from edge.runtime.collector import freeze_start_up_objects
said = freeze_start_up_objects("test")
print(json.dumps({
    "imported": imported,
    "said": said,
    "frozen": gc.get_freeze_count(),
    "garbage_collected": garbage_ref() is None,
    "tracked_before": tracked_before,
    "tracked_after": any(o is alive for o in gc.get_objects()),
}))
"""


def test_freezing_takes_what_is_alive_out_of_the_collectors_walks_and_garbage_is_collected_first() -> None:
    done = subprocess.run([sys.executable, "-c", FREEZING], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    # Control: importing the station's code freezes nothing, and the live list is walked by the collector.
    assert seen["imported"] == 0 and seen["tracked_before"]
    assert seen["said"] == seen["frozen"] > 10_000
    assert not seen["tracked_after"]  # in the permanent generation: no collection walks it any more
    assert seen["garbage_collected"]  # start-up's garbage was collected, not kept for ever
