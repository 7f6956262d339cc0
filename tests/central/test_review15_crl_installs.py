"""Review 15: the installation record keeps at most 32 destinations, and evicts by recency
(edge.central.revocation._recorded_install keeps ``kept[-32:]``). The copy evicted first is the oldest
install, i.e. the one whose next update comes first: the broker's own copy when its daily renewal
(edge-central-crl.timer) has stopped, which is exactly when the warning matters. Once 32 later one-off
copies (each still in place) were installed, the broker's soon-expiring copy is no longer in the record
and the central reports ~30 days left. Control: with 31 one-off copies the broker's copy is still
reported.

Also (second pair of tests): a file planted at a deleted one-off destination revives its recorded
next update."""

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


# A deleted one-off copy stays in the record until the next install drops it, and the record's next update
# is trusted, not the file's: whoever can create a file at that path again (a one-off in world-writable
# /tmp: any local user; any content, not even a CRL) revives the old destination. The central then reports
# the old copy's next update (a false "expires_soon", then "expired", in /readyz and the log), and every
# later install keeps the destination, since its file "is still there". Control: nobody recreates it, and
# the broker's fresh copy is reported.


def _one_off_deleted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, Path]:
    config = write_central_config(tmp_path)
    assert main(["central", "init", "--config", str(config)]) == 0
    one_off, broker_copy = tmp_path / "tmp" / "look.crl", tmp_path / "broker" / "ca.crl"
    one_off.parent.mkdir()
    broker_copy.parent.mkdir()
    with monkeypatch.context() as patched:
        patched.setattr(revocation, "utc_now", lambda: dt.datetime.now(dt.UTC) - dt.timedelta(days=25))
        assert main(["central", "crl", "--config", str(config), "--out", str(one_off)]) == 0
    assert main(["central", "crl", "--config", str(config), "--out", str(broker_copy)]) == 0
    one_off.unlink()  # the look is over (or /tmp was cleaned)
    return config, one_off, broker_copy


def test_review15_a_file_planted_at_a_deleted_one_off_path_raises_a_false_crl_warning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config, one_off, broker_copy = _one_off_deleted(tmp_path, monkeypatch)
    one_off.write_text("anything\n")  # another local user, in /tmp
    # The daily renewal of the broker's copy keeps the planted destination.
    assert main(["central", "crl", "--config", str(config), "--out", str(broker_copy)]) == 0
    standing = crl_standing(load_central_config(config).layout)
    assert standing.path == broker_copy.absolute() and (standing.seconds_left or 0) > 29 * 86400, (
        f"the broker's copy is fresh, but the central reports {standing.path} with "
        f"{(standing.seconds_left or 0) / 86400:.1f} days left: a file planted where a deleted one-off copy "
        "was, whose content is not even a CRL")


def test_review15_control_a_deleted_one_off_copy_is_forgotten(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config, _one_off, broker_copy = _one_off_deleted(tmp_path, monkeypatch)
    assert main(["central", "crl", "--config", str(config), "--out", str(broker_copy)]) == 0
    standing = crl_standing(load_central_config(config).layout)
    assert standing.path == broker_copy.absolute() and (standing.seconds_left or 0) > 29 * 86400
