"""Clock trust under the shipped unit's own seccomp filter.

systemd is not PID 1 here, so `systemd-run -p ...` cannot apply the unit. Instead the test reads
`systemd/edge-station.service`, expands its `SystemCallFilter=` lines with `systemd-analyze
syscall-filter` (systemd's own group definitions), adds what `ProtectClock=yes` adds (a deny of
`@clock`) and what `RestrictAddressFamilies=` adds (socket() of any other family fails with
EAFNOSUPPORT), installs the same filters with libseccomp in a child Python process, and runs the real
clock-trust code there against real stand-ins of the time daemons (a chronyc on disk, a timesyncd flag
file, a timedated on a private D-Bus bus asked by the real busctl). adjtimex must fail in the child, and
work in an unfiltered control, or the filter proves nothing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from .timesync_env import FakeChronyc, need_module, need_tool, private_system_bus, timedated_on

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "edge-station.service"


def unit_settings(path: Path) -> dict[str, list[str]]:
    """Every `Key=value` of the unit's [Service] section, in order (keys may repeat)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        if section == "Service" and "=" in line:
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


@cache
def expand(item: str) -> frozenset[str]:
    """A system call, or a systemd group expanded (recursively) by systemd-analyze."""
    name = item.split(":", 1)[0]  # "name:errno" form
    if not name.startswith("@"):
        return frozenset({name})
    analyze = need_tool("systemd-analyze")
    done = subprocess.run([analyze, "syscall-filter", name], capture_output=True, text=True, check=True)
    members: set[str] = set()
    for line in done.stdout.splitlines()[1:]:
        entry = line.strip()
        if entry and not entry.startswith("#"):
            members |= expand(entry)
    assert members, f"systemd-analyze knows no group {name}"
    return frozenset(members)


def unit_filter(path: Path) -> dict[str, Any]:
    """The seccomp policy systemd derives from the unit (systemd.exec(5), SystemCallFilter=)."""
    settings = unit_settings(path)
    allow: set[str] | None = None  # None: deny-list mode
    deny: set[str] = set()
    for value in settings.get("SystemCallFilter", []):
        if not value:
            allow, deny = None, set()
            continue
        inverted = value.startswith("~")
        names: set[str] = set()
        for item in value.lstrip("~").split():
            names |= expand(item)
        if allow is None and not deny:  # the first line decides the mode
            if inverted:
                deny = names
            else:
                allow = names
        elif allow is not None:
            allow = allow - names if inverted else allow | names
        else:
            deny = deny | names if inverted else deny - names
    errno_name = (settings.get("SystemCallErrorNumber") or ["EPERM"])[-1]
    protect_clock = (settings.get("ProtectClock") or ["no"])[-1] in ("yes", "true", "1", "on")
    families = " ".join(settings.get("RestrictAddressFamilies", [])).split()
    return {
        "allow": sorted(allow) if allow is not None else None,
        "deny": sorted(deny),
        "errno": errno_name,
        "clock_deny": sorted(expand("@clock")) if protect_clock else [],
        "families": families,
    }


PROBE = textwrap.dedent(
    r"""
    import errno, json, socket, sys

    spec = json.loads(sys.argv[1])
    policy = spec.get("policy")
    if policy is not None:
        import pyseccomp as seccomp

        def add(flt, action, names):
            for name in names:
                try:
                    flt.add_rule(action, name)
                except (OSError, ValueError):
                    pass  # a call this architecture does not have

        fail = seccomp.ERRNO(getattr(errno, policy["errno"]))
        if policy["allow"] is not None:
            main = seccomp.SyscallFilter(fail)
            add(main, seccomp.ALLOW, policy["allow"])
        else:
            main = seccomp.SyscallFilter(seccomp.ALLOW)
            add(main, fail, policy["deny"])
        filters = [main]
        if policy["clock_deny"]:  # ProtectClock=yes: its own filter, as systemd installs it
            clock = seccomp.SyscallFilter(seccomp.ALLOW)
            add(clock, seccomp.ERRNO(errno.EPERM), policy["clock_deny"])
            filters.append(clock)
        if policy["families"]:  # RestrictAddressFamilies=: socket() of other families fails
            allowed = {getattr(socket, name) for name in policy["families"]}
            families = seccomp.SyscallFilter(seccomp.ALLOW)
            for family in range(0, 64):
                if family not in allowed:
                    families.add_rule(seccomp.ERRNO(errno.EAFNOSUPPORT), "socket",
                                      seccomp.Arg(0, seccomp.EQ, family))
            filters.append(families)
        # The SystemCallFilter= one last: it does not allow seccomp(2) itself (systemd installs all of
        # them before exec, so their order does not change what the agent may do).
        for flt in [*filters[1:], filters[0]]:
            flt.load()

    from edge.config.station import TimeSyncSection
    from edge.runtime.clock import station_clock_trust
    from edge.runtime.timesync import read_adjtimex

    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW).close()
        packet = "allowed"
    except OSError as exc:
        packet = errno.errorcode.get(exc.errno, str(exc.errno))
    out = {"adjtimex": read_adjtimex().__dict__, "af_packet": packet, "verdicts": {}}
    for name, settings in spec["scenarios"].items():
        verdict = station_clock_trust("auto", TimeSyncSection.model_validate(settings))
        out["verdicts"][name] = verdict.as_dict()
    print(json.dumps(out))
    """
)


