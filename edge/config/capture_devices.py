"""One local capture device however it is named: the configuration refuses it in two sources.

A V4L2 camera streams to one reader at a time, and an ALSA ``hw``/``plughw`` device records for one
reader at a time: a second source on the same device never starts (busy) and takes turns failing with the
first. udev gives one camera two stable links (``/dev/v4l/by-id/...`` by its serial, ``/dev/v4l/by-path/...``
by its port), so the names are compared by the node they point at when the configuration is loaded (as
:mod:`edge.config.serial_lines` does for serial lines); a link that does not exist yet (a camera plugged in
later) by its normalised path. ALSA names by card and device (``hw:CARD=Mic,DEV=0`` is
``plughw:CARD=Mic,DEV=0``). ``dsnoop`` and PulseAudio sources are made to be shared: not compared.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

V4L2_FORMATS = frozenset({"v4l2", "video4linux2"})
_EXCLUSIVE_ALSA = re.compile(r"^(hw|plughw):CARD=([A-Za-z0-9_-]{1,32})(?:,DEV=([0-9]{1,2}))?$")


def capture_device(format_name: str, url: str, *, root: Path = Path("/")) -> str | None:
    """What local device `url` (an input of `format_name`) opens exclusively, for comparing with another
    input; None when it opens none such. `root`: where /dev is (tests give a directory of their own)."""
    if format_name in V4L2_FORMATS and url.startswith("/"):
        path = root / os.path.normpath(url).lstrip("/")
        if os.path.lexists(path):
            path = Path(os.path.realpath(path))
        return f"v4l2:{path}"
    if format_name == "alsa" and (match := _EXCLUSIVE_ALSA.fullmatch(url)) is not None:
        return f"alsa:{match[2]},{match[3] or '0'}"
    return None


def check_capture_devices_apart(users: Iterable[tuple[str, str, str]], *, root: Path = Path("/")) -> None:
    """Refuse two users (description, format, url) of one local capture device, naming both and the
    device."""
    seen: dict[str, tuple[str, str]] = {}
    for user, format_name, url in users:
        device = capture_device(format_name, url, root=root)
        if device is None:
            continue
        if device in seen:
            other, other_url = seen[device]
            spelt = url if url == other_url else f"{other_url} and {url}, both {device.split(':', 1)[1]}"
            raise ValueError(f"{user} and {other} use the same capture device {spelt}: a device is opened "
                             "by one source only (the second would never start); record it once")
        seen[device] = (user, url)
