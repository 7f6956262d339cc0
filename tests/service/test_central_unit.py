"""systemd/edge-central.service against the other shipped files: hardening at least as strict as the
station's, the example configuration inside the sandbox, systemd's own checks. What the central does
under the unit's keys is tested by running it: test_central_process.py."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from edge.central.config import load_central_config
from tests.prerequisites import requires
from tests.service.test_unit_files import SYSTEMD_DIR, Unit, one, parse_unit, words

CENTRAL_UNIT = SYSTEMD_DIR / "edge-central.service"
STATION_UNIT = SYSTEMD_DIR / "edge-station.service"
EXAMPLE_CONFIG = SYSTEMD_DIR.parent / "config" / "central.toml"


@pytest.fixture(scope="module")
def central() -> Unit:
    return parse_unit(CENTRAL_UNIT.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def station() -> Unit:
    return parse_unit(STATION_UNIT.read_text(encoding="utf-8"))


# The station's sandbox, key by key; the central must match it (devices aside, where it is stricter).
SHARED_HARDENING = [
    "NoNewPrivileges",
    "CapabilityBoundingSet",
    "AmbientCapabilities",
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "PrivateMounts",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectKernelLogs",
    "ProtectControlGroups",
    "ProtectClock",
    "ProtectHostname",
    "ProtectProc",
    "RestrictNamespaces",
    "RestrictRealtime",
    "RestrictSUIDSGID",
    "LockPersonality",
    "RemoveIPC",
    "MemoryDenyWriteExecute",
    "SystemCallArchitectures",
    "SystemCallErrorNumber",
    "UMask",
    "NotifyAccess",
    "KillMode",
]


@pytest.mark.parametrize("key", SHARED_HARDENING)
def test_same_hardening_as_the_station(central: Unit, station: Unit, key: str) -> None:
    assert central["Service"].get(key) == station["Service"].get(key), key


def test_stricter_than_the_station_where_it_needs_less(central: Unit, station: Unit) -> None:
    assert one(station, "Service", "PrivateDevices") == "no"
    assert "DeviceAllow" not in central["Service"]
    assert "SupplementaryGroups" not in central["Service"]
    assert "LoadCredential" not in central["Service"]  # no secrets beside the keys in the state directory
    families = set(words(central, "Service", "RestrictAddressFamilies"))
    assert families == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert families < set(words(station, "Service", "RestrictAddressFamilies"))
    # Writable: only the state directory (ProtectSystem=strict, no ReadWritePaths=).
    assert "ReadWritePaths" not in central["Service"]
    # The station's filter is the central's plus the Landlock calls its ffprobe sandbox needs; the
    # central runs no ffprobe.
    landlock = "landlock_create_ruleset landlock_add_rule landlock_restrict_self"
    station_filter = station["Service"]["SystemCallFilter"]
    assert landlock in station_filter
    assert [line for line in station_filter if line != landlock] == central["Service"]["SystemCallFilter"]


def test_state_directory_is_the_example_store(central: Unit) -> None:
    config = load_central_config(EXAMPLE_CONFIG)
    assert config.central.store_dir == Path("/var/lib") / one(central, "Service", "StateDirectory")


def test_no_capability_for_the_default_port(central: Unit) -> None:
    assert load_central_config(EXAMPLE_CONFIG).server.port >= 1024
    assert one(central, "Service", "AmbientCapabilities") == ""
    assert one(central, "Service", "CapabilityBoundingSet") == ""


analyze = shutil.which("systemd-analyze")


@requires(analyze is not None, "systemd-analyze not installed (Debian: apt-get install systemd)")
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    assert analyze is not None
    text = re.sub(r"(?m)^ExecStart=\S+", "ExecStart=/bin/true", CENTRAL_UNIT.read_text(encoding="utf-8"))
    copy = tmp_path / CENTRAL_UNIT.name
    copy.write_text(text, encoding="utf-8")
    done = subprocess.run(
        [analyze, "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert [line for line in (done.stdout + done.stderr).splitlines() if CENTRAL_UNIT.name in line] == []


@requires(analyze is not None, "systemd-analyze not installed (Debian: apt-get install systemd)")
def test_systemd_analyze_security_exposure_is_low(tmp_path: Path) -> None:
    assert analyze is not None
    copy = tmp_path / CENTRAL_UNIT.name
    copy.write_text(CENTRAL_UNIT.read_text(encoding="utf-8"), encoding="utf-8")
    done = subprocess.run(
        [analyze, "security", "--offline=yes", "--man=no", "--threshold=15", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout[-3000:]


def test_sysusers_creates_the_central_user(central: Unit) -> None:
    rows = [
        line.split(maxsplit=5)
        for line in (SYSTEMD_DIR / "evidence-central.sysusers.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    users = [row for row in rows if row[0] == "u"]
    assert [row[1] for row in users] == [one(central, "Service", "User")]
    assert users[0][-1].split()[-2] == "/var/lib/" + one(central, "Service", "StateDirectory")
    assert users[0][-1].endswith("nologin")
