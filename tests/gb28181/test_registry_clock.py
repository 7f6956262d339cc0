"""The registry's record of a device clock across the station's settings of it (review 16): a recording is
given the offset of the clock that stamped it. Pure state: no sockets needed."""

from __future__ import annotations

from edge.gb28181.registry import MAX_CLOCK_EPOCHS, DeviceRegistry

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


def test_a_clock_that_was_ahead_gives_the_overlap_to_the_older_clock() -> None:
    registry = _registry()
    registry.clock_measured(DEVICE, 3600.0, "m1")
    registry.clock_set(DEVICE, T)
    registry.clock_measured(DEVICE, 0.0, "m2")
    assert registry.clock_offset_at(DEVICE, T + 1800) == 3600.0  # stamped before by the fast clock, or after
    assert registry.clock_offset_at(DEVICE, T + 3600) == 0.0


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
        registry.clock_measured(DEVICE, 10.0 + i, f"m{i}")
        registry.clock_set(DEVICE, T + 1000 * i)
    assert len(registry.get(DEVICE).clock_epochs) <= MAX_CLOCK_EPOCHS  # type: ignore[union-attr]
    last = 3 * MAX_CLOCK_EPOCHS - 1
    assert registry.clock_offset_at(DEVICE, T + 1000 * last) == 10.0 + last
