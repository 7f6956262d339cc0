"""The download policy: which devices and channels, when (the schedule window, wrapping midnight, in the
devices' zone), how the media comes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from edge.config.station import parse_config
from edge.gb28181.policy import DownloadPolicy, device_ranges

MINIMAL = '[station]\nid = "S1"\nstore_dir = "store"\n[usb]\nmount_root = "media"\n'
A, B, C = "34020000001320000001", "34020000001320000002", "34020000001320000003"
CH1, CH2 = "34020000001310000001", "34020000001310000002"


def policy(extra: str = "") -> DownloadPolicy:
    text = MINIMAL + f"""[gb28181]
enabled = true
[gb28181.devices.{A}]
password = "env:A"
[gb28181.devices.{B}]
password = "env:B"
download = false
[gb28181.devices.{C}]
password = "env:C"
channels = ["{CH2}"]
media_transport = "udp"
{extra}"""
    return DownloadPolicy.from_config(parse_config(text).gb28181)


def test_which_devices_and_channels() -> None:
    p = policy()
    assert [p.wants_device(d) for d in (A, B, C, "34020000001320000099")] == [True, False, True, False]
    assert p.channels_for(A, [CH1, CH2, CH1]) == [CH1, CH2]
    assert p.channels_for(C, [CH1, CH2]) == [CH2]
    assert p.channels_for(C, [CH1]) == []  # configured but not in the Catalog: not asked for
    assert (p.transport_for(A), p.transport_for(C)) == ("tcp-passive", "udp")


def test_on_registration_downloads_any_time_and_disabled_never() -> None:
    p = policy()
    assert p.may_download_now(datetime(2026, 12, 5, 3, 0, tzinfo=UTC))
    off = policy("[gb28181.download]\nenabled = false\n")
    assert not off.may_download_now(datetime(2026, 12, 5, 3, 0, tzinfo=UTC)) and not off.wants_device(A)


def test_a_schedule_window_wraps_midnight_in_the_devices_zone() -> None:
    p = policy('[gb28181.download]\nwhen = "schedule"\nwindow = "22:00-06:00"\n')
    # Beijing is UTC+8: 22:00 there is 14:00 UTC, 06:00 there is 22:00 UTC.
    assert not p.may_download_now(datetime(2026, 12, 5, 13, 59, tzinfo=UTC))
    assert p.may_download_now(datetime(2026, 12, 5, 14, 0, tzinfo=UTC))
    assert p.may_download_now(datetime(2026, 12, 5, 21, 59, tzinfo=UTC))
    assert not p.may_download_now(datetime(2026, 12, 5, 22, 0, tzinfo=UTC))
    day = policy('[gb28181.download]\nwhen = "schedule"\nwindow = "09:00-17:00"\n')
    assert day.may_download_now(datetime(2026, 12, 5, 1, 0, tzinfo=UTC))  # 09:00 in Beijing
    assert not day.may_download_now(datetime(2026, 12, 5, 9, 0, tzinfo=UTC))  # 17:00 in Beijing


def test_the_query_range_looks_back() -> None:
    now = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    start, end = policy("[gb28181.download]\nlookback_days = 2\n").query_range(now)
    assert (start, end) == (datetime(2026, 12, 3, 12, 0, tzinfo=UTC), now)


def test_the_device_ranges_follow_its_clock_and_its_earlier_clocks() -> None:
    now = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    start = now - timedelta(days=7)
    year = 365 * 86400.0
    assert device_ranges(start, now, None) == [(start, now)]  # not measured: the station's range
    back = timedelta(seconds=year)
    assert device_ranges(start, now, -year) == [(start - back, now - back)]
    # A year behind until the station set it a day ago, right since: the six days before the setting are
    # asked a year back, the whole range as the clock is now.
    set_at = now - timedelta(days=1)
    ranges = device_ranges(start, now, 0.0, [(-year, set_at.timestamp())])
    assert ranges == [(start, now), (start - timedelta(seconds=year), set_at - timedelta(seconds=year))]
    # A setting before the range leaves no earlier stretch to ask (the control).
    before = (start - timedelta(days=1)).timestamp()
    assert device_ranges(start, now, 0.0, [(-year, before)]) == [(start, now)]
