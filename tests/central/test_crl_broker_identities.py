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


def _enroll(root: Path, config: Path, station_id: str) -> Path:
    from edge.custody.keys import StationKey

    key = StationKey.load_or_create(root / f"{station_id}.key")
    bundle = root / f"bundle-{station_id}"
    assert key.public_path is not None
    assert main(["central", "enroll", station_id, "--config", str(config),
                 "--signing-key", str(key.public_path), "--out", str(bundle)]) == 0
    return bundle


def test_keep_issued_imports_an_unkept_enrolled_certificate_and_refuses_foreign_ones(tmp_path: Path) -> None:
    """An enrolment by an earlier release left no copy (removed here): `keep-issued` imports the bundle's
    certificate and the list names it once revoked. Refused: a certificate of another CA, and a station
    certificate of a name never enrolled."""
    config = write_central_config(tmp_path)
    assert main(["central", "init", "--config", str(config)]) == 0
    bundle = _enroll(tmp_path, config, "ST-OLD")
    cert_file = bundle / BUNDLE_CLIENT_CERT
    issued = tmp_path / "central-store" / "identity" / "issued"
    kept = issued / f"{certificate_sha256(load_cert(cert_file))}.crt"
    kept.unlink()
    assert main(["central", "revoke", "ST-OLD", "--config", str(config), "--reason", "stolen"]) == 0
    assert _serial(cert_file) not in _listed(tmp_path, config)  # the gap keep-issued closes

    # Refused: another CA's certificate of the same name (another central's store).
    other = tmp_path / "other"
    other.mkdir()
    other_config = write_central_config(other)
    assert main(["central", "init", "--config", str(other_config)]) == 0
    foreign = _enroll(other, other_config, "ST-OLD") / BUNDLE_CLIENT_CERT
    assert main(["central", "keep-issued", "--config", str(config), "--cert", str(foreign)]) != 0
    assert not (issued / f"{certificate_sha256(load_cert(foreign))}.crt").exists()
    # Refused: a certificate of this CA for a name the index never enrolled (issued, never recorded).
    from edge.central.config import load_central_config
    from edge.central.identity import enroll_station
    from edge.custody.keys import StationKey

    key = StationKey.load_or_create(tmp_path / "ghost.key")
    assert key.public_path is not None
    ghost = enroll_station(load_central_config(config), "ST-GHOST", signing_key_pub=key.public_path,
                           out_dir=tmp_path / "bundle-ghost")
    assert main(["central", "keep-issued", "--config", str(config),
                 "--cert", str(ghost.bundle_dir / BUNDLE_CLIENT_CERT)]) != 0
    assert not kept.exists()
    renamed = tmp_path / "client-of-ST-OLD.crt"
    renamed.write_bytes(cert_file.read_bytes())
    assert main(["central", "keep-issued", "--config", str(config), "--cert", str(renamed)]) == 0
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert _serial(cert_file) in _listed(tmp_path, config)
