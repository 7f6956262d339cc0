"""console.key records, outside index.db, that the trails are sealed; it is written crash-safely and never
replaced while anything in the index is sealed with it; one damaged plain TOTP secret does not stop a start.

Reproductions from the review of the console hardening (R1, R6, R7, R11)."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edge.central.config import CentralLayout
from edge.central.console.secret_key import ConsoleSecretKey, is_sealed, prepare_console_key
from edge.central.identity import init_central
from edge.central.service import start_central
from edge.central.sqlite import SqliteDatabase
from edge.central.verify import verify_central
from edge.custody.keys import StationKey
from edge.pki.names import IdentityError
from tests.central.conftest import central_config
from tests.central.test_verify_console_trails import Console, _attacker
from tests.central.test_verify_console_trails import console as console

STRIPS = ["DROP TABLE trail_seals", "DELETE FROM trail_seals"]


def _edit_and_strip(console: Console, strip: str | None) -> None:
    """Whoever writes index.db without the key: the rogue auditor's read now names someone else."""
    conn = _attacker(console.root / "index.db")
    try:
        conn.execute("UPDATE access_log SET reader = 'someone.else' WHERE id = 3")
        if strip is not None:
            conn.execute(strip)
    finally:
        conn.close()


def _start(root: Path) -> ConsoleSecretKey | None:
    database = SqliteDatabase.open(root / "index.db")  # as `edge central run` opens it
    try:
        return prepare_console_key(CentralLayout(root).console_key, database.console, by="central-start")
    finally:
        database.close()


# -- R1: stripped seals -----------------------------------------------------------------------------

def test_control_an_edit_alone_is_named(console: Console) -> None:
    _edit_and_strip(console, None)
    assert any("access_log: row 3 was edited" in p for p in console.verify())


def test_the_key_file_records_that_the_trails_are_sealed(console: Console) -> None:
    key = ConsoleSecretKey.load(CentralLayout(console.root).console_key)
    assert key.trails_sealed


@pytest.mark.parametrize("strip", STRIPS)
def test_verify_names_a_sealed_store_whose_seals_were_removed(console: Console, strip: str) -> None:
    _edit_and_strip(console, strip)
    findings = verify_central(console.root, central_public_key=console.key.public_key())
    assert any("seals were removed" in str(p) for p in findings.problems), findings.problems


@pytest.mark.parametrize("strip", STRIPS)
def test_the_next_start_does_not_reseal_an_edit_made_with_the_seals_removed(
    console: Console, strip: str
) -> None:
    _edit_and_strip(console, strip)
    assert _start(console.root) is not None
    conn = sqlite3.connect(console.root / "index.db")
    try:
        assert conn.execute("SELECT reader FROM access_log WHERE id = 3").fetchone()[0] == "someone.else"
        assert conn.execute("SELECT count(*) FROM trail_seals WHERE mac IS NOT NULL").fetchone()[0] == 0
    finally:
        conn.close()
    assert any("seals were removed" in p for p in console.verify())


def test_a_crash_between_key_creation_and_the_first_sealing_seals_at_the_next_start(tmp_path: Path) -> None:
    (tmp_path / "identity").mkdir()
    layout = CentralLayout(tmp_path)
    ConsoleSecretKey.create(layout.console_key)  # ... and the process died before sealing
    database = SqliteDatabase.open(tmp_path / "index.db")
    try:
        database.console.create_account("li.legal", "$argon2id$not-a-real-hash", by="admin")
        assert database.console.trail_seals_state() == (False, True)  # the row sealed by its trigger
        key = prepare_console_key(layout.console_key, database.console, by="central-start")
        assert key is not None and key.trails_sealed
        assert database.console.trail_seals_state() == (True, True)
    finally:
        database.close()
    assert ConsoleSecretKey.load(layout.console_key).trails_sealed


# -- R7: a missing key is not replaced under sealed trail rows --------------------------------------

def test_control_the_store_verifies(console: Console) -> None:
    assert console.verify() == []


def test_a_missing_key_is_not_replaced_while_trail_rows_are_sealed_with_it(console: Console) -> None:
    layout = CentralLayout(console.root)
    layout.console_key.unlink()  # a restore from a backup made without it
    database = SqliteDatabase.open(layout.index_db)
    try:
        assert database.console.totp_secrets() == []  # no TOTP: the sealed-secret guard does not apply
        key = prepare_console_key(layout.console_key, database.console, by="central-start")
    finally:
        database.close()
    assert key is None and not layout.console_key.exists()


