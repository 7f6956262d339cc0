"""`edge central account|grant|station-unit|sensitive`: the console's administration, in-process with the
real parser and index; passwords come from stdin or a prompt, never argv, and never appear in output."""

from __future__ import annotations

import argparse
import io
import ssl
from pathlib import Path

import aiohttp
import pyotp
import pytest

from edge.central.cli import add_central_parser
from edge.central.config import load_central_config
from edge.central.console.credentials import totp_step, verify_password
from edge.central.console.secret_key import ConsoleSecretKey
from edge.central.embedded import EmbeddedCentral
from edge.central.index import Role
from edge.central.sqlite import SqliteDatabase

PASSWORD = "correct horse battery staple 7"


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="edge")
    add_central_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["central", *argv])
    result: int = args.func(args)
    return result


@pytest.fixture
def config(tmp_path: Path) -> str:
    path = tmp_path / "central.toml"
    path.write_text(f'[central]\nid = "central-test"\nstore_dir = "{tmp_path / "store"}"\n[server]\n'
                    'port = 18443\n', encoding="utf-8")
    assert _run("init", "--config", str(path)) == 0
    return str(path)


def _database(config: str) -> SqliteDatabase:
    return SqliteDatabase.open(load_central_config(Path(config)).layout.index_db)


def test_account_lifecycle_from_stdin_with_totp(
    config: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert _run("account", "add", "wang.legal", "--config", config, "--password-stdin") == 0
    assert _run("account", "enrol-totp", "wang.legal", "--config", config) == 0
    out = capsys.readouterr()
    uri = out.out.strip()
    assert uri.startswith("otpauth://totp/") and "issuer=evidence-edge" in uri
    assert PASSWORD not in out.out + out.err
    database = _database(config)
    try:
        account = database.console.account("wang.legal")
        assert account is not None and account.active
        assert account.password_hash.startswith("$argon2id$") and PASSWORD not in account.password_hash
        assert verify_password(account.password_hash, PASSWORD)[0]
        assert not verify_password(account.password_hash, PASSWORD + "x")[0]  # control
        assert account.totp_secret is not None and account.totp_secret not in repr(account)
        assert account.password_hash not in repr(account)
        secret = pyotp.parse_uri(uri).secret
        # Stored sealed with the store's console key, for this account only.
        key = ConsoleSecretKey.load(load_central_config(Path(config)).layout.console_key)
        assert secret not in account.totp_secret and account.totp_secret.startswith("sealed-v2:")
        opened, enrolment = key.open_totp("wang.legal", account.totp_secret)
        assert opened == secret and enrolment is not None and enrolment > 2**128  # a random enrolment id
        assert f"(enrolment {enrolment}:" in out.err
        assert totp_step(secret, pyotp.TOTP(secret).now()) is not None
    finally:
        database.close()
    assert _run("account", "disable", "wang.legal", "--config", config, "--reason", "left the unit") == 0
    database = _database(config)
    try:
        account = database.console.account("wang.legal")
        assert account is not None and not account.active
        events = [e["event"] for e in database.console.account_events("wang.legal")]
        assert events == ["created", "totp_enrolled", "disabled"]
        assert all(e["by"] for e in database.console.account_events("wang.legal"))
    finally:
        database.close()


def test_enrol_totp_refuses_without_the_key_its_other_secrets_are_sealed_with(
    config: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("wang.legal", "li.legal"):
        monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
        assert _run("account", "add", name, "--config", config, "--password-stdin") == 0
    assert _run("account", "enrol-totp", "wang.legal", "--config", config) == 0  # control
    key = load_central_config(Path(config)).layout.console_key
    key.unlink()
    capsys.readouterr()
    assert _run("account", "enrol-totp", "li.legal", "--config", config) == 1
    out = capsys.readouterr()
    assert f"the console key {key} is missing or unusable" in out.err and "otpauth://" not in out.out
    assert not key.exists()  # not replaced: wang.legal's sealed secret needs the old one
    database = _database(config)
    try:
        account = database.console.account("li.legal")
        assert account is not None and account.totp_secret is None
    finally:
        database.close()


def test_a_password_is_never_taken_from_the_command_line(config: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _run("account", "add", "wang.legal", "--config", config, "--password", PASSWORD)
    assert exit_info.value.code == 2


def test_a_short_password_is_refused(config: str, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert _run("account", "add", "wang.legal", "--config", config, "--password-stdin") == 1
    assert "12-1024 characters" in capsys.readouterr().err
    database = _database(config)
    try:
        assert database.console.account("wang.legal") is None
    finally:
        database.close()


def test_grant_station_unit_and_sensitive_are_recorded(
    config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run("grant", "li.reader", "--config", config, "--role", "reader", "--unit", "330106000000",
                "--reason", "legal review of 西湖区") == 0
    assert _run("grant", "chief", "--config", config, "--role", "supervisor", "--reason", "bureau") == 0
    # A reader without units would see nothing: refused, with the reason.
    assert _run("grant", "nobody", "--config", config, "--role", "reader", "--reason", "x") == 1
    assert "at least one unit" in capsys.readouterr().err
    assert _run("station-unit", "ZJ-HZ-XH-0001", "330106000000", "--config", config,
                "--reason", "installed at 西湖区") == 0
    missing = "00000000-0000-4000-8000-000000000000"
    assert _run("sensitive", missing, "--config", config, "--reader", "li.reader", "--reason", "x") == 1
    database = _database(config)
    try:
        grant = database.console.grant_of("li.reader")
        assert grant is not None and grant.role is Role.READER and grant.units == {"330106000000"}
        chief = database.console.grant_of("chief")
        assert chief is not None and chief.role is Role.SUPERVISOR
        assert database.console.grant_of("nobody") is None
        assert database.console.station_unit("ZJ-HZ-XH-0001") == "330106000000"
        events = database.console.grant_events()
        assert [(e["name"], e["reason"]) for e in events] == [("li.reader", "legal review of 西湖区"),
                                                              ("chief", "bureau")]
    finally:
        database.close()


async def test_the_demo_central_makes_an_auditor_who_can_sign_in(tmp_path: Path) -> None:
    central = await EmbeddedCentral.start(tmp_path, "DEMO-STATION", tmp_path / "station-store")
    try:
        password_file = tmp_path / "console-auditor.password"
        for _ in range(2):  # a second run in the same work directory resets the password
            central.console_account("demo-auditor", password_file)
        assert password_file.stat().st_mode & 0o777 == 0o600
        password, uri = password_file.read_text(encoding="utf-8").splitlines()
        otp = pyotp.parse_uri(uri)
        assert isinstance(otp, pyotp.TOTP)
        code = otp.now()
        context = ssl.create_default_context(cafile=str(central.config.layout.ca_cert))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as browser:
            # Controls first: a wrong password, and the right one without the second factor.
            tries = ((password + "x", code, 401), (password, None, 401), (password, code, 200))
            for tried, totp, expected in tries:
                body = {"name": "demo-auditor", "password": tried} | ({"totp": totp} if totp else {})
                async with browser.post(f"{central.console_url}/console/api/sign-in", json=body,
                                        headers={"X-Edge-Console": "1"}) as response:
                    assert response.status == expected, (tried == password, totp)
                    if expected == 200:
                        assert (await response.json())["role"] == "supervisor"
    finally:
        await central.stop()
