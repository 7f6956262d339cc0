"""A source whose stream runs ahead of the station's clock beyond RATE_MAX and a connection's burst
(edge.rooms.capture.source_flood_rate, FloodWatch): its run is ended (review 27). A real-time source, a
slow one, a burst of what a camera buffered as it connects (review 28), and a stall are not. The run's
first listing counts (review 29, MEDIUM: the rule once started from its end)."""

from __future__ import annotations

from edge.rooms.capture import (
    CONNECT_BURST_MAX_S,
    CONNECT_WINDOW_S,
    RATE_FLOOD_BURST_S,
    RATE_MAX,
    FloodWatch,
    source_flood_rate,
)

S = 1_000_000_000


def test_a_stream_many_times_real_time_is_named_with_its_rate() -> None:
    assert source_flood_rate((2.0, 10 * S), 2.0 + 60.0, 13 * S, 0) == 20.0  # 60 stream s in 3 station s


def test_real_time_slow_and_a_burst_at_connection_are_not() -> None:
    assert source_flood_rate((2.0, 10 * S), 2.0 + 30.0, 40 * S, 0) is None  # real time
    assert source_flood_rate((2.0, 10 * S), 2.0 + 10.0, 40 * S, 0) is None  # slow
    # A burst just within the allowance (stream ahead of RATE_MAX x station by RATE_FLOOD_BURST_S).
    assert source_flood_rate((0.0, 0), RATE_FLOOD_BURST_S + RATE_MAX * 1.0, 1 * S, 0) is None
    assert source_flood_rate((0.0, 0), RATE_FLOOD_BURST_S + RATE_MAX * 1.0 + 0.5, 1 * S, 0) is not None
    assert source_flood_rate(None, 100.0, 1 * S, 0) is None
    assert source_flood_rate((0.0, 0), 100.0, None, 0) is None


def test_a_stall_left_out_does_not_make_a_source_fast() -> None:
    # 20 stream s over 25 station s of which 20 were a stall: 4x over what it delivered, at the bound.
    assert source_flood_rate((0.0, 0), 20.0, 25 * S, 20 * S) is None
    assert source_flood_rate((0.0, 0), 40.0, 25 * S, 20 * S) == 8.0


def _first_flood(watch: FloodWatch, speed: float, *, burst_s: float = 0.0, burst_speed: float = 20.0,
                 until_s: float = 60.0) -> float | None:
    """Listings every 0.1 station s of a source that sends `burst_s` at `burst_speed` as it connects, then
    runs at `speed`: the station second its run is ended at, or None."""
    station_s, stream_s = 0.0, 1.0
    watch.listed(stream_s, 0, 0)
    while station_s < until_s:
        station_s += 0.1
        stream_s += 0.1 * (burst_speed if stream_s < burst_s else speed)
        watch.listed(stream_s, int(station_s * S), 0)
        if watch.rate(stream_s, int(station_s * S)) is not None:
            return station_s
    return None


def test_a_burst_at_connect_is_no_flood_but_a_sustained_flood_is_ended() -> None:
    # Review 28: 20 s of pre-buffer in a second, then real time: 15 s ahead of 4x, not a flood.
    assert source_flood_rate((1.0, 0), 20.0, int(0.95 * S), 0) is not None  # the old rule ended it
    assert _first_flood(FloodWatch((0.0, 0)), 1.0, burst_s=20.0) is None
    assert _first_flood(FloodWatch((0.0, 0)), 1.0, burst_s=CONNECT_BURST_MAX_S) is None
    # Controls: a flood at 10x (no burst) is ended once the window is over, and soon after it.
    ended = _first_flood(FloodWatch((0.0, 0)), 10.0)
    assert ended is not None and ended <= CONNECT_WINDOW_S + RATE_FLOOD_BURST_S / 6 + 0.5, ended
    # ... a burst followed by a flood too; and a flood beyond the window's allowance within the window.
    assert _first_flood(FloodWatch((0.0, 0)), 6.0, burst_s=20.0) is not None
    fast = _first_flood(FloodWatch((0.0, 0)), 50.0)
    assert fast is not None and fast < CONNECT_WINDOW_S / 5, fast
    # A stall is not the source's time: left out within the window as elsewhere.
    watch = FloodWatch((0.0, 0))
    watch.listed(1.0, 0, 0)
    watch.listed(11.0, 20 * S, 18 * S)  # 10 stream s over 2 station s delivered: ahead within allowance
    assert watch.rate(11.0, 20 * S) is None


def test_the_first_listing_of_a_run_is_counted() -> None:
    """Review 29 (MEDIUM): 60 stream seconds listed at once 1 station second after ffmpeg started (two
    segments of a flood in the run's first listing) are a flood; the rule once took their end for its
    basis and never counted them. Control: a real-time first listing is not."""
    flood = FloodWatch((0.0, 0))
    flood.listed(60.0, 1 * S, 0)
    assert flood.rate(60.0, 1 * S) == 60.0
    real_time = FloodWatch((0.0, 0))
    real_time.listed(1.0, 1 * S, 0)
    assert real_time.rate(1.0, 1 * S) is None


def test_a_camera_slow_to_connect_keeps_its_connect_window() -> None:
    """The window runs from the run's first listing: a camera that takes 12 s to connect and then sends
    its 20 s of buffer in a second is not a flood (the basis is the run's start, the window is not)."""
    watch = FloodWatch((0.0, 0))
    stream_s, station_s = 0.0, 12.0
    while station_s < 40.0:
        stream_s += 2.0 if stream_s < 20.0 else 0.1  # 20x for a second, then real time
        station_s += 0.1
        watch.listed(stream_s, int(station_s * S), 0)
        assert watch.rate(stream_s, int(station_s * S)) is None, (stream_s, station_s)
