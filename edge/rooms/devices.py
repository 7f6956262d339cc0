"""Which device a room source's local capture input is at the start of a run, for its segments' metadata.

The configuration names a V4L2 camera and an ALSA microphone by a stable name only
(:func:`edge.config.rooms.stable_device_problem`): a udev link (``/dev/v4l/by-id/...``) and an ALSA card
name (``hw:CARD=Mic,DEV=0``). What each resolves to when ffmpeg is started (the kernel's node, the card
number) goes into every segment of the run (the ``device`` tag), so the record says which device delivered.
What the kernel or udev show of a device (its link target, its card id, taken from the USB descriptors) is
quoted only as printable text of bounded length.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from edge.config.capture_devices import V4L2_FORMATS
from edge.config.rooms import RoomInputConfig

DEVICE_TAG = "device"
_ALSA_CARD = re.compile(r"CARD=([A-Za-z0-9_-]{1,32})")
_QUOTED_MAX = 120


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)[:_QUOTED_MAX]


def device_identity(spec: RoomInputConfig, *, root: Path = Path("/")) -> str | None:
    """``NAME -> WHAT IT IS NOW`` for a local capture input (None: no such input). `root`: where /dev and
    /proc are (tests)."""
    if spec.format in V4L2_FORMATS:
        link = root / spec.url.lstrip("/")
        try:
            node = os.path.realpath(link, strict=True)
        except OSError:
            return f"{spec.url} -> absent"
        node_path = Path(node)
        if root != Path("/") and node_path.is_relative_to(root):
            node = "/" + str(node_path.relative_to(root))
        return f"{spec.url} -> {_printable(node)}"
    if spec.format == "alsa":
        card = _ALSA_CARD.search(spec.url)
        if card is None:
            return None
        try:
            number = os.readlink(root / "proc" / "asound" / card[1])
        except OSError:
            return f"{spec.url} -> absent"
        try:
            name = (root / "proc" / "asound" / number / "id").read_text(encoding="utf-8", errors="replace")
        except OSError:
            name = ""
        described = _printable(number) + (f" ({_printable(name.strip())})" if name.strip() else "")
        return f"{spec.url} -> {described}"
    return None


def device_metadata(inputs: Sequence[RoomInputConfig], *, root: Path = Path("/")) -> dict[str, str]:
    """The ``device`` tag of a run's segments (empty: no local capture input)."""
    found = [identity for spec in inputs if (identity := device_identity(spec, root=root)) is not None]
    return {DEVICE_TAG: "; ".join(found)} if found else {}
