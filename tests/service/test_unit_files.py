"""Static checks of systemd/: the shipped files agree with each other (unit, example configuration,
tmpfiles, sysusers, modules), udev rule syntax and safety, and systemd's own verify and security checks.
What the agent does under the unit's keys is tested by running it: test_station_process.py."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.prerequisites import requires

SYSTEMD_DIR = Path(__file__).resolve().parents[2] / "systemd"
UNIT = SYSTEMD_DIR / "edge-station.service"
RULES = SYSTEMD_DIR / "99-evidence-edge.rules"
TMPFILES = SYSTEMD_DIR / "evidence-edge.tmpfiles.conf"
SYSUSERS = SYSTEMD_DIR / "evidence-edge.sysusers.conf"
MODULES = SYSTEMD_DIR / "evidence-edge.modules-load.conf"

Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """systemd.syntax(7): sections, Key=Value, comments, backslash continuations, empty value resets."""
    sections: Unit = {}
    current: dict[str, list[str]] | None = None
    logical: list[str] = []
    lines: list[str] = []
    for raw in text.splitlines():
        if not logical and (not raw.strip() or raw.lstrip().startswith(("#", ";"))):
            continue
        if raw.endswith("\\"):
            logical.append(raw[:-1])
            continue
        logical.append(raw)
        lines.append(" ".join(part.strip() for part in logical))
        logical = []
    assert not logical, "file ends inside a continuation line"
    for line in lines:
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"assignment outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a Key=Value line: {line!r}"
        key, value = key.strip(), value.strip()
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", key), f"bad key {key!r}"
        if value == "":
            current[key] = [""]
        else:
            values = current.setdefault(key, [])
            if values == [""]:
                values.clear()
            values.append(value)
    return sections


@pytest.fixture(scope="module")
def unit() -> Unit:
    return parse_unit(UNIT.read_text(encoding="utf-8"))


def one(unit: Unit, section: str, key: str) -> str:
    values = unit.get(section, {}).get(key)
    assert values is not None, f"[{section}] {key}= missing"
    assert len(values) == 1, f"[{section}] {key}= set {len(values)} times: {values}"
    return values[0]


def words(unit: Unit, section: str, key: str) -> list[str]:
    return [w for value in unit.get(section, {}).get(key, []) for w in value.split()]


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)?", value)
    assert match, f"not a simple time span: {value!r}"
    return int(match[1]) * (60 if match[2] == "min" else 1)


# Behaviour the unit's keys rely on is tested by running the program the unit runs, in
# test_station_process.py (Type=notify, WatchdogSec=, KillSignal=, TimeoutStopSec=, RestartPreventExitStatus=,
# LoadCredential=); hardening is judged by `systemd-analyze security` below. What stays here are checks
# that the shipped files agree with each other.

EXAMPLE_CONFIG = SYSTEMD_DIR.parent / "config" / "station.toml"


def test_the_example_configuration_writes_only_where_the_unit_lets_it(unit: Unit) -> None:
    from edge.config.station import load_config

    config = load_config(EXAMPLE_CONFIG)
    writable = [Path(p) for p in words(unit, "Service", "ReadWritePaths")]
    for path in (config.station.store_dir, config.usb.mount_root):
        assert any(path == root or root in path.parents for root in writable), path


def test_the_credential_the_example_names_is_the_one_the_unit_loads(unit: Unit) -> None:
    from edge.config.station import load_config

    reference = load_config(EXAMPLE_CONFIG).recorders.default_password
    assert reference is not None and reference.startswith("credential:")
    name, _, _path = one(unit, "Service", "LoadCredential").partition(":")
    assert reference == f"credential:{name}"
    assert not any("password" in v.lower() for v in unit["Service"].get("Environment", []))


# -- tmpfiles, sysusers, modules ----------------------------------------------------------------------------


def _table(path: Path) -> list[list[str]]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            rows.append(shlex.split(line))
    return rows


def test_tmpfiles_match_the_unit(unit: Unit) -> None:
    rows = {row[1]: row for row in _table(TMPFILES)}
    for row in rows.values():
        assert row[0] == "d" and len(row) == 6, row
    assert rows["/media/evidence-edge"][2:5] == ["0750", "evidence-edge", "evidence-edge"]
    assert rows["/var/lib/evidence-edge"][2:5] == ["0700", "evidence-edge", "evidence-edge"]
    assert rows["/var/lib/evidence-edge"][2] == one(unit, "Service", "StateDirectoryMode")
    credential_path = one(unit, "Service", "LoadCredential").partition(":")[2]
    assert rows[str(Path(credential_path).parent)][2:5] == ["0700", "root", "root"]
    assert set(words(unit, "Service", "ReadWritePaths")) <= set(rows)


def test_sysusers_creates_the_service_user_and_groups(unit: Unit) -> None:
    rows = _table(SYSUSERS)
    users = [row for row in rows if row[0] == "u"]
    assert [row[1] for row in users] == [one(unit, "Service", "User")]
    assert users[0][4] == "/var/lib/evidence-edge"
    assert users[0][5].endswith("nologin")
    assert ["g", "plugdev", "-"] in rows


def test_modules_cover_the_device_classes() -> None:
    assert {row[0] for row in _table(MODULES)} == {"usbserial", "cdc_acm", "videodev", "snd"}


# -- udev rules -----------------------------------------------------------------------------------------

_TOKEN = re.compile(r'(?P<key>[A-Z_]+)(\{(?P<attr>[^}]+)\})?(?P<op>==|!=|\+=|-=|:=|=)"(?P<value>[^"]*)"')
_MATCH_KEYS = {
    "ACTION",
    "SUBSYSTEM",
    "SUBSYSTEMS",
    "ATTR",
    "ATTRS",
    "ENV",
    "KERNEL",
    "KERNELS",
    "DEVPATH",
    "TAG",
}
_ASSIGN_KEYS = {"GROUP", "MODE", "SYMLINK", "ENV", "RUN", "GOTO", "LABEL", "TAG", "OWNER"}


def _rules() -> list[list[re.Match[str]]]:
    parsed = []
    for number, line in enumerate(RULES.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        tokens = [t.strip() for t in re.split(r',\s*(?=[A-Z_]+(?:\{[^}]*\})?(?:==|!=|\+=|-=|:=|=)")', line)]
        matches = []
        for token in tokens:
            match = _TOKEN.fullmatch(token)
            assert match, f"{RULES.name}:{number}: cannot parse {token!r}"
            key, op = match["key"], match["op"]
            if op in ("==", "!="):
                assert key in _MATCH_KEYS, f"{RULES.name}:{number}: {key} is not a match key"
            else:
                assert key in _ASSIGN_KEYS, f"{RULES.name}:{number}: {key} is not an assignment key"
            matches.append(match)
        parsed.append(matches)
    return parsed


def test_udev_rules_parse_and_labels_resolve() -> None:
    rules = _rules()
    labels = {m["value"] for rule in rules for m in rule if m["key"] == "LABEL"}
    gotos = {m["value"] for rule in rules for m in rule if m["key"] == "GOTO"}
    assert gotos and gotos <= labels


def test_udev_recorder_nodes_for_plugdev() -> None:
    recorder_rules = [
        rule
        for rule in _rules()
        if any(m["key"] == "ATTR" and m["attr"] == "idVendor" and m["value"] == "2e3c" for m in rule)
    ]
    assert recorder_rules
    assigned = {(m["key"], m["value"]) for rule in recorder_rules for m in rule}
    assert ("GROUP", "plugdev") in assigned and ("MODE", "0660") in assigned
    products = {m["value"] for rule in recorder_rules for m in rule if m["attr"] == "idProduct"}
    assert products == {"5a01|5a02|5a03"}


def test_udev_dock_symlink() -> None:
    dock = [rule for rule in _rules() if any(m["key"] == "SYMLINK" for m in rule)]
    assert len(dock) == 1
    values = {(m["key"], m["value"]) for m in dock[0]}
    assert ("SUBSYSTEM", "tty") in values and ("SYMLINK", "evidence-dock") in values
    assert ("GROUP", "dialout") in values


def test_udev_mounts_are_safe() -> None:
    mounts = [m["value"] for rule in _rules() for m in rule if m["key"] == "RUN"]
    assert len(mounts) == 4
    for command in mounts:
        argv = shlex.split(command)
        assert argv[0] == "/usr/bin/systemd-mount"
        assert "--no-block" in argv  # udev must not wait for PID 1, which waits for udev
        options = next(a.split("=", 1)[1] for a in argv if a.startswith("--options=")).split(",")
        assert {"nosuid", "nodev", "noexec"} <= set(options)
        assert "ro" not in options  # the station erases after verification
        assert "uid=evidence-edge" in options
        where = argv[-1]
        assert where.startswith("/media/evidence-edge/%E{ID_PATH_TAG}")
        # Never named after device-controlled data.
        assert not re.search(r"ID_FS_LABEL|ID_SERIAL|ID_MODEL|\$attr|%s\{", where)
    desktop_off = {
        (m["attr"], m["value"]) for rule in _rules() for m in rule if m["key"] == "ENV" and m["op"] == "="
    }
    assert ("UDISKS_IGNORE", "1") in desktop_off


# -- systemd's own checks, where available -------------------------------------------------------------------

analyze = shutil.which("systemd-analyze")


@requires(analyze is not None, "systemd-analyze not installed (Debian: apt-get install systemd)")
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    assert analyze is not None
    # The agent is not installed here; point ExecStart at an executable that exists.
    text = re.sub(r"(?m)^ExecStart=\S+", "ExecStart=/bin/true", UNIT.read_text(encoding="utf-8"))
    copy = tmp_path / UNIT.name
    copy.write_text(text, encoding="utf-8")
    done = subprocess.run(
        [analyze, "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=60
    )
    complaints = [line for line in (done.stdout + done.stderr).splitlines() if UNIT.name in line]
    assert done.returncode == 0, done.stderr
    assert complaints == []


@requires(analyze is not None, "systemd-analyze not installed (Debian: apt-get install systemd)")
def test_systemd_analyze_security_exposure_is_low(tmp_path: Path) -> None:
    assert analyze is not None
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text(encoding="utf-8"), encoding="utf-8")
    done = subprocess.run(
        [analyze, "security", "--offline=yes", "--man=no", "--threshold=20", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout[-3000:]