# -- R6: written crash-safely -------------------------------------------------------------------------

_KILLED_WRITE = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    path = Path(sys.argv[2])
    def killed(fd, data):  # the process dies as its first byte of key material is written
        os.kill(os.getpid(), signal.SIGKILL)
    os.write = killed
    if sys.argv[1] == "console":
        from edge.central.console.secret_key import ConsoleSecretKey
        ConsoleSecretKey.create(path)
    else:
        from edge.custody.keys import StationKey
        StationKey.generate().save_new(path)
""")


def _killed_while_writing(kind: str, path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", _KILLED_WRITE, kind, str(path)], check=False,
                          cwd=Path(__file__).parent.parent.parent)
    assert done.returncode == -9


def test_control_a_signing_key_killed_while_written_is_absent_not_partial(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    _killed_while_writing("station", path)
    assert not path.exists()


def test_a_console_key_killed_while_written_is_absent_not_partial(tmp_path: Path) -> None:
    path = tmp_path / "console.key"
    _killed_while_writing("console", path)
    assert not path.exists(), f"a crash left a {path.stat().st_size}-byte console.key the next start refuses"
    ConsoleSecretKey.create(path)  # the next start clears the dead process's temporary and makes the key
    assert [p.name for p in tmp_path.iterdir()] == ["console.key"]


def _dirs_fsynced(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    seen: list[int] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            seen.append(info.st_ino)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return seen


def test_control_a_signing_key_fsyncs_its_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _dirs_fsynced(monkeypatch)
    StationKey.generate().save_new(tmp_path / "signing.key")
    assert tmp_path.stat().st_ino in seen


def test_a_console_key_fsyncs_its_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _dirs_fsynced(monkeypatch)
    ConsoleSecretKey.create(tmp_path / "console.key")
    assert tmp_path.stat().st_ino in seen, "console.key's directory entry is not made durable"


# -- R11: one damaged plain secret --------------------------------------------------------------------

def test_one_bad_plain_secret_is_skipped_and_the_start_goes_on(tmp_path: Path) -> None:
    (tmp_path / "identity").mkdir()
    database = SqliteDatabase.open(tmp_path / "index.db")
    try:
        console = database.console
        for name, secret in (("li.legal", "JBSWY3DPEHPK3PXP\u00e9"), ("wang.legal", "JBSWY3DPEHPK3PXP")):
            console.create_account(name, "$argon2id$not-a-real-hash", by="admin")
            console.set_totp(name, secret, by="admin")  # as an older central stored them: plain
        key = prepare_console_key(tmp_path / "identity" / "console.key", console, by="central-start")
        assert key is not None
        stored = dict(console.totp_secrets())
        assert is_sealed(stored["wang.legal"])  # control: the good one is sealed
        assert not is_sealed(stored["li.legal"])
    finally:
        database.close()


# -- R10: an unusable key stops the start -------------------------------------------------------------

async def test_a_central_with_an_unusable_console_key_does_not_start(tmp_path: Path) -> None:
    config = central_config(tmp_path / "store", dev=False)
    init_central(config)
    key = CentralLayout(config.central.store_dir).console_key
    key.unlink(missing_ok=True)
    key.write_bytes(b"")  # what a crash while writing left before R6, or any damaged file
    key.chmod(0o600)
    with pytest.raises(IdentityError, match=r"console\.key"):
        running = await start_central(config)
        await running.stop()  # reached only when the start wrongly succeeds


def test_edge_central_run_exits_78_naming_the_key(tmp_path: Path) -> None:
    config = central_config(tmp_path / "store", dev=False)
    init_central(config)
    config_path = tmp_path / "central.toml"
    store = config.central.store_dir
    config_path.write_text(f'[central]\nid = "central-test"\nstore_dir = "{store}"\n'
                           '[server]\nlisten = "127.0.0.1"\nport = 1\nnames = ["localhost"]\n',
                           encoding="utf-8")
    key = CentralLayout(store).console_key
    key.unlink(missing_ok=True)
    key.write_bytes(b"edge-console-key-v1:not base64 at all!\n")
    key.chmod(0o600)
    done = subprocess.run([sys.executable, "-m", "edge.cli", "central", "run", "--config", str(config_path)],
                          capture_output=True, check=False, timeout=60)
    assert done.returncode == 78, done.stderr.decode(errors="replace")
    assert str(key) in done.stderr.decode(errors="replace")
