"""Review 11: the time left the central reports for the broker's revocation list, without
[mqtt] broker_crl_file (the example configuration leaves it empty), is that of whatever copy was
installed LAST (identity/crl-installed.json), whichever path that was.

The shipped timer installs the broker's copy daily (`edge central crl --out
/var/lib/evidence-central-crl/ca.crl`). When that renewal has stopped (the failure the gauge and the
/readyz warning exist to catch), one `edge central broker-cert --out DIR` (which also installs a ca.crl
into DIR), or an administrator's `edge central crl --out /tmp/look.crl`, records a fresh 30 days, and the
central reports 30 days while the broker's own copy has 5 left: the warning goes away, and the broker
refuses every client five days later without one.

Control: without the second install the central reports the broker copy's 5 days and warns.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from edge.central import revocation
from edge.central.config import load_central_config
from edge.central.revocation import CRL_WARN_BEFORE, crl_standing
from edge.cli import main
from edge.pki.crl import load_crl
from tests.mqtt.test_central_broker_identity import write_central_config


@pytest.mark.parametrize("second_install", [None, "broker-cert", "crl-out-elsewhere"])
def test_an_install_elsewhere_does_not_reset_the_time_left_of_the_brokers_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, second_install: str | None
) -> None:
    config = write_central_config(tmp_path)
    assert main(["central", "init", "--config", str(config)]) == 0
    broker_copy = tmp_path / "evidence-central-crl" / "ca.crl"  # mosquitto.conf crlfile
    broker_copy.parent.mkdir()
    t0 = dt.datetime.now(dt.UTC) - dt.timedelta(days=25)
    with monkeypatch.context() as patched:
        patched.setattr(revocation, "utc_now", lambda: t0)
        # The timer's last successful run, 25 days ago; it has failed since.
        assert main(["central", "crl", "--config", str(config), "--out", str(broker_copy)]) == 0
    if second_install == "broker-cert":
        assert main(["central", "broker-cert", "--config", str(config), "--name", "mqtt2.example",
                     "--out", str(tmp_path / "broker2-tls")]) == 0
    elif second_install == "crl-out-elsewhere":
        assert main(["central", "crl", "--config", str(config), "--out", str(tmp_path / "look.crl")]) == 0
    broker_next_update = load_crl(broker_copy).next_update_utc
    assert broker_next_update is not None
    now = dt.datetime.now(dt.UTC)
    brokers_left_s = (broker_next_update - now).total_seconds()
    assert brokers_left_s < CRL_WARN_BEFORE.total_seconds()  # the broker's copy: about 5 days left
    standing = crl_standing(load_central_config(config).layout, now)
    assert standing.seconds_left is not None
    assert standing.seconds_left <= brokers_left_s + 60, (
        f"reports {standing.seconds_left / 86400:.1f} days left ({standing.path}); the broker's copy "
        f"{broker_copy} has {brokers_left_s / 86400:.1f}")
