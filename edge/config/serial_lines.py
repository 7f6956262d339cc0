"""One serial line however its port is spelt: the configuration refuses two drivers on one line.

Every serial driver opens its line exclusively (flock), so two users of one line would fight at run time:
the second never opens it, or they take turns failing. The ports are compared by the line they name, not
by their text: ``/dev//ttyUSB0`` is ``/dev/ttyUSB0``, and a ``/dev/serial/by-id/...`` name (a symlink
udev makes) is the node it points at when the configuration is loaded. A node that does not exist yet
(an adapter plugged in later) is compared by its normalised path only. A network URL names the TCP
endpoint it connects to, whatever its spelling: ``socket://`` and ``rfc2217://`` to one host and port are
one line (one serial server's port), the host's case, a trailing slash or options do not matter, and the
usual loopback names (``localhost``, ``127.0.0.1``, ``::1``) are one host.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
from collections.abc import Iterable
from urllib.parse import urlsplit

_NETWORK_SCHEMES = frozenset({"socket", "rfc2217"})
# What a local serial server's port is usually reached by: one host.
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def serial_line(port: str) -> str:
    """What `port` (a device path or a pyserial URL) names, for comparing with another port."""
    if not port.startswith("/"):
        return _network_line(port.strip())
    path = os.path.normpath(port)
    if os.path.lexists(path):
        path = os.path.realpath(path)
    return path


def _network_line(url: str) -> str:
    """The TCP endpoint a socket:// or rfc2217:// URL connects to (``tcp:host:port``); any other text
    lower-cased."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:  # a port out of range, a broken IPv6 literal: compared by its text
        return url.lower()
    if parts.scheme.lower() not in _NETWORK_SCHEMES or not host or port is None:
        return url.lower()
    host = host.lower().rstrip(".")
    with contextlib.suppress(ValueError):
        host = ipaddress.ip_address(host).compressed  # 0:0::1 is ::1
    return f"tcp:{'loopback' if host in _LOOPBACK_NAMES else host}:{port}"


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
