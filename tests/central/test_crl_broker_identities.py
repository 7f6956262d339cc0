"""The revocation list names the central's replaced broker identities (OU=central) and the broker's
replaced server certificates, never the current ones (edge.central.revocation)."""

from __future__ import annotations

import stat
from pathlib import Path

from edge.cli import main
from edge.pki.bundle import BUNDLE_CLIENT_CERT
from edge.pki.certs import certificate_sha256, load_cert
from edge.pki.crl import load_crl
from tests.mqtt.test_central_broker_identity import write_central_config


def _serial(path: Path) -> int:
    return load_cert(path).serial_number


def _listed(tmp_path: Path, config: Path) -> set[int]:
    out = tmp_path / "broker-ca.crl"
    assert main(["central", "crl", "--config", str(config), "--out", str(out)]) == 0
    return {entry.serial_number for entry in load_crl(out)}


def test_the_configured_central_identity_stands_and_older_ones_and_replaced_broker_certs_are_listed(
    tmp_path: Path,
) -> None:
    config = write_central_config(tmp_path)
    assert main(["central", "init", "--config", str(config)]) == 0
    first, second, third = (tmp_path / f"central-mqtt-{n}" for n in (1, 2, 3))
    for bundle in (first, second, third):
        assert main(["central", "mqtt-identity", "--config", str(config), "--out", str(bundle)]) == 0
    # The configuration still names the second: the third waits for it, the first is replaced.
    with config.open("a") as toml:
        toml.write(f'[mqtt]\nbroker_url = "mqtts://127.0.0.1:8883"\nca_file = "{second / "ca.crt"}"\n'
                   f'client_bundle_dir = "{second}"\n')
    brokers = [tmp_path / f"broker-{n}" for n in (1, 2)]
    for broker in brokers:
        assert main(["central", "broker-cert", "--config", str(config), "--name", "mqtt.example",
                     "--out", str(broker)]) == 0
    assert main(["central", "broker-cert", "--config", str(config), "--name", "mqtt2.example",
                 "--out", str(tmp_path / "broker-other")]) == 0
    listed = _listed(tmp_path, config)
    assert _serial(first / BUNDLE_CLIENT_CERT) in listed
    assert _serial(second / BUNDLE_CLIENT_CERT) not in listed, "the configured identity was revoked"
    assert _serial(third / BUNDLE_CLIENT_CERT) not in listed, "the replacement waiting was revoked"
    assert _serial(brokers[0] / "server.crt") in listed
    assert _serial(brokers[1] / "server.crt") not in listed
    assert _serial(tmp_path / "broker-other" / "server.crt") not in listed  # another host's newest
    assert len(listed) == 2
    # Kept private like every file of the store.
    issued = tmp_path / "central-store" / "identity" / "issued"
    for bundle in (first, second, third):
        kept = issued / f"{certificate_sha256(load_cert(bundle / BUNDLE_CLIENT_CERT))}.crt"
        assert stat.S_IMODE(kept.stat().st_mode) == 0o600
