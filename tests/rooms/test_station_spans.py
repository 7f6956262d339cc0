"""Station times of segments ffmpeg listed together (edge.rooms.capture.station_spans): consecutive, the
last ending at the listing, none of zero length while its stream duration is not."""

from __future__ import annotations

import itertools

from edge.rooms.capture import station_spans

S = 1_000_000_000


def test_one_segment_runs_from_the_last_end_to_its_listing() -> None:
    assert station_spans(10 * S, 12 * S, [1.5]) == [(10 * S, 12 * S)]


def test_segments_listed_together_end_their_stream_distance_before_the_listing() -> None:
    # 5 s of station time, 3 s of stream: the first takes the slack, the others their own lengths.
    assert station_spans(0, 5 * S, [1.0, 1.0, 1.0]) == [(0, 3 * S), (3 * S, 4 * S), (4 * S, 5 * S)]


def test_a_burst_shorter_than_its_stream_is_shared_in_proportion_never_zero() -> None:
    # A source that buffered through a stall sends 3 s of stream in 0.3 s of station time: before, the two
    # earlier segments were cut to zero length (start == end).
    spans = station_spans(0, 3 * S // 10, [1.0, 2.0, 0.0])
    assert spans[-1][1] == 3 * S // 10
    assert spans[0][1] - spans[0][0] == S // 10 and spans[1][1] - spans[1][0] == 2 * S // 10
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end == start
    assert all(end > start for start, end in spans[:2])


def test_a_listing_before_the_last_end_gives_no_negative_span() -> None:
    """A station clock stepped back between two listings: times never run backwards within the run."""
    spans = station_spans(10 * S, 9 * S, [1.0, 1.0])
    assert all(end >= start for start, end in spans)
    assert spans[0][0] == 10 * S
