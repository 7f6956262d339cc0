"""Review 11: a central identity store restored from a backup, and the revocation list.

The CA records its issue order in identity/issued.order; a certificate imported with `edge central
keep-issued` has no place in it and counts as older than every one that has. After the central's
identity directory is restored from a backup taken between two `mqtt-identity` runs (A, then B, B
configured and in use), the restored directory has A (copy and place) but neither B's copy nor its place.
The list then names no central identity and the warning says to import B with `keep-issued`. Done as
told, B ranks *older* than A, so A, the identity B replaced (it reads every station's evidence at the
broker), is still not listed: the broker keeps taking it.

Control: the same two identities without the restore: A is listed, B is not.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edge.cli import main
from edge.pki.bundle import BUNDLE_CLIENT_CERT
from tests.central.test_crl_broker_identities import _listed, _serial
from tests.central.test_review10_identity_order import _configure
from tests.mqtt.test_central_broker_identity import write_central_config


@pytest.mark.parametrize("restored", [False, True], ids=["control-no-restore", "restored-then-imported"])
def test_the_identity_replaced_before_a_restored_backup_is_listed_once_the_current_one_is_imported(
    tmp_path: Path, restored: bool
) -> None:
    config = write_central_config(tmp_path)
    assert main(["central", "init", "--config", str(config)]) == 0
    identity = tmp_path / "central-store" / "identity"
    a, b = tmp_path / "central-mqtt-a", tmp_path / "central-mqtt-b"
    assert main(["central", "mqtt-identity", "--config", str(config), "--out", str(a)]) == 0
    backup = tmp_path / "identity-backup"
    shutil.copytree(identity, backup)  # the nightly backup, taken between the two identities
    assert main(["central", "mqtt-identity", "--config", str(config), "--out", str(b)]) == 0
    _configure(config, b)  # B in use; A replaced
    if restored:
        shutil.rmtree(identity)
        shutil.copytree(backup, identity)  # disk lost: the identity directory comes back from the backup
        assert _serial(a / BUNDLE_CLIENT_CERT) not in _listed(tmp_path, config)  # warned: import B
        assert main(["central", "keep-issued", "--config", str(config),
                     "--cert", str(b / BUNDLE_CLIENT_CERT)]) == 0
    listed = _listed(tmp_path, config)
    assert _serial(b / BUNDLE_CLIENT_CERT) not in listed, "the identity in use is listed"
    assert _serial(a / BUNDLE_CLIENT_CERT) in listed, "the identity B replaced is not listed"
