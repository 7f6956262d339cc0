"""Which module speaks which ``[uplink] transport``: the one place of the uplink's core that names them.

Each factory imports its transport when it is called, so a station loads the libraries of the wire it
uses and no other. Adding a transport (MQTT file transfer, say): a module ``edge/uplink/mqtt_transport.py``
with a class satisfying :class:`edge.uplink.transport.Transport`, a member of
:class:`edge.config.station.TransportName`, and an entry here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from edge.config.station import TransportName, UplinkSection
from edge.uplink.policy import RateLimiter
from edge.uplink.transport import Transport

__all__ = ["TRANSPORTS", "TransportFactory", "transport_for"]

TransportFactory = Callable[[UplinkSection, str, RateLimiter | None], Transport]
"""(the [uplink] section, the station id, the station-wide rate limiter or None) -> a transport."""


def _tus(uplink: UplinkSection, station_id: str, limiter: RateLimiter | None) -> Transport:
    from edge.uplink.tus_transport import TusTransport

    return TusTransport(uplink, station_id, limiter=limiter)


TRANSPORTS: Mapping[TransportName, TransportFactory] = {TransportName.TUS: _tus}


def transport_for(uplink: UplinkSection, station_id: str, limiter: RateLimiter | None) -> Transport:
    """The transport ``uplink.transport`` names; ValueError naming the known ones for anything else."""
    try:
        factory = TRANSPORTS[TransportName(uplink.transport)]
    except (ValueError, KeyError):
        known = ", ".join(sorted(str(name) for name in TRANSPORTS))
        shown = str(uplink.transport)[:40]
        raise ValueError(f"[uplink] transport {shown!r} is not one of: {known}") from None
    return factory(uplink, station_id, limiter)
