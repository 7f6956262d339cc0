"""Review 15: the installation record keeps at most 32 destinations, and evicts by recency
(edge.central.revocation._recorded_install keeps ``kept[-32:]``). The copy evicted first is the oldest
install, i.e. the one whose next update comes first: the broker's own copy when its daily renewal
(edge-central-crl.timer) has stopped, which is exactly when the warning matters. Once 32 later one-off
copies (each still in place) were installed, the broker's soon-expiring copy is no longer in the record
and the central reports ~30 days left. Control: with 31 one-off copies the broker's copy is still
reported."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from edge.central import revocation
from edge.central.config import load_central_config
from edge.central.revocation import CrlList, crl_standing
from edge.cli import main
from tests.mqtt.test_central_broker_identity import write_central_config


def _standing_after_one_offs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_offs: int) -> tuple[
        Path, revocation.CrlStanding]:
    config = write_central_config(tmp_path)
    assert main(["central", "init", "--config", str(config)]) == 0
    broker_copy = tmp_path / "broker" / "ca.crl"
    broker_copy.parent.mkdir()
    with monkeypatch.context() as patched:
        # The broker's copy, installed 25 days ago; the timer that renews it stopped since.
        patched.setattr(revocation, "utc_now", lambda: dt.datetime.now(dt.UTC) - dt.timedelta(days=25))
        assert main(["central", "crl", "--config", str(config), "--out", str(broker_copy)]) == 0
    staging = tmp_path / "staging"
    staging.mkdir()
    for n in range(one_offs):  # copies for other hosts / looks, all left in place
        assert main(["central", "crl", "--config", str(config), "--out", str(staging / f"{n}.crl")]) == 0
    return broker_copy, crl_standing(load_central_config(config).layout)


def test_review15_32_later_one_off_copies_hide_the_brokers_expiring_copy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broker_copy, standing = _standing_after_one_offs(tmp_path, monkeypatch, 32)
    assert broker_copy.exists()  # still the broker's crlfile, 5 days from its next update
    assert standing.path == broker_copy.absolute() and standing.seconds_left is not None \
        and standing.seconds_left < 6 * 86400, (
            f"the broker's copy {broker_copy} runs out in <6 days, but the central reports {standing.path} "
            f"({standing.copy}) with {(standing.seconds_left or 0) / 86400:.1f} days left: evicted from "
            "the installation record by 32 later one-off installs")


def test_review15_control_31_later_one_off_copies_keep_the_brokers_copy_reported(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broker_copy, standing = _standing_after_one_offs(tmp_path, monkeypatch, 31)
    assert standing.copy is CrlList.INSTALLED and standing.path == broker_copy.absolute()
    assert standing.seconds_left is not None and standing.seconds_left < 6 * 86400
