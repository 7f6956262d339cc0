"""A rolling upgrade: a central of the previous release appends to a store this release has opened.

Review 6, R14 upgrade path (the reviewer's repro, failing before the fix): every open of index.db by this
release dropped and re-created the trail tables' seal triggers with a five-argument call of
``edge_trail_seal`` (the ``begun`` flag). A central of the previous release (4b40d3d) registers that
function with four arguments. So as soon as any process of the new release opened the store (an upgraded
instance behind the load balancer, or `edge central account ...` of the freshly installed package before
the running service is restarted), every console trail append of the running older central failed
("wrong number of arguments to function edge_trail_seal()"): its console refused every read and sign-in.

The tests run the previous release's own code (``git archive 4b40d3d``) in a subprocess as the older
instance. The triggers are now the previous release's text again; the function asks whether the seals
have begun itself.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import tarfile
from io import BytesIO
from pathlib import Path

from edge.central.config import CentralLayout
from edge.central.console.secret_key import prepare_console_key
from edge.central.index import Role
from edge.central.sqlite import SqliteDatabase
from edge.central.verify import verify_central_store
from tests.central.conftest import make_central_parts
from tests.prerequisites import require

REPO = Path(__file__).resolve().parents[2]
PREVIOUS_RELEASE = "4b40d3d"

OLDER_INSTANCE_APPENDS = """
import sys
from pathlib import Path
from edge.central.config import CentralLayout
from edge.central.console.secret_key import ConsoleSecretKey
from edge.central.index import Role
from edge.central.sqlite import SqliteDatabase
from edge.durable.files import ensure_private_dir
root = Path(sys.argv[1])
key = CentralLayout(root).console_key
if not key.exists():
    ensure_private_dir(key.parent)
    ConsoleSecretKey.create(key)
database = SqliteDatabase.open(root / "index.db")
try:
    database.console.grant(sys.argv[2], Role.READER, ["330106000000"], by="admin", reason="case")
finally:
    database.close()
print("appended")
"""


def _previous_release(tmp_path: Path) -> Path:
    found = subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{PREVIOUS_RELEASE}^{{commit}}"],
                           capture_output=True, check=False)
    require(found.returncode == 0, f"needs a git checkout holding the previous release {PREVIOUS_RELEASE}")
    archive = subprocess.run(["git", "-C", str(REPO), "archive", PREVIOUS_RELEASE, "edge"],
                             check=True, capture_output=True).stdout
    target = tmp_path / "previous-release"
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return target


def _older_instance_appends(code: Path, root: Path, reader: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", OLDER_INSTANCE_APPENDS, str(root), reader],
                          env={"PYTHONPATH": str(code), "PATH": "/usr/bin:/bin"}, cwd=code,
                          capture_output=True, text=True, timeout=60)


def test_an_older_central_keeps_appending_its_console_trails_once_the_new_release_opened_the_store(
    tmp_path: Path,
) -> None:
    old_code = _previous_release(tmp_path)
    root = tmp_path / "central"
    root.mkdir()
    first = _older_instance_appends(old_code, root, "zhao.clerk")
    assert first.returncode == 0, first.stderr  # control: the older central appends to its own store
    SqliteDatabase.open(root / "index.db").close()  # an upgraded instance (or a new `edge central ...`)
    again = _older_instance_appends(old_code, root, "qian.clerk")
    assert again.returncode == 0, (
        "once the new release has opened index.db, the previous release's central can no longer append a "
        f"console trail row: {again.stderr.strip().splitlines()[-1:]}")



def test_both_releases_append_in_turn_and_the_seals_of_each_check(tmp_path: Path) -> None:
    """The store sealed by this release, then appended to by the previous one, then by this one again:
    every trail row checks under its seal (the older central's MACs are the same HMAC), and the trigger
    this release leaves is the previous release's own text."""
    old_code = _previous_release(tmp_path)
    root = tmp_path / "central"
    parts = make_central_parts(root)
    database = parts.index.unit
    assert isinstance(database, SqliteDatabase)
    layout = CentralLayout(root)
    assert prepare_console_key(layout.console_key, database.console, by="central-start") is not None
    database.console.grant("sun.clerk", Role.READER, ["330106000000"], by="admin", reason="case")
    parts.index.close()
    done = _older_instance_appends(old_code, root, "zhou.clerk")
    assert done.returncode == 0, done.stderr
    database = SqliteDatabase.open(root / "index.db")
    try:
        database.console.grant("wu.clerk", Role.READER, ["330106000000"], by="admin", reason="case")
        triggers = [row[0] for row in database.conn.execute(
            "SELECT sql FROM sqlite_schema WHERE type = 'trigger' AND name = 'grant_events_seal'")]
    finally:
        database.close()
    assert len(triggers) == 1 and "edge_trail_seal((" in triggers[0] and "EXISTS" not in triggers[0]
    key = parts.signing_key.public_key()
    assert [str(p) for p in verify_central_store(root, central_public_key=key)] == []
    conn = sqlite3.connect(root / "index.db")  # control: an edited row of the older central is named
    try:
        with conn:
            conn.execute("DROP TRIGGER grant_events_no_update")
            conn.execute("UPDATE grant_events SET units = '330100000000' WHERE name = 'zhou.clerk'")
    finally:
        conn.close()
    problems = [str(p) for p in verify_central_store(root, central_public_key=key)]
    assert any(p.startswith("grant_events: row 2") for p in problems), problems
