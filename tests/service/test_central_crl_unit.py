"""systemd/edge-central-crl.service and .timer (review 9 #4): the CA's revocation list is renewed daily
(Persistent), by `edge central crl --out` under the central's user and sandbox, into the path the broker's
crlfile names in README; systemd's own checks."""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from edge.central.cli import add_central_parser, cmd_central_crl
from tests.prerequisites import requires
from tests.service.test_central_unit import CENTRAL_UNIT, SHARED_HARDENING
from tests.service.test_unit_files import SYSTEMD_DIR, Unit, one, parse_unit, words

CRL_UNIT = SYSTEMD_DIR / "edge-central-crl.service"
CRL_TIMER = SYSTEMD_DIR / "edge-central-crl.timer"
README = SYSTEMD_DIR.parent / "README.md"


@pytest.fixture(scope="module")
def crl() -> Unit:
    return parse_unit(CRL_UNIT.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def central() -> Unit:
    return parse_unit(CENTRAL_UNIT.read_text(encoding="utf-8"))


_SANDBOX = [key for key in SHARED_HARDENING if key not in ("NotifyAccess", "KillMode")]  # not a daemon


@pytest.mark.parametrize(
    "key",
    [*_SANDBOX, "PrivateDevices", "DevicePolicy", "SystemCallFilter", "CapabilityBoundingSet",
     "User", "Group", "ProcSubset", "StateDirectory", "StateDirectoryMode"],
)
def test_the_central_s_user_and_sandbox(crl: Unit, central: Unit, key: str) -> None:
    assert crl["Service"].get(key) == central["Service"].get(key), key


def test_no_more_address_families_than_the_central(crl: Unit, central: Unit) -> None:
    assert set(words(crl, "Service", "RestrictAddressFamilies")) <= set(
        words(central, "Service", "RestrictAddressFamilies"))


def test_it_renews_the_list_into_the_broker_s_crlfile_documented_in_readme(crl: Unit, central: Unit) -> None:
    argv = shlex.split(one(crl, "Service", "ExecStart"))
    central_argv = shlex.split(one(central, "Service", "ExecStart"))
    assert argv[0] == central_argv[0]
    parser = argparse.ArgumentParser(prog="edge")
    add_central_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv[1:])
    assert args.func is cmd_central_crl
    assert args.config == central_argv[central_argv.index("--config") + 1]
    out = Path(args.out)
    # The one place it may write outside the store, and the path README tells the broker to read.
    assert words(crl, "Service", "ReadWritePaths") == [str(out.parent)]
    assert f"crlfile {out}" in README.read_text(encoding="utf-8")
    assert one(crl, "Service", "Type") == "oneshot"


def test_the_timer_runs_it_daily_and_catches_up_after_downtime() -> None:
    timer = parse_unit(CRL_TIMER.read_text(encoding="utf-8"))
    assert one(timer, "Timer", "OnCalendar") == "daily"
    assert one(timer, "Timer", "Persistent") == "true"
    assert one(timer, "Timer", "Unit") == CRL_UNIT.name
    assert one(timer, "Install", "WantedBy") == "timers.target"


analyze = shutil.which("systemd-analyze")


@requires(analyze is not None, "systemd-analyze not installed (Debian: apt-get install systemd)")
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    assert analyze is not None
    text = re.sub(r"(?m)^ExecStart=\S+", "ExecStart=/bin/true", CRL_UNIT.read_text(encoding="utf-8"))
    (tmp_path / CRL_UNIT.name).write_text(text, encoding="utf-8")
    (tmp_path / CRL_TIMER.name).write_text(CRL_TIMER.read_text(encoding="utf-8"), encoding="utf-8")
    done = subprocess.run([analyze, "verify", "--man=no", str(tmp_path / CRL_UNIT.name),
                           str(tmp_path / CRL_TIMER.name)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert [line for line in (done.stdout + done.stderr).splitlines() if "edge-central-crl" in line] == []


@requires(analyze is not None, "systemd-analyze not installed (Debian: apt-get install systemd)")
def test_systemd_analyze_security_exposure_is_low(tmp_path: Path) -> None:
    assert analyze is not None
    copy = tmp_path / CRL_UNIT.name
    copy.write_text(CRL_UNIT.read_text(encoding="utf-8"), encoding="utf-8")
    done = subprocess.run(
        [analyze, "security", "--offline=yes", "--man=no", "--threshold=15", str(copy)],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stdout[-3000:]
