"""Issue 11 (fix of review rev11e, MEDIUM): the sound's gap says how long the sound was missing by the
station's clock, the same as its `duration_s`, and that the part of it the stream stalled (picture and
sound lost: a gap of its own beside it) is not in the silence the recording holds: `duration_s` is
`silence_s` plus `stalled_s`, give or take the packets' arrival. At the session's stop during a stall, the
sound's gap and the stall's end together at the stop, and the stall's seconds are counted in the former.

Real platform, the real device simulator (`audio-drop`, `late-stall`), real ffmpeg, real store (the
scenarios of tests/rooms/test_rev11e_stall_within_audio_gap.py and test_rev11e_stall_cut_by_stop.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.rooms.gb_source import ns_from_wall_text
from tests.rooms.conftest import LedgerWatch
from tests.rooms.test_gb_audio_room import media_with_sound as media_with_sound  # the module's fixture
from tests.rooms.test_rev11e_stall_cut_by_stop import _stopped_in_or_after_a_stall
from tests.rooms.test_rev11e_stall_within_audio_gap import _record

# The station times of the sound's gap are its PTS mapped by the pictures' arrival: on a loaded machine
# they move by some tenths of a second against the silence counted in stream time.
ARRIVAL_SLACK_S = 1.0
# The test notes the pause when it sees the simulator's sender stalled; the last packet sent before it may be
# read by the station's loop a little after that (the same loop runs the test: under load, some
# milliseconds). A stall start taken at its detection instead would be `stall_s` (2 s) later.
LAST_READ_SLACK_NS = 500_000_000


def _said_missing_s(gap: dict[str, Any]) -> float:
    found = re.search(r"the camera's sound was missing for ([0-9.]+) s", gap["reason"])
    assert found, gap
    return float(found[1])


def _span_s(gap: dict[str, Any]) -> float:
    began, ended = ns_from_wall_text(gap["from"]), ns_from_wall_text(gap["to"])
    assert began is not None and ended is not None
    return (ended - began) / 1e9


@pytest.mark.usefixtures("ffmpeg")
async def test_the_sound_gap_around_a_stall_says_its_length_and_the_stall_in_it(
    media_with_sound: Path, store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch,
) -> None:
    gaps, (stall,) = await _record(media_with_sound, store, pipeline, watch, "audio-drop=10", "late-stall=3")
    (audio,) = [gap for gap in gaps if gap.get("audio") == "lost"]
    (picture,) = [gap for gap in gaps if gap.get("live") == "stalled"]
    # The stall's own gap has the live layer's times; the sound's gap counts it, in its reason too.
    assert (picture["from"], picture["to"]) == (stall["from"], stall["to"]), (picture, stall)
    assert abs(audio["stalled_s"] - stall["stalled_s"]) <= 0.01, (audio, stall)
    assert f"for {audio['stalled_s']:.1f} s of it the stream stalled" in audio["reason"], audio
    # Its numbers agree: the length it says is its duration; that is the silence and the stall.
    assert abs(_said_missing_s(audio) - audio["duration_s"]) <= 0.051, audio  # said to a tenth
    assert abs(audio["duration_s"] - audio["silence_s"] - audio["stalled_s"]) <= ARRIVAL_SLACK_S, audio
    assert 9.5 <= audio["silence_s"] <= 10.5, audio  # the 10 s of sound the camera did not send


@pytest.mark.usefixtures("ffmpeg")
async def test_at_a_stop_during_a_stall_the_sound_gap_and_the_stall_end_at_the_stop(
    media_with_sound: Path, store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch,
) -> None:
    gaps, began_ns, stop_ns = await _stopped_in_or_after_a_stall(
        media_with_sound, store, pipeline, watch, "audio-drop=600", "late-stall=30", stop_during=True)
    (audio,) = [gap for gap in gaps if gap.get("audio") == "lost"]
    (picture,) = [gap for gap in gaps if gap.get("live") == "stalled"]
    assert audio["to_stop"] and picture["to_stop"], gaps
    assert picture["reason"].endswith("until the session stopped"), picture
    assert abs(_span_s({"from": audio["to"], "to": picture["to"]})) <= ARRIVAL_SLACK_S, gaps
    for gap in (audio, picture):
        ended = ns_from_wall_text(gap["to"])
        assert ended is not None and ended >= stop_ns, (gap, stop_ns)
    # The stall's start is the last media's arrival, when the simulator's pause began (give or take the read
    # of its last packet), not when the stall was detected.
    stalled_from = ns_from_wall_text(picture["from"])
    assert stalled_from is not None and stalled_from <= began_ns + LAST_READ_SLACK_NS, (picture, began_ns)
    assert abs(audio["stalled_s"] - picture["duration_s"]) <= ARRIVAL_SLACK_S, gaps
    assert abs(_said_missing_s(audio) - audio["duration_s"]) <= 0.051, audio  # said to a tenth
    assert abs(audio["duration_s"] - audio["silence_s"] - audio["stalled_s"]) <= ARRIVAL_SLACK_S, audio
