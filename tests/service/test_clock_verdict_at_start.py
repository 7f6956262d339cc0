"""`edge run` says at start, in one line, whether the station clock is trusted to set recorder clocks,
which source decided and why: the unit's own command line, a real notify socket, and the real
systemd-timesyncd flag reader pointed at a flag file made by the test."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.processes import NotifySocket, exec_start, notify_socket, running

UNIT = "edge-station.service"


@pytest.fixture
def notify(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NotifySocket]:
    with notify_socket(tmp_path_factory.mktemp("n", numbered=True)) as sock:
        yield sock


def _config(root: Path, clock: str, flag: Path) -> Path:
    (root / "media").mkdir(exist_ok=True)
    path = root / "station.toml"
    path.write_text(
        f'[station]\nid = "CLOCK-TEST"\nstore_dir = "store"\nclock = "{clock}"\n'
        f'[usb]\nmount_root = "media"\npoll_interval_s = 0.2\n'
        f'[time_sync]\nsources = ["timesyncd"]\ntimesyncd_flag = "{flag}"\n',
        encoding="utf-8",
    )
    return path


@pytest.mark.parametrize(
    ("clock", "synchronised", "line"),
    [
        ("auto", True, "INFO edge.station: station clock trusted (source timesyncd)"),
        ("auto", False, "WARNING edge.station: station clock NOT trusted (source timesyncd): "
                        "systemd-timesyncd runs but has not synchronised since boot"),
        ("untrusted", True, "WARNING edge.station: station clock NOT trusted (source config)"),
    ],
)
def test_edge_run_names_the_clock_verdict_once_at_start(
    tmp_path: Path, notify: NotifySocket, clock: str, synchronised: bool, line: str
) -> None:
    flag = tmp_path / "timesync" / "synchronized"
    flag.parent.mkdir()
    if synchronised:
        flag.touch()  # timesyncd touches it at each synchronisation
    config = _config(tmp_path, clock, flag)
    with running(exec_start(UNIT, config), notify.env()) as agent:
        notify.wait_for("READY")
        agent.send_signal(signal.SIGTERM)
        _out, err = agent.communicate(timeout=60)
    assert agent.returncode == 0, err[-3000:]
    verdicts = [text for text in err.splitlines() if "station clock" in text]
    assert len(verdicts) == 1, err[-3000:]
    assert line in verdicts[0], verdicts
    assert os.path.exists(flag) == synchronised  # the reader only looked