def run_probe(policy: dict[str, Any] | None, scenarios: dict[str, dict[str, Any]],
              env: dict[str, str] | None = None) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps({"policy": policy, "scenarios": scenarios})],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.fixture(scope="module")
def shipped_policy() -> dict[str, Any]:
    need_module("pyseccomp")
    return unit_filter(UNIT)


def test_the_shipped_unit_denies_the_clock_calls(shipped_policy: dict[str, Any]) -> None:
    # What the finding is about: reading the clock state with adjtimex is forbidden in production.
    assert shipped_policy["allow"] is not None, "the unit allow-lists @system-service"
    assert "adjtimex" not in shipped_policy["allow"] and "clock_adjtime" not in shipped_policy["allow"]
    assert {"adjtimex", "clock_adjtime"} <= set(shipped_policy["clock_deny"])
    assert "read" in shipped_policy["allow"] and "execve" in shipped_policy["allow"]
    assert "AF_UNIX" in shipped_policy["families"]


def _sources(tmp_path: Path) -> tuple[dict[str, dict[str, Any]], Path]:
    """One scenario per source, each against a stand-in that says synchronised (or not)."""
    synced = FakeChronyc(tmp_path / "chrony-synced")
    unsynced = FakeChronyc(tmp_path / "chrony-unsynced")
    unsynced.set(leap="Not synchronised", reference_id="00000000", name="", stratum=0)
    down = FakeChronyc(tmp_path / "chrony-down")
    down.set(daemon="down")
    flag_dir = tmp_path / "timesync"
    flag_dir.mkdir()
    flag = flag_dir / "synchronized"
    flag.touch()
    absent = str(tmp_path / "no-timesyncd" / "synchronized")
    busctl = need_tool("busctl")
    common = {"busctl": busctl, "command_timeout_s": 10}
    scenarios = {
        "chrony": {**common, "sources": ["chrony"], "chronyc": str(synced.path)},
        "chrony-unsynced": {**common, "sources": ["chrony"], "chronyc": str(unsynced.path)},
        "timesyncd": {**common, "sources": ["timesyncd"], "timesyncd_flag": str(flag)},
        "timedated": {**common, "sources": ["timedated"]},
        "adjtimex": {**common, "sources": ["adjtimex"]},
        # The documented order, on a station with chronyd down and no timesyncd: timedated decides.
        "auto": {**common, "chronyc": str(down.path), "timesyncd_flag": absent},
    }
    return scenarios, flag


def test_clock_trust_works_under_the_shipped_units_seccomp_filter(
    tmp_path: Path, shipped_policy: dict[str, Any]
) -> None:
    scenarios, flag = _sources(tmp_path)
    with private_system_bus(tmp_path / "bus") as address, timedated_on(address, synchronised=True) as sim:
        env = {"DBUS_SYSTEM_BUS_ADDRESS": address}
        os.utime(flag, (time.time(), time.time()))
        control = run_probe(None, scenarios, env)
        filtered = run_probe(shipped_policy, scenarios, env)
        assert sim.calls >= 4, "busctl reached timedated from both processes"

    # The filter is real: unfiltered, adjtimex and AF_PACKET work; filtered, both are refused.
    assert control["adjtimex"]["synchronised"] is not None, control["adjtimex"]
    assert control["af_packet"] == "allowed"
    assert filtered["adjtimex"]["synchronised"] is None
    assert "Operation not permitted" in filtered["adjtimex"]["reason"]
    assert filtered["af_packet"] == "EAFNOSUPPORT"

    verdicts = filtered["verdicts"]
    assert verdicts["adjtimex"]["trusted"] is False and verdicts["adjtimex"]["source"] == "none"
    for source in ("chrony", "timesyncd", "timedated"):
        assert (verdicts[source]["trusted"], verdicts[source]["source"]) == (True, source), verdicts[source]
    unsynced = verdicts["chrony-unsynced"]
    assert (unsynced["trusted"], unsynced["source"]) == (False, "chrony")
    auto = verdicts["auto"]
    assert (auto["trusted"], auto["source"]) == (True, "timedated"), auto
    assert [r["source"] for r in auto["readings"]] == ["chrony", "timesyncd", "timedated"]
    # Inside and outside the filter, every source but adjtimex gives the same answer.
    for name in ("chrony", "chrony-unsynced", "timesyncd", "timedated", "auto"):
        assert control["verdicts"][name]["trusted"] == verdicts[name]["trusted"], name


def test_protect_clock_alone_refuses_adjtimex_but_not_the_readers(tmp_path: Path) -> None:
    need_module("pyseccomp")
    settings = unit_settings(UNIT)
    assert settings["ProtectClock"] == ["yes"]
    policy = {"allow": None, "deny": [], "errno": "EPERM", "clock_deny": sorted(expand("@clock")),
              "families": []}
    scenarios, _flag = _sources(tmp_path)
    scenarios = {k: v for k, v in scenarios.items() if k in ("chrony", "timesyncd", "adjtimex")}
    result = run_probe(policy, scenarios)
    assert result["adjtimex"]["synchronised"] is None
    assert re.search(r"refused: Operation not permitted", result["adjtimex"]["reason"])
    assert result["verdicts"]["chrony"]["trusted"] is True
    assert result["verdicts"]["timesyncd"]["trusted"] is True
    assert result["verdicts"]["adjtimex"]["source"] == "none"
