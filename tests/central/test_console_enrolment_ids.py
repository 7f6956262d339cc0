"""Review 6 on the console's TOTP enrolment record (identity/console-enrolments): its ids never repeat
after identity/ is restored, it says whether an account has TOTP, a crashed write leaves nothing that
`edge verify` calls planted, and a failed write to index.db puts the record back.

Each finding's reproduction failed on the code before the fix; each refusal has a control."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge.central.config import CentralLayout
from edge.central.console.enrolments import enrol_totp, open_enrolled_totp
from edge.central.console.secret_key import ConsoleSecretKey, SealedSecretError, prepare_console_key
from edge.central.sqlite import SqliteDatabase
from edge.central.verify import verify_central_store
from tests.central.conftest import make_central_parts
from tests.central.test_console_at_rest import _sign_in
from tests.central.test_console_sealed_state import Enrolled, running_enrolled
from tests.central.test_console_sealed_state import enrolled as enrolled  # the fixture

# -- enrolment ids never repeat (review 6, R8 follow-up: HIGH) ------------------------------------------


async def test_a_secret_of_an_enrolment_the_restored_record_forgot_is_refused_after_re_enrolling(
    enrolled: Enrolled, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reviewer's repro. 1. enrolled; identity/ backed up. 2. enrolled again (secret S2, which a
    later index.db backup holds; its phone is replaced later). 3. identity/ restored from the backup of
    step 1: S2 is refused, so the administrator enrols again. 4. S2's row put back: it was signing in,
    because the counter in the restored record handed out S2's number again."""
    record = enrolled.central.config.layout.identity_dir / "console-enrolments"
    enrolled.enrol(capsys)
    backup = record.read_bytes()  # identity/ backed up after enrolment 1
    replaced = enrolled.enrol(capsys)  # enrolment 2: the phone holding this secret is later replaced
    replaced_row = enrolled.stored()
    record.write_bytes(backup)  # identity/ restored from its backup (same owner and mode)
    assert await enrolled.sign_in(replaced) == 401  # control: refused (the record is behind)
    events = enrolled.central.console.account_events("li.legal")
    assert events[-2]["event"] == "totp_refused"
    # The refusal no longer calls the secret "older" (here it is newer than the record).
    assert "an older secret was put back" not in events[-2]["detail"]
    assert "identity/ restored from a backup older than index.db" in events[-2]["detail"]
    current = enrolled.enrol(capsys)  # the administrator re-enrols the account
    current_row = enrolled.stored()
    assert await enrolled.sign_in(current) == 200  # control: the new secret signs in
    enrolled.put_back(replaced_row)
    assert await enrolled.sign_in(replaced) == 401, (
        "the secret of enrolment 2, replaced before identity/ was restored, signs in again once its row "
        f"is put back: the re-enrolment reused its id ({replaced_row[:14]}… vs {current_row[:14]}…)")


