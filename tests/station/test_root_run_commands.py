"""Administrative commands run as root (`sudo edge keys rotate`, as the README shows) on a store that
belongs to the service user must leave it to that user: the review found the new station key written
root:root 0600, and the agent (user evidence-edge) then exited 78 "Permission denied" and stayed down.

The store here belongs to a uid no account uses; the "agent" is a child process that drops to that uid
and group (no capabilities left) and opens the store the way the agent does.
"""

from __future__ import annotations

import os
import pwd
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.cli import main
from edge.ingest.store import StationStore
from tests.prerequisites import require

STATION = "S-ROOT"


def unused_id() -> int:
    for uid in range(61_000, 62_000):
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
    raise AssertionError("no unused uid between 61000 and 62000")


@pytest.fixture
def service_store() -> Iterator[tuple[Path, Path, int]]:
    """A store that belongs to an unprivileged uid (and gid), its configuration, and that uid."""
    require(os.geteuid() == 0, "needs root: the case is a command run as root on a service user's store")
    uid = unused_id()
    base = Path(tempfile.mkdtemp(prefix="root_run_"))
    try:
        base.chmod(0o755)  # the service user reaches its store; pytest's tmp_path is root's alone
        store = base / "store"
        opened = StationStore(store, STATION, purpose="test")
        opened.record("station_started", None, {"station": STATION})
        opened.close()
        for path in [store, *store.rglob("*")]:
            os.chown(path, uid, uid, follow_symlinks=False)
        config = base / "station.toml"
        config.write_text(
            f'[station]\nid = "{STATION}"\nstore_dir = "{store}"\n[usb]\nmount_root = "{base}"\n'
        )
        yield store, config, uid
    finally:
        shutil.rmtree(base)


def open_as(uid: int, store: Path) -> str | None:
    """Open the store and append an entry as the agent would, in a child running as ``uid``; None when
    that worked, else the reason it did not."""
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        os.close(reader)
        status = 0
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            opened = StationStore(store, STATION, purpose="agent stand-in")
            opened.record("station_started", None, {"station": STATION})
            opened.close()
        except BaseException as exc:  # everything goes back to the parent
            os.write(writer, f"{type(exc).__name__}: {exc}".encode()[:4000])
            status = 1
        os._exit(status)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        said = pipe.read().decode(errors="replace")
    _, status = os.waitpid(child, 0)
    return None if os.waitstatus_to_exitcode(status) == 0 else said or f"exit status {status}"


def foreign(store: Path, uid: int) -> list[str]:
    return [str(path.relative_to(store)) for path in [store, *store.rglob("*")]
            if os.lstat(path).st_uid != uid or os.lstat(path).st_gid != uid]


def test_keys_rotate_as_root_leaves_the_store_to_its_owner(service_store: tuple[Path, Path, int]) -> None:
    store, config, uid = service_store
    assert open_as(uid, store) is None  # the store works for its owner before
    assert main(["keys", "rotate", "--config", str(config), "--reason", "yearly rotation"]) == 0
    assert foreign(store, uid) == []
    assert open_as(uid, store) is None


def test_a_root_owned_key_file_keeps_the_agent_out(service_store: tuple[Path, Path, int]) -> None:
    """Control: what the review saw, and that the stand-in agent notices it."""
    store, _, uid = service_store
    os.chown(store / "keys" / "station.key", 0, 0)
    refused = open_as(uid, store)
    assert refused is not None and "Permission denied" in refused


def test_edge_tag_as_root_leaves_the_files_it_made_to_the_owner(
    service_store: tuple[Path, Path, int],
) -> None:
    """`edge tag` opens the store, which can write keys/station.key.pub and the ledger reserve anew."""
    store, config, uid = service_store
    (store / "keys" / "station.key.pub").unlink()
    (store / "ledger.reserve").unlink()
    main(["tag", "00000000-0000-4000-8000-000000000000", "--config", str(config), "--case", "A-1"])
    assert (store / "keys" / "station.key.pub").is_file()
    assert foreign(store, uid) == []
    assert open_as(uid, store) is None


def test_sqlite_gives_its_wal_and_shm_files_to_the_database_owner(
    service_store: tuple[Path, Path, int],
) -> None:
    """A root-run command that dies with the database open leaves -wal and -shm behind: SQLite (run as
    root) creates them with the database file's owner, so the agent can open the store afterwards."""
    store, _, uid = service_store
    db = store / "state.db"
    conn = sqlite3.connect(db)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE IF NOT EXISTS probe (x INTEGER)")
        conn.execute("INSERT INTO probe VALUES (1)")
        conn.commit()
        for name in ("state.db-wal", "state.db-shm"):
            info = os.stat(store / name)
            assert (info.st_uid, info.st_gid) == (uid, uid), name
        assert open_as(uid, store) is None
    finally:
        conn.close()
