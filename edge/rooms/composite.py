"""A room's composite: picture-in-picture with a burnt-in overlay, one more derived output of the room.

The composite is recorded like a source (:mod:`edge.rooms.recording`: its own source id, the same
segments, supervision, gaps and sealing) by an ffmpeg whose command :func:`composite_argv` builds, a pure
function tested as a list. That ffmpeg never opens a camera or a microphone: each source it shows (the
main source, the inset source) sends it a copy of its own encoded streams, its *feed*, over a loopback
UDP port of the session (:class:`Feeds`): the source's ffmpeg writes its segments and the feed through
ffmpeg's ``tee`` muxer with ``onfail=ignore`` (:func:`edge.rooms.argv.tee_output_args`). So a camera
that serves one client, a V4L2 camera and an ALSA microphone are opened once, by the original; nothing
the composite does (absent, slow, failing, restarted) can stop or restart an original: UDP to a port
nobody reads is dropped, and a send the kernel refuses only drops the feed. The composite's inputs, in
order (:func:`composite_inputs`): the main source's feed (its first video stream the picture, its sound
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

import dataclasses
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edge.config.room_composite import RoomCompositeConfig
from edge.config.rooms import RoomConfig, RoomInputConfig, RoomSourceConfig
from edge.rooms.argv import SegmentPlan, codec_args, input_args, segment_output_args
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


FEED_HOST = "127.0.0.1"
# The feed's MPEG-TS in UDP datagrams of 7 TS packets (fits any MTU, the loopback's too).
FEED_PACKET_BYTES = 1316
# The composite's receive queue (ffmpeg's fifo_size counts 188-byte packets: about 50 MB), so that a
# busy composite drops feed packets rather than make anything wait.
FEED_FIFO_PACKETS = 262_144
FEED_PROBE = {"probesize": "1000000", "analyzeduration": "1500000"}


def free_loopback_port() -> int:
    """A UDP port of the loopback nobody uses now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((FEED_HOST, 0))
        port: int = probe.getsockname()[1]
        return port


@dataclasses.dataclass(frozen=True)
class Feeds:
    """The loopback UDP port each source the composite shows sends its feed to (one per session)."""

    ports: dict[str, int]

    @classmethod
    def allocate(cls, source_ids: Sequence[str]) -> Feeds:
        return cls({source_id: free_loopback_port() for source_id in dict.fromkeys(source_ids)})

    def send_url(self, source_id: str) -> str | None:
        """Where `source_id`'s ffmpeg sends its feed (None: it feeds nothing)."""
        port = self.ports.get(source_id)
        return None if port is None else f"udp://{FEED_HOST}:{port}?pkt_size={FEED_PACKET_BYTES}"

    def receive_input(self, source_id: str) -> RoomInputConfig:
        """The composite's input reading `source_id`'s feed."""
        url = (f"udp://{FEED_HOST}:{self.ports[source_id]}?fifo_size={FEED_FIFO_PACKETS}"
               "&overrun_nonfatal=1")
        # A short probe: the feed is the station's own MPEG-TS, and every second of it probed is a second
        # the composite starts late.
        return RoomInputConfig.model_validate({"format": "mpegts", "url": url, "options": FEED_PROBE})


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


def composite_inputs(composite: RoomCompositeConfig, feeds: Feeds) -> CompositeInputs:
    """The composite's inputs: the main source's feed, then the inset source's."""
    inputs = [feeds.receive_input(composite.main)]
    inset_video = None
    if composite.inset is not None:
        inset_video = len(inputs)
        inputs.append(feeds.receive_input(composite.inset))
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


class CompositeOutput:
    """The composite of one session: its source (as the recording runs it), its argv, its overlay."""

    def __init__(self, room: RoomConfig, overlay_dir: Path, session: Callable[[], RoomSession],
                 feeds: Feeds | None = None) -> None:
        if room.composite is None:
            raise ValueError(f"room {room.id} has no composite")
        self.config = room.composite
        self.feeds = feeds if feeds is not None else Feeds.allocate(feed_sources(self.config))
        self.roles = composite_inputs(self.config, self.feeds)
        self.overlay_dir = overlay_dir
        self.derived = derived_block(self.config)
        # Always encoded (a filter graph), reading the feeds (no credentials: they never leave the sources).
        self.source = RoomSourceConfig.model_construct(
            id=self.config.id, name=self.config.name, input=list(self.roles.inputs), codec="encode")
        self.overlay = OverlayText(overlay_dir, session) if self.config.overlay else None

    def argv(
        self, ffmpeg: str, inputs: Sequence[RoomInputConfig], plan: SegmentPlan, run_dir: Path
    ) -> list[str]:
        """:func:`composite_argv` for one run (the signature of :func:`edge.rooms.argv.segment_argv`)."""
        derived_from = f"main={self.config.main}"
        if self.config.inset is not None:
            derived_from += f" inset={self.config.inset}"
        plan = dataclasses.replace(plan, metadata={**plan.metadata, "derived_from": derived_from})
        return composite_argv(ffmpeg, inputs, plan, run_dir, config=self.config, roles=self.roles,
                              overlay_dir=self.overlay_dir)


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