async def test_enrolment_ids_are_random_and_never_repeat_when_identity_and_index_db_are_restored(
    enrolled: Enrolled, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both restored from one backup: what was enrolled then works again (README says so), but nothing
    enrolled after the backup can come back through a re-enrolment."""
    record = enrolled.central.config.layout.identity_dir / "console-enrolments"
    first = enrolled.enrol(capsys)
    backup_record, backup_row = record.read_bytes(), enrolled.stored()
    later = enrolled.enrol(capsys)
    later_row = enrolled.stored()
    record.write_bytes(backup_record)
    enrolled.put_back(backup_row)
    assert await enrolled.sign_in(first) == 200  # the backup's secret is the current one again
    again = enrolled.enrol(capsys)  # the administrator re-enrols the accounts changed since the backup
    again_row = enrolled.stored()
    ids = {_id(enrolled, row) for row in (backup_row, later_row, again_row)}
    assert len(ids) == 3 and all(i > 2**128 for i in ids), ids
    enrolled.put_back(later_row)
    assert await enrolled.sign_in(later) == 401
    enrolled.put_back(again_row)
    assert await enrolled.sign_in(again) == 200  # control


def _id(enrolled: Enrolled, row: str) -> int:
    number = ConsoleSecretKey.load(enrolled.central.config.layout.console_key).open_totp("li.legal", row)[1]
    assert number is not None
    return number


def test_an_enrolment_id_of_thousands_of_digits_is_refused_not_raised(tmp_path: Path) -> None:
    """Python refuses to convert more than 4300 digits (ValueError): a planted row must be a refusal."""
    key = ConsoleSecretKey.create(tmp_path / "console.key")
    stored = key.seal_totp("li.legal", "JBSWY3DPEHPK3PXP", enrolment=7)
    planted = stored.replace("sealed-v2:7:", "sealed-v2:" + "9" * 5000 + ":")
    with pytest.raises(SealedSecretError):
        key.open_totp("li.legal", planted)
    assert key.open_totp("li.legal", stored)[1] == 7  # control


# -- the second factor is never dropped silently (review 6: LOW-MEDIUM) ---------------------------------


@pytest.fixture
async def password_only(tmp_path: Path) -> AsyncIterator[Enrolled]:
    """As ``enrolled``, with ``[console] allow_password_only = true``."""
    async for running in running_enrolled(tmp_path, allow_password_only=True):
        yield running


def _strip_totp(enrolled: Enrolled) -> None:
    """index.db as a backup taken before `enrol-totp` holds it (or a DB writer without identity/)."""
    db = sqlite3.connect(enrolled.central.config.layout.index_db)
    try:
        with db:
            db.execute("UPDATE console_accounts SET totp_secret = NULL, totp_last_step = NULL "
                       "WHERE name = 'li.legal'")
    finally:
        db.close()


async def _password_alone(enrolled: Enrolled) -> int:
    config = enrolled.central.config
    return (await _sign_in(enrolled.central.console_url, config.layout.ca_cert, "li.legal", None))[0]


async def test_control_after_remove_totp_the_password_alone_signs_in(
    password_only: Enrolled, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await _password_alone(password_only) == 200  # never enrolled
    password_only.enrol(capsys)
    assert await _password_alone(password_only) == 401
    password_only.admin(capsys, "remove-totp", "li.legal")
    assert await _password_alone(password_only) == 200
    assert not any(p.startswith("console_accounts") for p in password_only.verify())


async def test_an_enrolled_accounts_totp_nulled_in_index_db_is_refused_and_named(
    password_only: Enrolled, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """The reviewer's repro: the record said 'enrolled' but could not be told from 'removed'; a NULL
    secret let the password alone sign in, and neither the sign-in nor `edge verify` said so."""
    password_only.enrol(capsys)
    assert await _password_alone(password_only) == 401  # control: the code is asked for
    _strip_totp(password_only)
    with caplog.at_level(logging.ERROR):
        status = await _password_alone(password_only)
    assert status == 401, "an account recorded as TOTP-enrolled signs in with its password alone"
    assert "li.legal has no TOTP secret in index.db, but" in caplog.text
    events = password_only.central.console.account_events("li.legal")
    assert events[-2]["event"] == "totp_refused" and "records it enrolled" in events[-2]["detail"]
    assert events[-1]["event"] == "sign_in_failed"
    problems = password_only.verify()
    assert any(p.startswith("console_accounts li.legal: li.legal has no TOTP secret in index.db, but ")
               for p in problems), problems
    password_only.enrol(capsys)  # control: enrolled again, the account is whole
    assert not any(p.startswith("console_accounts") for p in password_only.verify())


def test_a_record_of_the_first_format_gets_each_accounts_state_from_index_db(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A record of the first format ({name: number}) says nothing of enrolled/removed: the next start
    takes it from index.db (enrolled: the secret is of the recorded number)."""
    root = tmp_path / "central"
    parts = make_central_parts(root)
    database = parts.index.unit
    assert isinstance(database, SqliteDatabase)
    layout = CentralLayout(root)
    key = prepare_console_key(layout.console_key, database.console, by="central-start")
    assert key is not None
    for name in ("li.legal", "wang.legal"):
        database.console.create_account(name, "$argon2id$not-a-real-hash", by="admin")
    database.console.set_totp("li.legal", key.seal_totp("li.legal", "JBSWY3DPEHPK3PXP", enrolment=2), by="a")
    record = layout.identity_dir / "console-enrolments"
    record.write_text(json.dumps({"format": "edge-console-enrolments v1",
                                  "accounts": {"li.legal": 2, "wang.legal": 2}}), encoding="utf-8")
    assert prepare_console_key(layout.console_key, database.console, by="central-start") is not None
    assert json.loads(record.read_text())["accounts"] == {"li.legal": {"enrolment": 2, "totp": True},
                                                          "wang.legal": {"enrolment": 2, "totp": False}}
    # li.legal's secret emptied in index.db: the next start names it (and not wang.legal, removed).
    database.conn.execute("UPDATE console_accounts SET totp_secret = NULL WHERE name = 'li.legal'")
    with caplog.at_level(logging.ERROR):
        assert prepare_console_key(layout.console_key, database.console, by="central-start") is not None
    assert "console: li.legal: li.legal has no TOTP secret in index.db, but" in caplog.text
    assert "wang.legal" not in caplog.text
    database.console.set_totp("li.legal", key.seal_totp("li.legal", "JBSWY3DPEHPK3PXP", enrolment=2), by="a")
    parts.index.close()
    key_of_central = parts.signing_key.public_key()
    assert [str(p) for p in verify_central_store(root, central_public_key=key_of_central)] == []


# -- a crashed write of the record (review 6: LOW) -------------------------------------------------------


def _dead_pid() -> int:
    pid = 4_194_400  # above the largest pid_max Linux allows (2**22): no such process
    assert not Path(f"/proc/{pid}").exists()
    return pid


def test_a_crashed_enrolments_write_does_not_fail_verify_after_a_restart(tmp_path: Path) -> None:
    root = tmp_path / "central"
    parts = make_central_parts(root)
    database = parts.index.unit
    assert isinstance(database, SqliteDatabase)
    layout = CentralLayout(root)
    assert prepare_console_key(layout.console_key, database.console, by="central-start") is not None
    record = layout.identity_dir / "console-enrolments"
    assert record.exists()
    key = parts.signing_key.public_key()
    parts.index.close()
    assert [str(p) for p in verify_central_store(root, central_public_key=key)] == []  # control
    # enrol-totp killed (OOM, power cut) after its temporary was written, before the rename.
    leftover = layout.identity_dir / f".console-enrolments.{_dead_pid()}.0badf00d.tmp"
    leftover.write_bytes(record.read_bytes())
    leftover.chmod(0o600)
    assert any(".console-enrolments." in str(p) for p in verify_central_store(root, central_public_key=key))
    # The central is started again (an ordinary restart).
    database = SqliteDatabase.open(root / "index.db")
    try:
        assert prepare_console_key(layout.console_key, database.console, by="central-start") is not None
    finally:
        database.close()
    assert not leftover.exists()
    problems = [str(p) for p in verify_central_store(root, central_public_key=key)]
    assert problems == [], problems


def test_control_a_live_writers_temporary_is_left_alone(tmp_path: Path) -> None:
    root = tmp_path / "central"
    parts = make_central_parts(root)
    database = parts.index.unit
    assert isinstance(database, SqliteDatabase)
    layout = CentralLayout(root)
    live = layout.identity_dir / ".console-enrolments.1.0badf00d.tmp"  # pid 1: alive
    live.write_bytes(b"{}")
    try:
        assert prepare_console_key(layout.console_key, database.console, by="central-start") is not None
        assert live.exists()
    finally:
        live.unlink()
        parts.index.close()


# -- a failed write of index.db after the record (review 6: noted) ---------------------------------------


def test_a_failed_index_db_write_puts_the_record_back_and_the_current_secret_still_works(
    tmp_path: Path,
) -> None:
    root = tmp_path / "central"
    parts = make_central_parts(root)
    database = parts.index.unit
    assert isinstance(database, SqliteDatabase)
    layout = CentralLayout(root)
    key = prepare_console_key(layout.console_key, database.console, by="central-start")
    assert key is not None
    database.console.create_account("li.legal", "$argon2id$not-a-real-hash", by="admin")
    first = enrol_totp(database.console, key, "li.legal", "JBSWY3DPEHPK3PXP", by="admin")
    record = layout.identity_dir / "console-enrolments"
    before = record.read_bytes()
    # index.db refuses the write (a full disk, an I/O error: here a trigger that aborts it).
    database.conn.execute("CREATE TRIGGER full_disk BEFORE UPDATE ON console_accounts "
                          "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END")
    with pytest.raises(sqlite3.Error, match="disk is full"):
        enrol_totp(database.console, key, "li.legal", "KRSXG5CTMVRXEZLU", by="admin")
    assert record.read_bytes() == before, "the record keeps the enrolment whose secret index.db refused"
    account = database.console.account("li.legal")
    assert account is not None and account.totp_secret is not None
    assert open_enrolled_totp(key, "li.legal", account.totp_secret) == "JBSWY3DPEHPK3PXP"
    database.conn.execute("DROP TRIGGER full_disk")
    second = enrol_totp(database.console, key, "li.legal", "KRSXG5CTMVRXEZLU", by="admin")  # control
    assert second != first and record.read_bytes() != before
    parts.index.close()
