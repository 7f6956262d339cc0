"""A room's composite: picture-in-picture with a burnt-in overlay, one more derived output of the room.

The composite is recorded like a source (:mod:`edge.rooms.recording`: its own source id, the same
segments, supervision, gaps and sealing) by an ffmpeg whose command :func:`composite_argv` builds, a pure
function tested as a list. That ffmpeg never opens a camera or a microphone: each source it shows (the
main source, the inset source) hands a copy of its own encoded streams, its *feed*, to the agent over a
pipe, and the agent relays it to the composite's ffmpeg over another pipe (:mod:`edge.rooms.feed_relay`:
no port or path another local process could take, read or write). The source's ffmpeg writes its segments
and the feed through ffmpeg's ``tee`` muxer, the feed through the fifo muxer with ``onfail=ignore``
(:func:`edge.rooms.argv.tee_output_args`). So a camera that serves one client, a V4L2 camera and an ALSA
microphone are opened once, by the original; nothing the composite does (absent, slow, stopped, failing,
restarted) can stop, hold up or restart an original: the relay drops whole TS packets the composite does
not take (counted, and a gap of the composite). Each run of a source or of the composite gets new pipes
(:meth:`CompositeOutput.source_pipes`, :meth:`CompositeOutput.composite_pipes`). The composite's inputs,
in order (:func:`composite_inputs`): the main source's feed (its first video stream the picture, its sound
the composite's when ``audio``), the inset source's feed (its first video stream).
Its filter graph (:func:`filter_graph`):
* the main picture scaled into the output size (aspect kept, black bars), at the output rate;
* the inset scaled to ``inset_width_pct`` of the width and laid over a corner;
* two drawtext filters reading files the station writes (:mod:`edge.rooms.overlay_text`): the clock
  (drawtext expands ``%{localtime}``) and the room, case number, elapsed time and extra line
  (``expansion=none``, read again at every frame). No text from the configuration or an operator is
  ever in the graph: only those two paths and the font's, escaped for both levels of ffmpeg's parser
  (:func:`graph_value`), and numbers.

Its segments are marked derived (``derived``: kind, main, inset, overlay, size) in their manifests, their
``segment_sealed`` entries and the session manifest; the originals are recorded exactly as without it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from edge.config.room_composite import RoomCompositeConfig
from edge.config.rooms import RoomConfig, RoomInputConfig, RoomSourceConfig
from edge.rooms.argv import (
    ArgvBuilder,
    SegmentPlan,
    codec_args,
    input_args,
    segment_argv,
    segment_output_args,
)
from edge.rooms.feed_relay import FeedDrop, FeedRelay
from edge.rooms.overlay_text import OverlayText
from edge.rooms.session import RoomSession

OVERLAY_DIR = "overlay"
DERIVED_KIND = "composite"
# Characters each level of ffmpeg's graph parser treats specially (a filter's option value, then the
# graph); white space is escaped too (each level strips it from the ends of a token).
_OPTION_SPECIAL = frozenset("\\':") | frozenset(" \t\n\r")
_GRAPH_SPECIAL = frozenset("\\'[],;") | frozenset(" \t\n\r")


def graph_value(value: str) -> str:
    """`value` as a filter option's value inside a filter graph: whatever its characters, ffmpeg reads
    it back exactly (escaped for the option parser, then for the graph parser)."""
    option = "".join("\\" + c if c in _OPTION_SPECIAL else c for c in value)
    return "".join("\\" + c if c in _GRAPH_SPECIAL else c for c in option)


FEED_PROBE = {"probesize": "1000000", "analyzeduration": "1500000"}


def feed_input(fd: int | None) -> RoomInputConfig:
    """The composite's input reading a feed from the pipe it inherits as `fd` (None: a run's pipe, not yet
    made); built by the station, never from the configuration, which refuses ``pipe:``."""
    # A short probe: the feed is the station's own MPEG-TS, and every second of it probed is a second the
    # composite starts late.
    url = "pipe:" if fd is None else f"pipe:{fd}"
    return RoomInputConfig.model_construct(format="mpegts", url=url, options=dict(FEED_PROBE), realtime=False,
                                           username=None, password=None)


@dataclasses.dataclass(frozen=True)
class CompositeInputs:
    """Which inputs the composite's ffmpeg opens (the feeds), and the role of each by its index there."""

    inputs: tuple[RoomInputConfig, ...]
    main_video: int
    audio: tuple[int, ...]  # inputs whose sound is the composite's (the main source's)
    inset_video: int | None


