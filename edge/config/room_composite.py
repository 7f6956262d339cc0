"""`[rooms.room.composite]`: a room's burnt-in overlay and picture-in-picture, an extra derived output.

The composite is one more ffmpeg of the room, recorded, supervised and sealed like a source (its own
source id, ``composite`` by default), beside the untouched originals: the main source large, the inset
source small in a corner, the station's clock, the room, the case number, the elapsed time of the session
and an optional extra line (a room panel's temperature and humidity) burnt in. What builds it:
:mod:`edge.rooms.composite` and :mod:`edge.rooms.overlay_text`.

The composite never opens a camera or a microphone itself: the sources it shows send it a copy of their
own streams over the loopback (edge.rooms.composite), so it can show any source: a V4L2 camera, a network
camera that serves one client, a GB/T 28181 channel. It shows the first video stream of each: the inputs
of a source before the camera named by ``main_video_input``/``inset_video_input`` must be sound only.
:func:`check_composite` refuses at load what it cannot build, naming the source and the input.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator, model_validator

from edge.config.base import IDENTIFIER, StrictModel

if TYPE_CHECKING:  # no import cycle at run time: rooms.py imports this module
    from edge.config.rooms import RoomInputConfig, RoomSourceConfig

DEFAULT_FONT = "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"
# Inputs that carry sound only: capture devices, and the lavfi generators of sound.
SOUND_FORMATS = frozenset({"alsa", "pulse"})
SOUND_GENERATORS = frozenset({"sine", "anullsrc", "anoisesrc"})
_SIZE = re.compile(r"^(\d{3,4})x(\d{3,4})$")


class RoomCompositeConfig(StrictModel):
    """The room's composite output (画中画 with a burnt-in overlay)."""

    id: str = Field("composite", pattern=IDENTIFIER,
                    description="Its source id (not one of the room's sources)")
    name: str = Field("画中画合成", max_length=64, description="Human name of the composite output")
    main: str = Field(pattern=IDENTIFIER, description="Source shown full size (the person questioned)")
    inset: str | None = Field(None, pattern=IDENTIFIER, description="Source shown small in a corner (the "
                              "room overview); none: the main source alone, with the overlay")
    main_video_input: int = Field(0, ge=0, le=3, description="Which input of the main source is its camera")
    inset_video_input: int = Field(0, ge=0, le=3, description="Which input of the inset source is its camera")
    audio: bool = Field(True, description="Take the main source's other inputs (its microphone) as the "
                        "composite's sound; false: the composite is silent")
    size: str = Field("1280x720", description="Output WIDTHxHEIGHT, each even, 320x240 up to 3840x2160")
    rate: int = Field(25, ge=5, le=60, description="Output frames per second")
    inset_width_pct: int = Field(30, ge=15, le=50, description="Inset width as a share of the output width")
    inset_corner: Literal["top-right", "top-left", "bottom-right", "bottom-left"] = Field(
        "top-right", description="Corner of the inset; the overlay text goes on the other side")
    inset_margin_px: int = Field(16, ge=0, le=200, description="Distance of the inset from the edges")
    overlay: bool = Field(True, description="Burn in the clock, room, case number, elapsed time and the "
                          "extra line (court rules want the time shown: keep it on)")
    font_file: Path = Field(Path(DEFAULT_FONT), description="Font with Chinese glyphs (fonts-wqy-microhei)")
    font_size_pct: float = Field(4.0, ge=2.0, le=10.0, description="Text height as a share of the output "
                                 "height")

    @field_validator("name")
    @classmethod
    def _name_printable(cls, value: str) -> str:
        if not value.isprintable():
            raise ValueError("name must be printable text without control characters")
        return value

    @field_validator("size")
    @classmethod
    def _size(cls, value: str) -> str:
        match = _SIZE.fullmatch(value)
        if match is None:
            raise ValueError(f"size must be WIDTHxHEIGHT such as 1280x720, got {value[:20]!r}")
        width, height = int(match[1]), int(match[2])
        if not (320 <= width <= 3840 and 240 <= height <= 2160) or width % 2 or height % 2:
            raise ValueError(f"size {value}: width 320-3840 and height 240-2160, both even")
        return value

    @field_validator("font_file")
    @classmethod
    def _font(cls, value: Path) -> Path:
        text = str(value)
        if not value.is_absolute() or not text.isprintable():
            raise ValueError("font_file must be an absolute path of printable characters")
        if not value.is_file():
            raise ValueError(f"font_file {text[:200]} is not a file (install fonts-wqy-microhei, or name "
                             "another font with Chinese glyphs)")
        return value

    @model_validator(mode="after")
    def _two_sources(self) -> RoomCompositeConfig:
        if self.inset is not None and self.inset == self.main:
            raise ValueError("composite: main and inset must be two different sources")
        if self.inset is None and not self.overlay:
            raise ValueError("composite: with neither an inset nor the overlay it would only copy the main "
                             "source")
        return self

    @property
    def width(self) -> int:
        return int(self.size.split("x")[0])

    @property
    def height(self) -> int:
        return int(self.size.split("x")[1])


def carries_video(spec: RoomInputConfig) -> bool | None:
    """Whether an input delivers a video stream (None: it may, a network camera or a file)."""
    if spec.format in SOUND_FORMATS:
        return False
    if spec.format == "lavfi":
        return spec.url.split("=", 1)[0].split(",", 1)[0].strip() not in SOUND_GENERATORS
    if spec.format == "v4l2" or spec.format == "video4linux2":
        return True
    return None


def check_composite(
    room_id: str, sources: Sequence[RoomSourceConfig], composite: RoomCompositeConfig
) -> None:
    """ValueError naming what is wrong when `composite` cannot be built over the room's `sources`."""
    by_id = {s.id: s for s in sources}
    if composite.id in by_id:
        raise ValueError(f"room {room_id}: composite id {composite.id!r} is also a source id: "
                         "name it otherwise")
    for role, source_id, video in (("main", composite.main, composite.main_video_input),
                                   ("inset", composite.inset, composite.inset_video_input)):
        if source_id is None:
            continue
        source = by_id.get(source_id)
        if source is None:
            raise ValueError(f"room {room_id}: composite {role} {source_id!r} is not a source of the room "
                             f"(sources: {', '.join(by_id)})")
        count = 1 if source.gb28181 is not None else len(source.input)
        if video >= count:
            raise ValueError(f"room {room_id}: composite {role}_video_input {video} but source {source_id} "
                             f"has {count} input(s)")
        if source.gb28181 is None:
            if carries_video(source.input[video]) is False:
                raise ValueError(
                    f"room {room_id}: composite {role}_video_input {video}: source {source_id} input "
                    f"{video + 1} carries no picture (format {source.input[video].format})")
            before = [n + 1 for n in range(video) if carries_video(source.input[n]) is not False]
            if before:
                raise ValueError(
                    f"room {room_id}: composite {role}_video_input {video}: the composite shows the first "
                    f"picture of source {source_id}, and its input(s) {before} before it may carry one: "
                    "put the camera first")
