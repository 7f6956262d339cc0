"""`edge central ...` in-process: parser + handlers with a temporary configuration, and the real index."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
import tempfile
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edge.central import cli as central_cli
from edge.central.cli import add_central_parser
from edge.central.config import CentralConfig, load_central_config
from edge.central.index import CentralIndexError
from edge.central.sqlite import SqliteIndex
from edge.custody.keys import StationKey
from edge.pki.bundle import read_bundle
from edge.pki.tls import client_ssl_context

STATION = "ZJ-HZ-XH-0001"
EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "central.toml"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge")
    sub = parser.add_subparsers(dest="command", required=True)
    add_central_parser(sub)
    return parser


def _run(*argv: str) -> int:
    args = _parser().parse_args(["central", *argv])
    result: int = args.func(args)
    return result


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "central.toml"
    path.write_text(
        f'[central]\nid = "central-test"\nstore_dir = "{tmp_path / "store"}"\n[server]\nport = 18443\n',
        encoding="utf-8",
    )
    return path


@pytest.fixture
def initialised(config_file: Path) -> Path:
    assert _run("init", "--config", str(config_file)) == 0
    return config_file


@pytest.fixture
def station_pub(tmp_path: Path) -> Path:
    key = StationKey.load_or_create(tmp_path / "station" / "signing.key")
    assert key.public_path is not None
    return key.public_path


def _index(tmp_path: Path) -> SqliteIndex:
    return SqliteIndex.open(tmp_path / "store" / "index.db")


def _stderr(capsys: pytest.CaptureFixture[str]) -> str:
    out, err = capsys.readouterr()
    assert "PRIVATE KEY" not in out + err
    return err


def test_init_reports_what_it_made_then_what_it_kept(
    config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run("init", "--config", str(config_file)) == 0
    first = _stderr(capsys)
    store = tmp_path / "store"
    assert "created CA (sha256 " in first and str(store / "identity" / "ca.crt") in first
    assert f"created index: {store / 'index.db'}" in first
    assert "created signing key" in first and "created server certificate" in first
    assert f"created console key (seals TOTP secrets): {store / 'identity' / 'console.key'}" in first
    assert (store / "index.db").is_file()
    assert (store / "identity" / "console.key").stat().st_mode & 0o777 == 0o600

    assert _run("init", "--config", str(config_file)) == 0
    second = _stderr(capsys)
    assert "created" not in second.replace("is initialised", "")
    assert second.count("exists, kept") == 5


def test_config_given_before_the_sub_command(config_file: Path, tmp_path: Path) -> None:
    assert _run("--config", str(config_file), "init") == 0
    assert (tmp_path / "store" / "identity" / "ca.key").is_file()


def test_missing_config_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run("init") == 2
    assert "--config FILE is required" in _stderr(capsys)


def test_invalid_config_exits_78_naming_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[central]\nid = "c"\nstore_dir = "/x"\n[server]\nport = 0\n', encoding="utf-8")
    for command in ("init", "run", "check-config"):
        assert _run(command, "--config", str(bad)) == 78
        assert "line 5: server.port" in _stderr(capsys)
    assert not Path("/x").exists()


def test_check_config_on_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run("check-config", "--config", str(EXAMPLE)) == 0
    out, _ = capsys.readouterr()
    assert "OK (central central-hq" in out and "HTTPS with mutual TLS on 0.0.0.0:8443" in out


def test_enroll_writes_the_bundle_and_records_the_station(
    initialised: Path, station_pub: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    out = tmp_path / "bundle"
    code = _run(
        "enroll", STATION, "--config", str(initialised), "--signing-key", str(station_pub), "--out", str(out)
    )
    assert code == 0
    message = _stderr(capsys)
    bundle = read_bundle(out)
    assert f"enrolled station {STATION}: client certificate sha256 {bundle.cert_sha256}" in message
    assert f"bundle in {out}: client.crt, client.key (secret, mode 0600)" in message
    index = _index(tmp_path)
    try:
        record = index.station(STATION)
    finally:
        index.close()
    assert record is not None and record.active
    assert record.cert_sha256 == bundle.cert_sha256
    assert (
        record.public_key_b64
        == StationKey.load_or_create(station_pub.with_name("signing.key")).public_key_b64
    )


def test_enroll_before_init_fails_without_a_bundle(
    config_file: Path, station_pub: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bundle"
    code = _run(
        "enroll", STATION, "--config", str(config_file), "--signing-key", str(station_pub), "--out", str(out)
    )
    assert code == 1
    assert "run `edge central init" in _stderr(capsys)
    assert not out.exists()


@pytest.mark.parametrize("station_id", ["../x", "a b", "x" * 65])
def test_enroll_refuses_bad_ids(
    initialised: Path, station_pub: Path, tmp_path: Path, station_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _run(
        "enroll",
        station_id,
        "--config",
        str(initialised),
        "--signing-key",
        str(station_pub),
        "--out",
        str(tmp_path / "b"),
    )
    assert code == 1
    assert "expected a station id" in _stderr(capsys)


def test_enroll_refuses_a_missing_signing_key(
    initialised: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _run(
        "enroll",
        STATION,
        "--config",
        str(initialised),
        "--signing-key",
        str(tmp_path / "nope.pub"),
        "--out",
        str(tmp_path / "b"),
    )
    assert code == 1
    assert "--signing-key" in _stderr(capsys)


def test_enroll_rolls_back_the_bundle_when_the_index_refuses(
    initialised: Path,
    station_pub: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(self: SqliteIndex, station_id: str, key_b64: str, cert_sha256: str) -> None:
        raise CentralIndexError("database is locked")

    monkeypatch.setattr(SqliteIndex, "enroll_station", refuse)
    out = tmp_path / "bundle"
    code = _run(
        "enroll", STATION, "--config", str(initialised), "--signing-key", str(station_pub), "--out", str(out)
    )
    assert code == 1
    message = _stderr(capsys)
    assert "recording it in the index failed: database is locked" in message
    assert f"the bundle in {out} was removed" in message
    assert not out.exists()


def test_revoke_then_reenroll(
    initialised: Path, station_pub: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ("--config", str(initialised), "--signing-key", str(station_pub))
    assert _run("enroll", STATION, *common, "--out", str(tmp_path / "b1")) == 0
    capsys.readouterr()
    assert _run("revoke", STATION, "--config", str(initialised), "--reason", "station PC stolen") == 0
    assert f"revoked station {STATION}" in _stderr(capsys)
    index = _index(tmp_path)
    try:
        record = index.station(STATION)
        assert record is not None and not record.active and record.revoke_reason == "station PC stolen"
    finally:
        index.close()
    assert _run("enroll", STATION, *common, "--out", str(tmp_path / "b2")) == 0
    index = _index(tmp_path)
    try:
        record = index.station(STATION)
        assert record is not None and record.active
        assert record.cert_sha256 == read_bundle(tmp_path / "b2").cert_sha256
    finally:
        index.close()


def test_revoke_unknown_station_fails(initialised: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run("revoke", "NOBODY", "--config", str(initialised), "--reason", "x") == 1
    assert "not enrolled" in _stderr(capsys)


def test_revoke_needs_a_reason(initialised: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run("revoke", STATION, "--config", str(initialised), "--reason", "   ") == 2
    assert "--reason must say why" in _stderr(capsys)
    with pytest.raises(SystemExit):
        _run("revoke", STATION, "--config", str(initialised))


def test_enroll_and_revoke_reader(
    initialised: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert (
        _run("enroll-reader", "auditor.zhang", "--config", str(initialised), "--out", str(tmp_path / "r"))
        == 0
    )
    assert "enrolled auditor auditor.zhang" in _stderr(capsys)
    bundle = read_bundle(tmp_path / "r")
    index = _index(tmp_path)
    try:
        record = index.reader("auditor.zhang")
        assert record is not None and record.active and record.cert_sha256 == bundle.cert_sha256
    finally:
        index.close()
    assert _run("revoke-reader", "auditor.zhang", "--config", str(initialised), "--reason", "left") == 0
    index = _index(tmp_path)
    try:
        record = index.reader("auditor.zhang")
        assert record is not None and not record.active
    finally:
        index.close()


def _fake_service(monkeypatch: pytest.MonkeyPatch, run: Callable[[CentralConfig], int]) -> None:
    # `run` imports edge.central.service lazily; a stand-in keeps this test independent of the server.
    module = types.ModuleType("edge.central.service")
    module.run_central = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "edge.central.service", module)


@pytest.mark.parametrize("argv", [("--config",), ("run", "--config")])
def test_run_hands_the_loaded_config_to_the_service(
    config_file: Path, monkeypatch: pytest.MonkeyPatch, argv: tuple[str, ...]
) -> None:
    seen: list[CentralConfig] = []

    def run(config: CentralConfig) -> int:
        seen.append(config)
        return 7

    _fake_service(monkeypatch, run)
    assert _run(*argv, str(config_file)) == 7
    assert [c.central.id for c in seen] == ["central-test"]


def test_run_with_missing_identity_exits_78(
    config_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from edge.central.identity import server_ssl_context

    def run(config: CentralConfig) -> int:
        server_ssl_context(config)
        return 0

    _fake_service(monkeypatch, run)
    assert _run("run", "--config", str(config_file)) == 78
    assert "server.crt, " in (err := _stderr(capsys)) and "missing: run `edge central init" in err


def test_every_command_has_help() -> None:
    text = _parser().parse_known_args(["central", "--config", "x"])[0]
    assert text.func is central_cli.cmd_central_run
    with pytest.raises(SystemExit) as done:
        _parser().parse_args(["central", "--help"])
    assert done.value.code == 0


# -- end to end: the CLI's identities against the real central -------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _served_config(tmp_path: Path) -> Path:
    path = tmp_path / "served.toml"
    path.write_text(
        f'[central]\nid = "central-e2e"\nstore_dir = "{tmp_path / "store"}"\n'
        f'[server]\nlisten = "127.0.0.1"\nport = {_free_port()}\nnames = ["127.0.0.1", "localhost"]\n',
        encoding="utf-8",
    )
    return path


async def _ledger_head(url: str, bundle: Path, station_id: str) -> tuple[int, dict[str, Any]]:
    connector = aiohttp.TCPConnector(ssl=client_ssl_context(bundle))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(f"{url}/v1/stations/{station_id}/ledger/head") as response,
    ):
        body: dict[str, Any] = await response.json()
        return response.status, body


async def test_cli_enrollment_revocation_and_reenrollment_against_the_central(
    tmp_path: Path, station_pub: Path
) -> None:
    from edge.central.service import start_central

    config_file = _served_config(tmp_path)
    assert _run("init", "--config", str(config_file)) == 0
    enroll = ("enroll", STATION, "--config", str(config_file), "--signing-key", str(station_pub))
    assert _run(*enroll, "--out", str(tmp_path / "b1")) == 0
    running = await start_central(load_central_config(config_file))
    try:
        status, body = await _ledger_head(running.url, tmp_path / "b1", STATION)
        assert status == 200 and body["seq"] == 0

        assert _run("revoke", STATION, "--config", str(config_file), "--reason", "stolen") == 0
        status, body = await _ledger_head(running.url, tmp_path / "b1", STATION)
        assert (status, body["error"]) == (403, "station_revoked")
        assert "stolen" in body["detail"]

        assert _run(*enroll, "--out", str(tmp_path / "b2")) == 0
        status, _ = await _ledger_head(running.url, tmp_path / "b2", STATION)
        assert status == 200
        # The first certificate is still from our CA and unexpired, but re-enrolment replaced it.
        status, body = await _ledger_head(running.url, tmp_path / "b1", STATION)
        assert (status, body["error"]) == (403, "station_revoked")
    finally:
        await running.stop()


_RUN_CLI = """
import argparse, sys
from edge.central.cli import add_central_parser
parser = argparse.ArgumentParser(prog="edge")
add_central_parser(parser.add_subparsers(dest="command", required=True))
args = parser.parse_args(sys.argv[1:])
sys.exit(args.func(args))
"""


async def test_edge_central_runs_until_sigterm(tmp_path: Path, station_pub: Path) -> None:
    config_file = _served_config(tmp_path)
    assert _run("init", "--config", str(config_file)) == 0
    enroll = ("enroll", STATION, "--config", str(config_file), "--signing-key", str(station_pub))
    assert _run(*enroll, "--out", str(tmp_path / "bundle")) == 0
    port = load_central_config(config_file).server.port
    # sd_notify readiness is the event to await (a socket path must fit in 108 bytes: not under tmp_path).
    with tempfile.TemporaryDirectory(prefix="ntfy", dir="/tmp") as short:
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(f"{short}/notify")
        notify.setblocking(False)
        env = {**os.environ, "NOTIFY_SOCKET": f"{short}/notify"}
        # A file, not a pipe: nobody reads a pipe while the server runs, and a full one would block it.
        with (tmp_path / "stderr.txt").open("wb") as stderr_file:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                _RUN_CLI,
                "central",
                "--config",
                str(config_file),
                env=env,
                stderr=stderr_file,
            )
        try:
            loop = asyncio.get_running_loop()
            messages = b""
            while b"READY=1" not in messages:
                messages += await asyncio.wait_for(loop.sock_recv(notify, 4096), timeout=30)
            status, _ = await _ledger_head(f"https://127.0.0.1:{port}", tmp_path / "bundle", STATION)
            assert status == 200
            process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(process.wait(), timeout=30) == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            notify.close()
    stderr = (tmp_path / "stderr.txt").read_text(encoding="utf-8", errors="replace")
    assert "PRIVATE KEY" not in stderr
