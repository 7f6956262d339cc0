"""Review 11: hostile bytes in identity/crl-installed.json (edge.central.revocation._installed_record).

The record "cannot be read" case is meant to be logged and fall back to the central's own list
(crl_standing's docstring). A next_update that parses as ISO 8601 but cannot be converted to UTC
(an out-of-range instant: year 9999 with a negative offset) raises OverflowError, which is not caught:
crl_standing raises, so the readiness check (edge.central.health.Readiness.check calls _check_crl outside
any try) and the /metrics CRL gauge fail with an exception instead of a warning. A damaged local file
then turns /readyz into a 500 for the load balancer, which takes the central out of rotation.

Control: a record with a plain garbage next_update is logged and falls back (no exception).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.central.config import load_central_config
from edge.central.revocation import CrlList, crl_standing
from edge.cli import main
from edge.custody.canonical import canonical_json
from tests.mqtt.test_central_broker_identity import write_central_config


@pytest.mark.parametrize("next_update", ["not a time", "9999-12-31T23:59:59-01:00"],
                         ids=["control-garbage", "out-of-range-instant"])
def test_a_damaged_installation_record_falls_back_and_never_raises(tmp_path: Path, next_update: str) -> None:
    config = write_central_config(tmp_path)
    assert main(["central", "init", "--config", str(config)]) == 0
    layout = load_central_config(config).layout
    layout.crl_installed_file.write_bytes(canonical_json(
        {"path": str(tmp_path / "broker.crl"), "next_update": next_update, "installed_utc": "x"}))
    standing = crl_standing(layout)
    assert standing.copy is CrlList.CENTRAL and standing.seconds_left is not None
