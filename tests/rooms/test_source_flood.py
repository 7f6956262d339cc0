"""A source whose stream runs ahead of the station's clock beyond RATE_MAX and a connection's burst
(edge.rooms.capture.source_flood_rate): its run is ended (review 27). A real-time source, a slow one, a
burst of what a camera buffered, and a stall are not."""

from __future__ import annotations

from edge.rooms.capture import RATE_FLOOD_BURST_S, RATE_MAX, source_flood_rate

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
