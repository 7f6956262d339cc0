"""Review 10 (3c): the time left the central reports (the CRL gauge, the /readyz warning) is that of the
list the broker has: [mqtt] broker_crl_file when set, else the copy `edge central crl --out` last
installed, never the central's own identity/ca.crl once something was installed (enrolments renew that
one without installing it). /readyz names which copy it read."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import aiohttp
import pytest

from edge.central import revocation
from edge.central.app import READINESS
from edge.central.config import load_central_config
from edge.central.health import Readiness
from edge.central.revocation import CrlList, crl_standing, update_crl
from edge.cli import main
from edge.config.base import ConfigError
from tests.central.conftest import free_port, start_http_central
from tests.central.test_crl_broker_identities import _enroll
from tests.central.test_health_metrics import anonymous_session, get, metric_samples
from tests.mqtt.test_central_broker_identity import write_central_config

_GAUGE = ("edge_central_crl_next_update_seconds", ())
_DAY_S = 86400


def _with_mqtt(config: Path, root: Path, **extra: str) -> None:
    settings = "".join(f'{key} = "{value}"\n' for key, value in extra.items())
    with config.open("a") as toml:
        toml.write(f'[mqtt]\nbroker_url = "mqtts://127.0.0.1:8883"\nca_file = "{root / "ca.crt"}"\n'
                   f'client_bundle_dir = "{root / "central-mqtt"}"\n{settings}')


def test_with_broker_crl_file_set_readyz_reports_the_brokers_list_and_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker's copy is installed at T0 and the daily renewal then stops; an enrolment at T0 + 25
    days renews the central's own list. With [mqtt] broker_crl_file naming the broker's copy, the
    central reports its 5 days and /readyz warns, naming the copy it read. Control: once the copy is
    renewed, the warning goes."""
    config = write_central_config(tmp_path)
    broker_copy = tmp_path / "broker" / "ca.crl"
    broker_copy.parent.mkdir()
    _with_mqtt(config, tmp_path, broker_crl_file=str(broker_copy))
    assert main(["central", "init", "--config", str(config)]) == 0
    t0 = dt.datetime.now(dt.UTC)
    monkeypatch.setattr(revocation, "utc_now", lambda: t0)
    assert main(["central", "crl", "--config", str(config), "--out", str(broker_copy)]) == 0
    later = t0 + dt.timedelta(days=25)
    monkeypatch.setattr(revocation, "utc_now", lambda: later)
    # Installed by something else than the central (or the record is lost): the file itself is read.
    (tmp_path / "central-store" / "identity" / "crl-installed.json").unlink()
    _enroll(tmp_path, config, "ST-LATER")
    loaded = load_central_config(config)
    assert loaded.mqtt is not None and loaded.mqtt.broker_crl_file == broker_copy
    standing = crl_standing(loaded.layout, later, broker_crl_file=broker_copy)
    assert standing.copy is CrlList.BROKER and standing.path == broker_copy
    assert standing.seconds_left is not None and 4.9 * _DAY_S < standing.seconds_left <= 5 * _DAY_S
    # Without the setting (and without the record) the central can only report its own renewed list.
    assert crl_standing(loaded.layout, later).copy is CrlList.CENTRAL

    readiness = Readiness(cast("object", SimpleNamespace(config=loaded)))  # type: ignore[arg-type]
    monkeypatch.setattr("edge.central.revocation.utc_now", lambda: later)
    readiness._check_crl()
    assert readiness.warnings == {"crl": "expires_soon", "crl_list": "broker_crl_file"}
    assert main(["central", "crl", "--config", str(config), "--out", str(broker_copy)]) == 0
    readiness._check_crl()
    assert readiness.warnings == {}
    # A broker copy that cannot be read is named as such (the broker refuses everyone without one).
    broker_copy.write_text("not a list\n")
    readiness._check_crl()
    assert readiness.warnings == {"crl": "unreadable", "crl_list": "broker_crl_file"}


def test_broker_crl_file_must_be_absolute_and_may_be_empty(tmp_path: Path) -> None:
    config = write_central_config(tmp_path)
    _with_mqtt(config, tmp_path, broker_crl_file="relative/ca.crl")
    with pytest.raises(ConfigError, match="broker_crl_file"):
        load_central_config(config)
    config = write_central_config(tmp_path)
    _with_mqtt(config, tmp_path, broker_crl_file="")
    loaded = load_central_config(config)
    assert loaded.mqtt is not None and loaded.mqtt.broker_crl_file is None


async def test_without_the_setting_readyz_and_the_gauge_report_the_last_installed_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A running central (HTTP, real /readyz and /metrics): the list was installed for the broker 27
    days ago, and an enrolment just renewed the central's own list. The gauge shows the installed
    copy's 3 days and /readyz warns, naming the last installed copy; the central's own list (30 days)
    would hide it. Control: `edge central crl --out` again, and the warning goes."""
    central = await start_http_central(tmp_path, dev=False, server={"metrics_port": free_port()})
    try:
        central.running.app[READINESS].max_age_s = 0.0
        broker_copy = tmp_path / "broker-ca.crl"
        past = dt.datetime.now(dt.UTC) - dt.timedelta(days=27)
        with monkeypatch.context() as patched:
            patched.setattr(revocation, "utc_now", lambda: past)
            update_crl(central.config, None, copy_to=broker_copy)
        update_crl(central.config, None)  # an enrolment's renewal: not installed for the broker
        scrape = f"{central.running.metrics_url}/metrics"
        async with anonymous_session(central) as session, aiohttp.ClientSession() as plain:
            status, body = await get(session, f"{central.url}/readyz")
            assert status == 200 and body["warnings"] == {"crl": "expires_soon", "crl_list": "last_installed"}
            async with plain.get(scrape) as reply:
                left = metric_samples(await reply.text())[_GAUGE]
            assert 2.9 * _DAY_S < left < 3.0 * _DAY_S
            update_crl(central.config, None, copy_to=broker_copy)
            status, body = await get(session, f"{central.url}/readyz")
            assert status == 200 and "warnings" not in body
            async with plain.get(scrape) as reply:
                left = metric_samples(await reply.text())[_GAUGE]
            assert 29.9 * _DAY_S < left <= 30 * _DAY_S
    finally:
        await central.running.stop()
