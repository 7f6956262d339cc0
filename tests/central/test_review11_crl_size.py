"""Review 11: the time left of a revocation list of a large agency.

The central reads a list with `edge.pki.crl.load_crl`, which goes through `read_pem` and so reads at
most 64 KiB (the cap meant for keys and certificates). A list entry takes about 72 bytes of PEM (random
159-bit serials, a date, a reason), so a list of about 900 certificates no longer loads: an agency of a
thousand stations that re-enrols them once (key rotation: "then re-enroll", station certificates valid
730 days, the replaced ones listed until they expire) gets there. Mosquitto reads the list; the central
then reports it "unreadable" (/readyz warning for ever, the gauge NaN), and the one warning before the
broker refuses every client (the list past its next update) never comes.

The list here is exactly what `update_crl` writes for that many listed certificates: `build_crl` with
the central's own CA. Control: the same with 100 certificates is read (its 30 days reported).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509

from edge.central.config import load_central_config
from edge.central.identity import load_ca
from edge.central.revocation import CrlList, crl_standing
from edge.cli import main
from edge.pki.crl import RevokedCertificate, build_crl, write_crl
from tests.mqtt.test_central_broker_identity import write_central_config


@pytest.mark.parametrize("listed", [100, 1000], ids=["control-100", "agency-1000"])
def test_the_time_left_of_a_list_of_a_thousand_certificates_is_reported(tmp_path: Path, listed: int) -> None:
    config = write_central_config(tmp_path)
    assert main(["central", "init", "--config", str(config)]) == 0
    layout = load_central_config(config).layout
    ca_cert, ca_key = load_ca(layout)
    now = dt.datetime.now(dt.UTC)
    entries = [RevokedCertificate(x509.random_serial_number(), now, x509.ReasonFlags.superseded)
               for _ in range(listed)]
    broker_copy = tmp_path / "broker" / "ca.crl"
    broker_copy.parent.mkdir()
    write_crl(broker_copy, build_crl(ca_cert, ca_key, entries, now=now))
    standing = crl_standing(layout, now, broker_crl_file=broker_copy)
    assert standing.copy is CrlList.BROKER
    assert standing.seconds_left is not None, (
        f"a list of {listed} certificates ({broker_copy.stat().st_size} bytes) is unreadable to the central")
    assert abs(standing.seconds_left - 30 * 86400) < 120