def feed_sources(composite: RoomCompositeConfig) -> list[str]:
    """The sources that feed `composite`: main, then inset."""
    return [composite.main] + ([] if composite.inset is None else [composite.inset])


def composite_inputs(composite: RoomCompositeConfig, fds: Mapping[str, int]) -> CompositeInputs:
    """The composite's inputs: the main source's feed, then the inset source's (`fds`: the read end of
    each source's feed pipe, as the composite's run inherits it)."""
    inputs = [feed_input(fds[composite.main])]
    inset_video = None
    if composite.inset is not None:
        inset_video = len(inputs)
        inputs.append(feed_input(fds[composite.inset]))
    return CompositeInputs(tuple(inputs), 0, (0,) if composite.audio else (), inset_video)


def _even(value: float) -> int:
    return max(2, int(value) // 2 * 2)


def filter_graph(
    config: RoomCompositeConfig, roles: CompositeInputs, *, clock_file: Path, info_file: Path
) -> str:
    """The composite's ``-filter_complex`` graph; its output is labelled ``[vout]``."""
    width, height, rate = config.width, config.height, config.rate
    parts = [f"[{roles.main_video}:v:0]scale={width}:{height}:force_original_aspect_ratio=decrease,"
             f"pad={width}:{height}:-1:-1,setsar=1,fps={rate}[main]"]
    picture = "main"
    text_left = True
    if roles.inset_video is not None:
        margin = config.inset_margin_px
        right, bottom = config.inset_corner.endswith("right"), config.inset_corner.startswith("bottom")
        x = f"main_w-overlay_w-{margin}" if right else str(margin)
        y = f"main_h-overlay_h-{margin}" if bottom else str(margin)
        inset_width = _even(width * config.inset_width_pct / 100)
        parts.append(f"[{roles.inset_video}:v:0]scale={inset_width}:-2,setsar=1[inset]")
        parts.append(f"[main][inset]overlay=x={x}:y={y}:eof_action=repeat[pip]")
        picture, text_left = "pip", right  # the text on the side the inset leaves free
    if config.overlay:
        font = graph_value(str(config.font_file))
        size = max(8, round(height * config.font_size_pct / 100))
        margin = max(4, size // 2)
        x = str(margin) if text_left else f"w-tw-{margin}"
        style = (f"fontfile={font}:fontsize={size}:fontcolor=white:box=1:boxcolor=black@0.55:"
                 f"boxborderw={max(2, size // 5)}:line_spacing={max(2, size // 4)}")
        parts.append(
            f"[{picture}]"
            f"drawtext={style}:textfile={graph_value(str(clock_file))}:expansion=normal:x={x}:y={margin},"
            f"drawtext={style}:textfile={graph_value(str(info_file))}:reload=1:expansion=none:"
            f"x={x}:y=h-th-{margin},format=yuv420p[vout]"
        )
    else:
        parts.append(f"[{picture}]format=yuv420p[vout]")
    return ";".join(parts)


def composite_argv(
    ffmpeg: str,
    inputs: Sequence[RoomInputConfig],
    plan: SegmentPlan,
    run_dir: Path,
    *,
    config: RoomCompositeConfig,
    roles: CompositeInputs,
    overlay_dir: Path,
) -> list[str]:
    """The whole ffmpeg command of one composite run (`inputs`: :func:`composite_inputs`' inputs with
    their credentials resolved), writing segments and their list in `run_dir` like a source's run."""
    if len(inputs) != len(roles.inputs):
        raise ValueError(f"the composite opens {len(roles.inputs)} inputs, got {len(inputs)}")
    graph = filter_graph(config, roles, clock_file=overlay_dir / "clock.txt",
                         info_file=overlay_dir / "info.txt")
    maps = ["-map", "[vout]"]
    for index in roles.audio:
        maps += ["-map", f"{index}:a?"]
    return [
        ffmpeg, "-hide_banner", "-nostdin", "-nostats", "-loglevel", "warning",
        *input_args(inputs),
        "-filter_complex", graph,
        *maps,
        *codec_args(plan),
        *segment_output_args(plan, run_dir),
    ]


def derived_block(config: RoomCompositeConfig) -> dict[str, Any]:
    """What a composite segment's manifest says of where it comes from."""
    return {"kind": DERIVED_KIND, "main": config.main, "inset": config.inset, "overlay": config.overlay,
            "size": config.size, "rate": config.rate}


@dataclasses.dataclass(frozen=True)
class RunPipes:
    """The pipe ends one ffmpeg run inherits (its ``pass_fds``) and the command that names them."""

    pass_fds: tuple[int, ...]
    argv: ArgvBuilder


class CompositeOutput:
    """The composite of one session: its source (as the recording runs it), the feeds of the sources it
    shows (:class:`~edge.rooms.feed_relay.FeedRelay`, one each), the pipes of each run, its overlay."""

    def __init__(self, room: RoomConfig, overlay_dir: Path, session: Callable[[], RoomSession],
                 on_drop: Callable[[FeedDrop], None] = lambda drop: None) -> None:
        if room.composite is None:
            raise ValueError(f"room {room.id} has no composite")
        self.config = room.composite
        self.feeds = {source_id: FeedRelay(source_id, on_drop=on_drop)
                      for source_id in dict.fromkeys(feed_sources(self.config))}
        self.overlay_dir = overlay_dir
        self.derived = derived_block(self.config)
        # Always encoded (a filter graph), reading the feeds (no credentials: they never leave the sources);
        # its inputs name "the run's pipe" (each run gets its own, :meth:`composite_pipes`).
        self.source = RoomSourceConfig.model_construct(
            id=self.config.id, name=self.config.name,
            input=[feed_input(None) for _ in self.feeds], codec="encode")
        self.overlay = OverlayText(overlay_dir, session) if self.config.overlay else None

    @contextlib.contextmanager
    def source_pipes(self, source_id: str) -> Iterator[RunPipes]:
        """For one run of a source the composite shows: the write end of its feed's new pipe, and its
        command writing the feed there (:func:`edge.rooms.argv.segment_argv`). The agent's copy of the end
        is closed when the run is over (the relay then reads the pipe to its end)."""
        fd = self.feeds[source_id].source_end()
        try:
            yield RunPipes((fd,), functools.partial(segment_argv, feed_fd=fd))
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def composite_pipes(self) -> Iterator[RunPipes]:
        """For one run of the composite: the read end of a new pipe from each feed, and its command
        reading them (:func:`composite_argv`). The agent's copies are closed when the run is over."""
        fds = {source_id: relay.composite_end() for source_id, relay in self.feeds.items()}
        try:
            roles = composite_inputs(self.config, fds)
            yield RunPipes(tuple(fds.values()), functools.partial(self._argv, roles))
        finally:
            for fd in fds.values():
                os.close(fd)

    def _argv(
        self, roles: CompositeInputs, ffmpeg: str, inputs: Sequence[RoomInputConfig], plan: SegmentPlan,
        run_dir: Path,
    ) -> list[str]:
        """:func:`composite_argv` for one run (after `roles`, the signature of
        :func:`edge.rooms.argv.segment_argv`; `inputs`, the source's placeholders, give way to the run's
        pipes)."""
        derived_from = f"main={self.config.main}"
        if self.config.inset is not None:
            derived_from += f" inset={self.config.inset}"
        plan = dataclasses.replace(plan, metadata={**plan.metadata, "derived_from": derived_from})
        return composite_argv(ffmpeg, roles.inputs, plan, run_dir, config=self.config, roles=roles,
                              overlay_dir=self.overlay_dir)

    def end_drops(self) -> None:
        """Report each feed's drop going on now (:meth:`FeedRelay.end_drop`): the composite's run ended."""
        for relay in self.feeds.values():
            relay.end_drop()

    def feed_status(self) -> list[dict[str, Any]]:
        return [relay.status() for relay in self.feeds.values()]

    def close(self) -> None:
        for relay in self.feeds.values():
            relay.close()


def room_outputs(room: RoomConfig) -> list[tuple[str, str]]:
    """(id, name) of everything `room` records, in order: its sources, then its composite."""
    outputs = [(s.id, s.name) for s in room.source]
    if room.composite is not None:
        outputs.append((room.composite.id, room.composite.name))
    return outputs


def derived_of(room: RoomConfig | None, output: str) -> dict[str, Any] | None:
    """What the segments of `output` derive from, when it is `room`'s composite (None: an original)."""
    if room is None or room.composite is None or room.composite.id != output:
        return None
    return derived_block(room.composite)
