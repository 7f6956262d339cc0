"""Review 9: what the CA's revocation list (edge.central.revocation) leaves out, through the operator's
commands (`edge central init`, `enroll`, `mqtt-identity`, `revoke`, `crl --out`). No broker needed: the
broker refuses exactly what the list names (tests/mqtt/test_broker_crl.py).

Both fail on review9 (b66b5dc)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edge.cli import main
from edge.custody.keys import StationKey
from edge.pki.bundle import BUNDLE_CLIENT_CERT
from edge.pki.certs import load_cert
from edge.pki.crl import load_crl
from tests.mqtt.test_central_broker_identity import write_central_config


def _serials(crl_file: Path) -> set[int]:
    return {entry.serial_number for entry in load_crl(crl_file)}


def _enroll(root: Path, config: Path, station_id: str) -> Path:
    key = StationKey.load_or_create(root / f"{station_id}.key")
    bundle = root / f"bundle-{station_id}"
    assert key.public_path is not None
    assert main(["central", "enroll", station_id, "--config", str(config),
                 "--signing-key", str(key.public_path), "--out", str(bundle)]) == 0
    return bundle


def test_a_replaced_central_mqtt_identity_is_named_by_the_crl(tmp_path: Path) -> None:
    """The central's broker identity (CN = central id, OU=central) reads every station's evidence and
    commands every station on the broker: the most valuable certificate the CA issues. When the operator
    replaces it (`edge central mqtt-identity` again, e.g. after the central host was compromised), the old
    one must stop working on the broker. It is never kept in identity/issued/ and revocation.py lists only
    station and auditor certificates, so the old certificate keeps the central's rights until it expires
    (station_cert_days). Control: a replaced station certificate is named."""
    config = write_central_config(tmp_path)
    assert main(["central", "init", "--config", str(config)]) == 0
    old, new = tmp_path / "central-mqtt-old", tmp_path / "central-mqtt-new"
    assert main(["central", "mqtt-identity", "--config", str(config), "--out", str(old)]) == 0
    station_old = _enroll(tmp_path, config, "ST-1")
    old_station = load_cert(station_old / BUNDLE_CLIENT_CERT).serial_number
    shutil.rmtree(station_old)
    _enroll(tmp_path, config, "ST-1")  # re-enrolment replaces the station's certificate
    assert main(["central", "mqtt-identity", "--config", str(config), "--out", str(new)]) == 0
    out = tmp_path / "broker-ca.crl"
    assert main(["central", "crl", "--config", str(config), "--out", str(out)]) == 0
    serials = _serials(out)
    # Control: the replaced station certificate is listed, the current central identity is not.
    assert old_station in serials
    assert load_cert(new / BUNDLE_CLIENT_CERT).serial_number not in serials
    old_central = load_cert(old / BUNDLE_CLIENT_CERT).serial_number
    assert old_central in serials, "the replaced central MQTT identity is still accepted by the broker"
    assert len(serials) == 2


def test_revoking_a_station_whose_certificate_the_central_never_kept_says_the_broker_still_takes_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An upgrade: the station was enrolled by an earlier release, so its certificate is not in
    identity/issued/ (simulated by removing it). `edge central revoke` then prints "Its certificate is
    refused from now on" and a CRL with 0 certificates: the operator believes the broker refuses the
    station, and it does not. The command must say that this certificate cannot be listed (and what to do:
    re-key the CA, or import the old bundle's certificate). Control: with issued/ kept, the CRL names it."""
    config = write_central_config(tmp_path)
    assert main(["central", "init", "--config", str(config)]) == 0
    _enroll(tmp_path, config, "ST-OLD")
    _enroll(tmp_path, config, "ST-NEW")
    issued = tmp_path / "central-store" / "identity" / "issued"
    old_cert = load_cert(tmp_path / "bundle-ST-OLD" / BUNDLE_CLIENT_CERT)
    kept = [p for p in issued.glob("*.crt") if load_cert(p).serial_number == old_cert.serial_number]
    assert len(kept) == 1
    kept[0].unlink()  # what an enrolment by the previous release left: no copy
    capsys.readouterr()
    for station in ("ST-OLD", "ST-NEW"):
        assert main(["central", "revoke", station, "--config", str(config), "--reason", "stolen"]) == 0
    said = capsys.readouterr()
    out = tmp_path / "broker-ca.crl"
    assert main(["central", "crl", "--config", str(config), "--out", str(out)]) == 0
    serials = _serials(out)
    new_cert = load_cert(tmp_path / "bundle-ST-NEW" / BUNDLE_CLIENT_CERT)
    assert new_cert.serial_number in serials  # control
    assert old_cert.serial_number not in serials  # the residual README "Broker setup" documents
    text = (said.out + said.err).lower()
    assert "st-old" in text and ("not in the revocation list" in text or "cannot be listed" in text), (
        "revoke said nothing about the certificate the broker still accepts:\n" + said.out + said.err)
