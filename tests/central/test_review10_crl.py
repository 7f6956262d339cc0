"""Review 10: the revocation list's rule for the central's own broker identity (OU=central),
edge/central/revocation.py revoked_certificates."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.cli import main
from edge.pki.bundle import BUNDLE_CLIENT_CERT
from edge.pki.certs import certificate_sha256, load_cert
from tests.central.test_crl_broker_identities import _listed, _serial
from tests.mqtt.test_central_broker_identity import write_central_config


def test_review10_a_replacement_identity_prepared_while_the_configured_one_was_never_kept_is_not_listed(
    tmp_path: Path,
) -> None:
    """Every central installed before this release has a configured MQTT identity with no copy in
    identity/issued/. The documented rotation is: `mqtt-identity --out NEW` (a new directory), then point
    [mqtt] client_bundle_dir at NEW. Between the two steps the configured identity is not kept, so
    revocation.py lists EVERY kept OU=central certificate (`if not current:` ... revoked at `now`), i.e. the
    replacement just issued; the daily edge-central-crl.timer installs that list for the broker, and the
    central switched to NEW is refused by the broker (no evidence over MQTT) until a later renewal reaches
    the broker. The module docstring promises the opposite ("one issued after the configured one is its
    replacement waiting for the configuration, never listed").
    Control: once the old identity is imported (keep-issued), the replacement is not listed."""
    config = write_central_config(tmp_path)
    assert main(["central", "init", "--config", str(config)]) == 0
    old, new = tmp_path / "central-mqtt-old", tmp_path / "central-mqtt-new"
    assert main(["central", "mqtt-identity", "--config", str(config), "--out", str(old)]) == 0
    with config.open("a") as toml:
        toml.write(f'[mqtt]\nbroker_url = "mqtts://127.0.0.1:8883"\nca_file = "{old / "ca.crt"}"\n'
                   f'client_bundle_dir = "{old}"\n')
    # Issued by the previous release: no copy kept.
    issued = tmp_path / "central-store" / "identity" / "issued"
    (issued / f"{certificate_sha256(load_cert(old / BUNDLE_CLIENT_CERT))}.crt").unlink()
    assert main(["central", "mqtt-identity", "--config", str(config), "--out", str(new)]) == 0
    listed = _listed(tmp_path, config)
    assert _serial(old / BUNDLE_CLIENT_CERT) not in listed  # cannot be: never kept
    assert _serial(new / BUNDLE_CLIENT_CERT) not in listed, (
        "the replacement identity waiting for the configuration is revoked: switching to it locks the "
        "central out of the broker")


def test_review10_control_with_the_configured_identity_kept_the_replacement_is_not_listed(
    tmp_path: Path,
) -> None:
    config = write_central_config(tmp_path)
    assert main(["central", "init", "--config", str(config)]) == 0
    old, new = tmp_path / "central-mqtt-old", tmp_path / "central-mqtt-new"
    assert main(["central", "mqtt-identity", "--config", str(config), "--out", str(old)]) == 0
    with config.open("a") as toml:
        toml.write(f'[mqtt]\nbroker_url = "mqtts://127.0.0.1:8883"\nca_file = "{old / "ca.crt"}"\n'
                   f'client_bundle_dir = "{old}"\n')
    assert main(["central", "mqtt-identity", "--config", str(config), "--out", str(new)]) == 0
    assert _serial(new / BUNDLE_CLIENT_CERT) not in _listed(tmp_path, config)


def test_review10_the_time_left_reported_is_that_of_the_list_the_broker_has(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CRL gauge and the /readyz warning read identity/ca.crl (revocation.crl_seconds_left), which
    every enroll, revoke, keep-issued and mqtt-identity rewrites with a fresh next update WITHOUT installing
    it for the broker (cli._renew_crl only says "copy it"). With the daily edge-central-crl.service failing
    (/var/lib/evidence-central-crl missing after a reinstall, a full disk, a broker on another host whose
    copy job stopped), one enrolment a month keeps the central reporting ~30 days left while the broker's
    copy runs out: every client is then refused with no warning first.
    Here: the broker's copy is installed at T0; an enrolment at T0 + 25 days; the central reports 30 days
    left, the broker's list has 5."""
    import datetime as dt

    from edge.central import revocation
    from edge.central.config import load_central_config
    from edge.pki.crl import load_crl
    from tests.central.test_crl_broker_identities import _enroll

    config = write_central_config(tmp_path)
    assert main(["central", "init", "--config", str(config)]) == 0
    t0 = dt.datetime.now(dt.UTC)
    broker_copy = tmp_path / "broker-ca.crl"
    monkeypatch.setattr(revocation, "utc_now", lambda: t0)
    assert main(["central", "crl", "--config", str(config), "--out", str(broker_copy)]) == 0
    later = t0 + dt.timedelta(days=25)
    monkeypatch.setattr(revocation, "utc_now", lambda: later)
    _enroll(tmp_path, config, "ST-LATER")
    layout = load_central_config(config).layout
    reported = revocation.crl_seconds_left(layout, now=later)
    next_update = load_crl(broker_copy).next_update_utc
    assert reported is not None and next_update is not None
    broker_left = (next_update - later).total_seconds()
    assert reported <= broker_left + 60, (
        f"the central reports {reported / 86400:.1f} days left; the broker's list has "
        f"{broker_left / 86400:.1f}")
