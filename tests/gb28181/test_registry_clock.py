"""The registry's record of a device clock across the station's settings of it (review 16): a recording is
given the offset of the clock that stamped it. Pure state: no sockets needed."""

from __future__ import annotations

from edge.gb28181.registry import MAX_CLOCK_EPOCHS, ClockUnknown, DeviceRegistry

DEVICE = "34020000001320000001"
T = 1_764_900_000.0  # when the station set the clock (Unix seconds)


def _registry() -> DeviceRegistry:
    return DeviceRegistry(keepalive_interval_s=60, keepalive_timeout_count=3, clock=lambda: 0.0,
                          configured={DEVICE: ""})


def test_a_clock_a_year_behind_set_then_measured_again() -> None:
    registry = _registry()
    year = 365 * 86400.0
    registry.clock_measured(DEVICE, -year, "m1")
    assert registry.get(DEVICE).clock_sync_due  # type: ignore[union-attr]
    ended = registry.clock_set(DEVICE, T)
    assert ended is not None and ended.offset_s == -year
    assert not registry.get(DEVICE).clock_sync_due  # type: ignore[union-attr]
    assert registry.clock_offset_at(DEVICE, T - year - 60) == -year  # stamped by the old clock
    assert registry.clock_offset_at(DEVICE, T + 60) is None  # after it: not measured yet
    registry.clock_measured(DEVICE, 0.4, "m2")
    assert registry.clock_offset_at(DEVICE, T + 60) == 0.4
    assert registry.clock_offset_at(DEVICE, T - year - 60) == -year  # the old stamps keep theirs
    assert not registry.get(DEVICE).clock_sync_due  # type: ignore[union-attr]  # within the threshold


def test_a_clock_that_was_ahead_and_set_back_leaves_its_overlap_ambiguous_once_reached() -> None:
    """Set back from +1 h at T: device times T..T+1 h were stamped by the old clock, and are stamped again
    by the new one as it reaches them (review 17): before it has, they are the old clock's; after,
    either's."""
    registry = _registry()
    registry.clock_measured(DEVICE, 3600.0, "m1")
    registry.clock_set(DEVICE, T)
    registry.clock_measured(DEVICE, 0.0, "m2")
    just_after = T + 10
    assert registry.clock_offset_at(DEVICE, T + 1800, just_after) == 3600.0  # only the old clock got there
    assert registry.clock_offset_at(DEVICE, T - 600, just_after) == 3600.0  # before the setting: old
    reading = registry.clock_reading_at(DEVICE, T + 1800, T + 7200)  # both clocks have stamped it by now
    assert reading.offset_s is None and reading.unknown is ClockUnknown.AMBIGUOUS
    reading = registry.clock_reading_at(DEVICE, T + 5, just_after)  # right after the setting: either
    assert reading.offset_s is None and reading.unknown is ClockUnknown.AMBIGUOUS
    assert registry.clock_offset_at(DEVICE, T + 3700, T + 7200) == 0.0  # past the old clock's end: the new
    assert registry.clock_offset_at(DEVICE, T - 600, T + 7200) == 3600.0  # below the new clock's start: old


def test_control_a_clock_that_was_behind_and_set_forward_has_no_overlap() -> None:
    registry = _registry()
    registry.clock_measured(DEVICE, -3600.0, "m1")
    registry.clock_set(DEVICE, T)
    registry.clock_measured(DEVICE, 0.0, "m2")
    assert registry.clock_offset_at(DEVICE, T - 3600 - 60, T + 7200) == -3600.0
    assert registry.clock_offset_at(DEVICE, T + 60, T + 7200) == 0.0
    reading = registry.clock_reading_at(DEVICE, T - 1800, T + 7200)  # skipped: no clock of it read this
    assert reading.offset_s is None and reading.unknown is ClockUnknown.BETWEEN_CLOCKS


def test_a_device_that_does_not_report_its_time_may_be_set_with_nothing_known_before() -> None:
    registry = _registry()
    registry.clock_measured(DEVICE, None, "m1")
    assert registry.get(DEVICE).clock_sync_due  # type: ignore[union-attr]
    ended = registry.clock_set(DEVICE, T)
    assert ended is not None and ended.offset_s is None
    assert registry.clock_offset_at(DEVICE, T - 60) is None


def test_the_clock_history_is_bounded() -> None:
    registry = _registry()
    for i in range(3 * MAX_CLOCK_EPOCHS):
        # Within the step tolerance: a larger offset measured again after a setting is a Date ignored
        registry.clock_measured(DEVICE, 3.0 + i % 2, f"m{i}")
        registry.clock_set(DEVICE, T + 1000 * i)
    assert len(registry.get(DEVICE).clock_epochs) <= MAX_CLOCK_EPOCHS  # type: ignore[union-attr]
    last = 3 * MAX_CLOCK_EPOCHS - 1
    assert registry.clock_offset_at(DEVICE, T + 1000 * last - 500) == 3.0 + last % 2
    # Stamps of the epochs no longer kept get no offset: not the oldest kept one's.
    reading = registry.clock_reading_at(DEVICE, T + 1000 * 5)
    assert reading.offset_s is None and reading.unknown is ClockUnknown.BEFORE_HISTORY


def test_a_measurement_against_an_untrusted_station_clock_is_kept_apart() -> None:
    """Review 17: it measured the station's error too; neither the device's offset nor its epochs, nor a
    reason to set the clock, until a trusted measurement comes."""
    registry = _registry()
    registry.clock_measured_untrusted(DEVICE, 7200.0, "m1")
    device = registry.get(DEVICE)
    assert device is not None and device.clock_remeasure and not device.clock_sync_due
    assert device.clock_offset_s is None and device.clock_epochs == []
    assert device.view()["clock_measured_untrusted"] == {"offset_s": 7200.0, "at": "m1"}
    assert registry.clock_reading_at(DEVICE, T).unknown is ClockUnknown.NOT_MEASURED
    registry.clock_measured(DEVICE, 0.3, "m2")  # control: the trusted one is taken
    assert not device.clock_remeasure and device.clock_offset_s == 0.3
    assert registry.clock_offset_at(DEVICE, T) == 0.3 and device.view()["clock_measured_untrusted"] is None
