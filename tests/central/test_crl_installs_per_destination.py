"""The time left the central reports without [mqtt] broker_crl_file: the soonest next update among the
copies `edge central crl --out` installed (edge.central.revocation._broker_install). A one-off copy left in
place warns as it nears its own next update; deleted, it is forgotten."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from edge.central import revocation
from edge.central.config import load_central_config
from edge.central.revocation import CrlList, crl_standing
from edge.cli import main
from tests.mqtt.test_central_broker_identity import write_central_config


def test_a_one_off_copy_counts_until_it_is_deleted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_central_config(tmp_path)
    assert main(["central", "init", "--config", str(config)]) == 0
    one_off, broker_copy = tmp_path / "look.crl", tmp_path / "broker" / "ca.crl"
    broker_copy.parent.mkdir()
    with monkeypatch.context() as patched:
        patched.setattr(revocation, "utc_now", lambda: dt.datetime.now(dt.UTC) - dt.timedelta(days=25))
        assert main(["central", "crl", "--config", str(config), "--out", str(one_off)]) == 0
    assert main(["central", "crl", "--config", str(config), "--out", str(broker_copy)]) == 0
    layout = load_central_config(config).layout
    standing = crl_standing(layout)
    assert standing.copy is CrlList.INSTALLED and standing.path == one_off.absolute()
    assert standing.seconds_left is not None and standing.seconds_left < 6 * 86400
    one_off.unlink()
    standing = crl_standing(layout)
    assert standing.path == broker_copy.absolute()
    assert standing.seconds_left is not None and standing.seconds_left > 29 * 86400
    # The next install drops the deleted destination from the record.
    assert main(["central", "crl", "--config", str(config), "--out", str(broker_copy)]) == 0
    assert str(one_off) not in layout.crl_installed_file.read_text()
