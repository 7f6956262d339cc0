"""One serial line however its port is spelt: the configuration refuses two drivers on one line.

Every serial driver opens its line exclusively (flock), so two users of one line would fight at run time:
the second never opens it, or they take turns failing. The ports are compared by the line they name, not
by their text: ``/dev//ttyUSB0`` is ``/dev/ttyUSB0``, and a ``/dev/serial/by-id/...`` name (a symlink
udev makes) is the node it points at when the configuration is loaded. A node that does not exist yet
(an adapter plugged in later) is compared by its normalised path only.
"""

from __future__ import annotations

import os
from collections.abc import Iterable


def serial_line(port: str) -> str:
    """What `port` (a device path or a pyserial URL) names, for comparing with another port."""
    if not port.startswith("/"):
        return port.strip().lower()  # socket://host:port, rfc2217://...: the URL names the line
    path = os.path.normpath(port)
    if os.path.lexists(path):
        path = os.path.realpath(path)
    return path


def check_serial_lines_apart(users: Iterable[tuple[str, str]]) -> None:
    """Refuse two users (description, port) of one serial line, naming both and the port."""
    seen: dict[str, tuple[str, str]] = {}
    for user, port in users:
        line = serial_line(port)
        if line in seen:
            other, other_port = seen[line]
            spelt = port if port == other_port else f"{other_port} and {port}, both {line}"
            raise ValueError(f"{user} and {other} use the same port {spelt} (a serial line is opened by "
                             "one driver only)")
        seen[line] = (user, port)
