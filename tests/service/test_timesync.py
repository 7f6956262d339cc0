"""The station clock's sync-state readers, each against a real stand-in of its source, and `auto`."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from edge.config.station import TimeSyncSection
from edge.runtime.clock import station_clock_trust
from edge.runtime.timesync import (
    TimeSyncError,
    boot_time_s,
    parse_chrony_tracking,
    read_adjtimex,
    read_chrony,
    read_timedated,
    read_timesyncd,
)

from .timesync_env import FakeChronyc, need_tool, private_system_bus, timedated_on

GOOD_CSV = (
    "C0A80101,192.168.1.1,3,1700000000.123456789,0.000012345,-0.000006747,0.000035822,-3.225,"
    "-0.000,0.129,0.013639022,0.001100737,64.2,Normal"
)


# -- chrony -----------------------------------------------------------------------------------------------


def test_chrony_csv_is_parsed_field_by_field() -> None:
    tracking = parse_chrony_tracking(GOOD_CSV + "\n")
    assert tracking.reference_id == "C0A80101"
    assert tracking.reference_name == "192.168.1.1"
    assert tracking.stratum == 3
    assert tracking.leap_status == "Normal"
    assert tracking.max_error_s == pytest.approx(0.000012345 + 0.001100737 + 0.013639022 / 2)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "one CSV line"),
        (GOOD_CSV + "\n" + GOOD_CSV, "one CSV line"),
        (GOOD_CSV + ",extra", "14 CSV fields"),
        (GOOD_CSV.replace("C0A80101", "C0A8010"), "8 hex digits"),
        (GOOD_CSV.replace(",3,", ",99,"), "stratum"),
        (GOOD_CSV.replace(",3,", ",\uff13,"), "stratum"),  # a fullwidth digit is not a stratum
        (GOOD_CSV.replace("0.000012345", "nan"), "finite"),
        (GOOD_CSV.replace("0.000012345", "inf"), "finite"),
        (GOOD_CSV.replace("0.013639022", "-0.1"), "negative"),
        (GOOD_CSV.replace("0.001100737", "zero"), "number"),
        (GOOD_CSV.replace("Normal", "Fine"), "leap status"),
    ],
)
def test_chrony_csv_that_chronyc_never_prints_is_refused(text: str, match: str) -> None:
    with pytest.raises(TimeSyncError, match=match):
        parse_chrony_tracking(text)


def test_chrony_reference_name_with_control_characters_is_dropped() -> None:
    tracking = parse_chrony_tracking(GOOD_CSV.replace("192.168.1.1", "evil\x1b[2Jname"))
    assert tracking.reference_name == ""


@pytest.mark.parametrize(
    ("state", "trusted", "words"),
    [
        ({}, True, "synchronised to 192.168.1.1"),
        ({"leap": "Not synchronised", "reference_id": "00000000", "name": "", "stratum": 0}, False,
         "not synchronised"),
        ({"reference_id": "7F7F0101", "name": "", "stratum": 10}, False, "its own clock"),
        ({"root_dispersion_s": 0.4}, False, "off by up to"),
        ({"system_time_s": -0.3}, False, "off by up to"),
        ({"stratum": 16}, False, "stratum 16"),
    ],
)
def test_chrony_verdict_follows_chronyd(tmp_path: Path, state: dict[str, object], trusted: bool,
                                        words: str) -> None:
    chronyc = FakeChronyc(tmp_path)
    chronyc.set(**state)
    reading = read_chrony(str(chronyc.path), max_error_s=0.25, timeout_s=10)
    assert reading.source == "chrony"
    assert reading.synchronised is trusted, reading.reason
    assert words in reading.reason


@pytest.mark.parametrize(
    ("daemon", "words"),
    [
        ("down", "506 Cannot talk to daemon"),
        ("garbage", "not understood"),
        ("hang", "did not answer within"),
        ("flood", "printed more than 16384 bytes and was killed"),  # at the cap, not at the timeout
    ],
)
def test_chrony_that_cannot_answer_cannot_tell(tmp_path: Path, daemon: str, words: str) -> None:
    chronyc = FakeChronyc(tmp_path)
    chronyc.set(daemon=daemon)
    reading = read_chrony(str(chronyc.path), max_error_s=0.25, timeout_s=1.0)
    assert reading.synchronised is None
    assert words in reading.reason
    assert "\x1b" not in reading.reason


def test_missing_chronyc_cannot_tell(tmp_path: Path) -> None:
    reading = read_chrony(str(tmp_path / "no-chronyc"), max_error_s=0.25, timeout_s=1.0)
    assert reading.synchronised is None
    assert "not installed" in reading.reason


# -- systemd-timesyncd ------------------------------------------------------------------------------------


def _flag(tmp_path: Path, *, mtime: float | None) -> Path:
    directory = tmp_path / "run-systemd-timesync"
    directory.mkdir()
    flag = directory / "synchronized"
    if mtime is not None:
        flag.touch()
        os.utime(flag, (mtime, mtime))
    return flag


def test_timesyncd_fresh_flag_is_synchronised(tmp_path: Path) -> None:
    reading = read_timesyncd(_flag(tmp_path, mtime=time.time() - 60), max_age_s=7200)
    assert reading.synchronised is True, reading.reason


def test_timesyncd_not_running_cannot_tell(tmp_path: Path) -> None:
    reading = read_timesyncd(tmp_path / "absent" / "synchronized", max_age_s=7200)
    assert reading.synchronised is None
    assert "not running" in reading.reason


def test_timesyncd_running_without_flag_is_not_synchronised(tmp_path: Path) -> None:
    reading = read_timesyncd(_flag(tmp_path, mtime=None), max_age_s=7200)
    assert reading.synchronised is False
    assert "has not synchronised" in reading.reason


def test_timesyncd_flag_from_before_boot_is_stale(tmp_path: Path) -> None:
    reading = read_timesyncd(_flag(tmp_path, mtime=boot_time_s() - 60), max_age_s=10**6)
    assert reading.synchronised is False
    assert "before this boot" in reading.reason


def test_timesyncd_flag_older_than_the_limit_is_not_synchronised(tmp_path: Path) -> None:
    now = time.time()
    flag = _flag(tmp_path, mtime=now - 8000)
    reading = read_timesyncd(flag, max_age_s=7200, now_s=now, boot_s=now - 10**6)
    assert reading.synchronised is False
    assert "8000 s ago" in reading.reason
    control = read_timesyncd(flag, max_age_s=9000, now_s=now, boot_s=now - 10**6)
    assert control.synchronised is True


def test_timesyncd_flag_in_the_future_means_the_clock_went_back(tmp_path: Path) -> None:
    reading = read_timesyncd(_flag(tmp_path, mtime=time.time() + 600), max_age_s=7200)
    assert reading.synchronised is False
    assert "future" in reading.reason


def test_timesyncd_flag_that_is_not_a_file_cannot_tell(tmp_path: Path) -> None:
    flag = _flag(tmp_path, mtime=None)
    os.mkfifo(flag)
    reading = read_timesyncd(flag, max_age_s=7200)
    assert reading.synchronised is None


# -- systemd-timedated over D-Bus -------------------------------------------------------------------------


@pytest.mark.parametrize(("synchronised", "expected"), [(True, True), (False, False)])
def test_timedated_answer_over_the_bus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       synchronised: bool, expected: bool) -> None:
    busctl = need_tool("busctl")
    with private_system_bus(tmp_path) as address, timedated_on(address, synchronised=synchronised) as sim:
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", address)
        reading = read_timedated(busctl, timeout_s=5)
        assert sim.calls >= 1, "busctl asked the simulated timedated"
    assert reading.synchronised is expected, reading.reason


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"ntp_type": "s"}, "not understood"),
        ({"silent": True}, "did not answer"),
    ],
)
def test_timedated_misbehaving_cannot_tell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           options: dict[str, object], words: str) -> None:
    busctl = need_tool("busctl")
    with private_system_bus(tmp_path) as address, timedated_on(address, **options):
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", address)
        reading = read_timedated(busctl, timeout_s=1)
    assert reading.synchronised is None
    assert words in reading.reason


def test_no_timedated_on_the_bus_cannot_tell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    busctl = need_tool("busctl")
    with private_system_bus(tmp_path) as address:
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", address)
        reading = read_timedated(busctl, timeout_s=5)
    assert reading.synchronised is None
    assert "busctl failed" in reading.reason


def test_no_bus_cannot_tell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    busctl = need_tool("busctl")
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path / 'no-bus'}")
    reading = read_timedated(busctl, timeout_s=5)
    assert reading.synchronised is None


# -- the kernel -------------------------------------------------------------------------------------------


def test_adjtimex_answers_outside_the_unit() -> None:
    # The control for the seccomp tests: unfiltered, the call works and decides.
    reading = read_adjtimex()
    assert reading.synchronised is not None, reading.reason


# -- auto: the first source that can tell decides ---------------------------------------------------------


def _settings(tmp_path: Path, chronyc: Path, **overrides: object) -> TimeSyncSection:
    values: dict[str, object] = {
        "chronyc": str(chronyc),
        "timesyncd_flag": str(tmp_path / "no-timesyncd" / "synchronized"),
        "busctl": str(tmp_path / "no-busctl"),
        "command_timeout_s": 5,
    }
    values.update(overrides)
    return TimeSyncSection.model_validate(values)


def test_auto_passes_over_sources_that_cannot_tell(tmp_path: Path) -> None:
    chronyc = FakeChronyc(tmp_path / "chrony")
    chronyc.set(daemon="down")
    flag = _flag(tmp_path, mtime=time.time() - 5)
    trust = station_clock_trust("auto", _settings(tmp_path, chronyc.path, timesyncd_flag=str(flag)))
    assert (trust.trusted, trust.source) == (True, "timesyncd"), trust.reason
    assert [r.source for r in trust.readings] == ["chrony", "timesyncd"]
    assert trust.readings[0].synchronised is None and "506" in trust.readings[0].reason
    assert trust.as_dict()["readings"][1]["synchronised"] is True


def test_auto_first_definite_answer_wins_even_when_a_later_source_would_trust(tmp_path: Path) -> None:
    chronyc = FakeChronyc(tmp_path / "chrony")
    chronyc.set(leap="Not synchronised", reference_id="00000000", name="", stratum=0)
    flag = _flag(tmp_path, mtime=time.time() - 5)
    trust = station_clock_trust("auto", _settings(tmp_path, chronyc.path, timesyncd_flag=str(flag)))
    assert (trust.trusted, trust.source) == (False, "chrony")
    assert len(trust.readings) == 1


def test_auto_with_no_source_that_can_tell_is_untrusted(tmp_path: Path) -> None:
    chronyc = FakeChronyc(tmp_path / "chrony")
    chronyc.set(daemon="down")
    settings = _settings(tmp_path, chronyc.path, sources=["chrony", "timesyncd", "timedated"])
    trust = station_clock_trust("auto", settings)
    assert (trust.trusted, trust.source) == (False, "none")
    assert "no source could tell" in trust.reason and "not installed" in trust.reason
    assert [r.synchronised for r in trust.readings] == [None, None, None]


def test_configured_trust_reads_nothing(tmp_path: Path) -> None:
    chronyc = FakeChronyc(tmp_path / "chrony")
    settings = _settings(tmp_path, chronyc.path)
    assert station_clock_trust("trusted", settings).source == "config"
    assert station_clock_trust("untrusted", settings).trusted is False
    assert station_clock_trust("untrusted", settings).readings == ()


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"sources": ["chrony", "chrony"]}, "twice"),
        ({"sources": []}, "at least 1"),
        ({"sources": ["ntpd"]}, "sources"),
        ({"timesyncd_flag": "run/flag"}, "absolute"),
        ({"chronyc": "chronyc -h evil"}, "chronyc"),
        ({"chrony_max_error_ms": 5000}, "chrony_max_error_ms"),
        ({"command_timeout_s": 0}, "command_timeout_s"),
    ],
)
def test_time_sync_config_is_validated(values: dict[str, object], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        TimeSyncSection.model_validate(values)
