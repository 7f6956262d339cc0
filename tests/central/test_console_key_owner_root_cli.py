"""A console.key made by a root-run administration command takes the store owner's uid/gid (review R13).

The finding: the README shows the console's account commands without `runuser`
(`edge central account enrol-totp li.legal --config …`). Run as root on a store that has no console.key yet
(a store upgraded in place, before the central's first restart), enrol-totp makes identity/console.key
owned by root, mode 0600, inside the service user's store: the central (User=evidence-central) cannot read
it, so it runs with every TOTP sign-in refused and an unsealed access log (R10). The station already solves
this for its own root-run commands (edge.durable.files.adopt_owner: new files take the store's owner);
ConsoleSecretKey.create does not use it.

Needs root. Failed before the fix: the key was root's. Control: the store directory is the service user's."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.central.test_console_at_rest import CentralProcess
from tests.central.test_console_at_rest import process as process  # fixture
from tests.prerequisites import require

SERVICE_UID = 65534  # stands in for evidence-central


def test_a_root_run_enrol_totp_leaves_the_key_to_the_store_owner(process: CentralProcess) -> None:
    require(os.geteuid() == 0, "a file owned by another user needs root")
    store = process.config.central.store_dir
    process.config.layout.console_key.unlink()  # an older store: no key yet, and no trail seals
    db = sqlite3.connect(process.config.layout.index_db)
    try:
        db.execute("DROP TABLE trail_seals")
    finally:
        db.close()
    for path in [store, *store.rglob("*")]:
        os.chown(path, SERVICE_UID, SERVICE_UID, follow_symlinks=False)
    assert store.stat().st_uid == SERVICE_UID  # control
    done = subprocess.run([sys.executable, "-m", "edge.cli", "central", "account", "enrol-totp", "li.legal",
                           "--config", str(process.config_path)], capture_output=True, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    key: Path = process.config.layout.console_key
    assert key.stat().st_uid == SERVICE_UID, (
        f"console.key is owned by uid {key.stat().st_uid} (mode {key.stat().st_mode & 0o777:o}): the "
        "service user cannot read it")
