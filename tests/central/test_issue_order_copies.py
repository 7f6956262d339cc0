"""The CA's issue order is kept twice (identity/issued.order and <store_dir>/issued-order.copy): whichever
copy comes back from a backup, the order read is the true one (edge.central.identity.issue_order)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edge.central.config import load_central_config
from edge.central.identity import issue_order
from edge.cli import main
from edge.pki.bundle import BUNDLE_CLIENT_CERT
from edge.pki.certs import certificate_sha256, load_cert
from tests.mqtt.test_central_broker_identity import write_central_config


@pytest.mark.parametrize("restored", ["none", "identity-copy", "store-copy"])
def test_the_order_survives_a_restore_of_either_copy(tmp_path: Path, restored: str) -> None:
    config = write_central_config(tmp_path)
    assert main(["central", "init", "--config", str(config)]) == 0
    layout = load_central_config(config).layout
    bundles = [tmp_path / f"central-mqtt-{n}" for n in range(3)]
    assert main(["central", "mqtt-identity", "--config", str(config), "--out", str(bundles[0])]) == 0
    backups = {path: tmp_path / f"backup-{path.name}" for path in
               (layout.issue_order_file, layout.issue_order_copy_file)}
    for path, backup in backups.items():
        shutil.copyfile(path, backup)  # taken between the first identity and the second
    assert main(["central", "mqtt-identity", "--config", str(config), "--out", str(bundles[1])]) == 0
    if restored != "none":
        path = layout.issue_order_file if restored == "identity-copy" else layout.issue_order_copy_file
        shutil.copyfile(backups[path], path)
    # Issued after the restore: appended to both copies.
    assert main(["central", "mqtt-identity", "--config", str(config), "--out", str(bundles[2])]) == 0
    places = issue_order(layout)
    ranks = [places[certificate_sha256(load_cert(bundle / BUNDLE_CLIENT_CERT))] for bundle in bundles]
    assert ranks == sorted(ranks), f"restored {restored}: places {ranks}"
