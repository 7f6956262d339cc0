"""Which module speaks which ``[uplink] transport``: the one place of the uplink's core that names them.

Each factory imports its transport when it is called, so a station loads the libraries of the wire it
uses and no other. Adding a transport: a module ``edge/uplink/<name>_transport.py`` with a class
satisfying :class:`edge.uplink.transport.Transport`, a member of :class:`edge.config.station.TransportName`,
and an entry here. ``[uplink] transports = [...]`` (a preference with failover) wraps the transports it
names in :class:`edge.uplink.failover.FailoverTransport`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from edge.config.station import StationConfig, TransportName
from edge.uplink.policy import RateLimiter
from edge.uplink.transport import Transport

__all__ = ["TRANSPORTS", "TransportFactory", "transport_for"]

TransportFactory = Callable[[StationConfig, RateLimiter | None, str], Transport]
"""(the station's configuration, the station-wide rate limiter or None, the purpose) -> a transport.

The purpose says who talks (``uplink``: the agent; ``verify``, ``witness``: a command-line tool running
beside it): a transport with its own connection identity per client (MQTT) keeps them apart."""


def _tus(config: StationConfig, limiter: RateLimiter | None, purpose: str) -> Transport:
    from edge.uplink.tus_transport import TusTransport

    return TusTransport(config.uplink, config.station.id, limiter=limiter)


def _mqtt(config: StationConfig, limiter: RateLimiter | None, purpose: str) -> Transport:
    from edge.uplink.mqtt_transport import MqttTransport

    return MqttTransport(config, limiter=limiter, purpose=purpose)


TRANSPORTS: Mapping[TransportName, TransportFactory] = {TransportName.TUS: _tus, TransportName.MQTT: _mqtt}


def _factory(name: object) -> TransportFactory:
    try:
        return TRANSPORTS[TransportName(str(name))]
    except (ValueError, KeyError):
        known = ", ".join(sorted(str(known) for known in TRANSPORTS))
        raise ValueError(f"[uplink] transport {str(name)[:40]!r} is not one of: {known}") from None


def transport_for(
    config: StationConfig, limiter: RateLimiter | None, *, purpose: str = "uplink"
) -> Transport:
    """The transport ``[uplink] transport`` names, or the failover over ``[uplink] transports``; ValueError
    naming the known ones for anything else."""
    uplink = config.uplink
    order = uplink.transport_order
    transports = [_factory(name)(config, limiter, purpose) for name in order]
    if len(transports) == 1:
        return transports[0]
    from edge.uplink.failover import FailoverPolicy, FailoverTransport

    policy = FailoverPolicy(uplink.failover_after_failures, uplink.failover_after_s, uplink.failback_after_s,
                            busy_s=uplink.failover_after_busy_s,
                            idle_gap_s=uplink.backoff_max_s + uplink.breaker_open_s)
    return FailoverTransport(transports, policy)
