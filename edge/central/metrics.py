"""The central's Prometheus metrics, on a registry of its own (never the process-global default one).

What is counted, and where:

- ``edge_central_requests_total{route, method, status}``: every request answered, by **route template**
  (``/v1/items/{item}``, never the item id itself; ``unmatched`` for paths no route knows, so a scanner
  cannot grow the label set), counted by the connection (:class:`edge.central.http_server.CentralProtocol`)
  once the answer is written, whether a handler, a middleware or aiohttp itself made it.
- ``edge_central_upload_bytes_total``: request body bytes received by tus ``PATCH`` requests (evidence
  arriving), whatever their outcome.
- ``edge_central_refusals_total{class}``: every answer with status 400 or more, by the refusal's
  ``error`` code (``unauthenticated``, ``bad_chain``, ``server_busy``, ...); ``other`` when the answer
  carries no code the central knows the shape of.
- ``edge_central_verify_seconds``: the re-hash of an upload's content as it moves into the object store.
- ``edge_central_receipt_seconds``: an item registration, from its request to its receipt (or refusal).
- ``edge_central_log_size``: leaves in the Merkle log, read when scraped.
- ``edge_central_crl_next_update_seconds``: seconds until the CA's revocation list needs its next update
  (``identity/ca.crl``, read when scraped; negative once past: then the broker refuses every client; NaN
  when it cannot be read). Alert below 7 days (``/readyz`` names it too).
- ``edge_central_mqtt_queue_waiting``: messages waiting in this process's MQTT receive queue
  (:mod:`edge.central.receive_queue`), read when scraped; ``edge_central_mqtt_queue_busy_total``: messages
  answered busy because their station's share of the queue was full;
  ``edge_central_mqtt_queue_expired_total``: messages removed unhandled because their MQTT Message Expiry
  passed while they waited. Only with ``[mqtt]``.
- ``edge_central_lock_extensions_pending``: object-lock extensions (an item's retention class changed)
  the object store has not confirmed yet (:mod:`edge.central.lock_extensions`), read when scraped. Alert
  above 0 for long: evidence is locked for less than its class requires until it is 0.
- ``edge_central_refusals_not_recorded_total``: refusals of a station or reader not written to the index
  (nor logged) because that caller was refused more than a burst of them, then more than that many a
  minute (:mod:`edge.central.record_rate`: a revoked station's certificate still completes TLS and the
  broker's stations can publish thousands a second); each is still refused, and the next one recorded
  says how many were not. A steady rise: some holder of a revoked certificate keeps trying.
- ``edge_central_upload_writes``: tus upload writes in progress on this receiver, read when scraped (with
  PostgreSQL and S3 each holds a database connection); writes refused beyond ``[uploads]
  station_max_writes`` and ``max_upload_connections`` count in ``edge_central_refusals_total`` as
  ``too_many_writes`` and ``uploads_busy``.
- ``edge_central_recorders_overdue``: recorders overdue over the latest fleet report of every station
  (:func:`edge.central.equipment.is_overdue`: as the station said, or out past its due time by now), read
  when scraped. Alert above 0.

No label carries a station id, an item id, a reader name or a case number. The metrics are still not for
the internet (traffic volumes, refusal patterns): they are served only on a loopback listener of their
own (``[server] metrics_port``), see :mod:`edge.central.health`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["METRICS_CONTENT_TYPE", "CentralMetrics", "refusal_class", "route_template"]

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UNMATCHED_ROUTE = "unmatched"
# Refusal codes are short snake_case words; anything else is not a code the central made.
_MAX_CODE_CHARS = 48
_MAX_REFUSAL_BODY_BYTES = 64 * 1024
# Registrations re-hash up to the largest upload (64 GiB at about 1 GB/s): buckets up to minutes.
_DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
                       300.0, 600.0)
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_template(request: web.BaseRequest) -> str:
    """The route's template (``/v1/items/{item}``), or ``unmatched``: never a raw path."""
    match_info = getattr(request, "match_info", None)
    route = getattr(match_info, "route", None)
    resource = getattr(route, "resource", None)
    if resource is None:
        return UNMATCHED_ROUTE
    return str(resource.canonical)


def refusal_class(response: web.StreamResponse) -> str:
    """The ``error`` code of a JSON refusal, or ``other``."""
    body = getattr(response, "body", None)
    if not isinstance(body, bytes) or len(body) > _MAX_REFUSAL_BODY_BYTES:
        return "other"
    try:
        doc = json.loads(body)
    except ValueError:
        return "other"
    code = doc.get("error") if isinstance(doc, dict) else None
    if (isinstance(code, str) and 0 < len(code) <= _MAX_CODE_CHARS
            and all(ch.isascii() and (ch.islower() or ch.isdigit() or ch == "_") for ch in code)):
        return code
    return "other"


class _LogSizeCollector(Collector):
    def __init__(self, log_size: Callable[[], int]) -> None:
        self._log_size = log_size

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily("edge_central_log_size", "Leaves in the central Merkle log")
        family.add_metric([], float(self._log_size()))
        yield family

    def describe(self) -> Iterable[Metric]:
        # Described without reading the log (registration happens before the database may be asked).
        yield GaugeMetricFamily("edge_central_log_size", "Leaves in the central Merkle log")


class _CrlCollector(Collector):
    _NAME = "edge_central_crl_next_update_seconds"
    _HELP = "Seconds until the CA revocation list's next update (negative: past, the broker refuses all)"

    def __init__(self, seconds_left: Callable[[], float | None]) -> None:
        self._seconds_left = seconds_left

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(self._NAME, self._HELP)
        left = self._seconds_left()
        family.add_metric([], float("nan") if left is None else left)
        yield family

    def describe(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(self._NAME, self._HELP)


class _ReceiveQueueCollector(Collector):
    _WAITING = "edge_central_mqtt_queue_waiting"
    _WAITING_HELP = "Messages waiting in this process's MQTT receive queue"
    _BUSY = "edge_central_mqtt_queue_busy"
    _BUSY_HELP = "MQTT messages answered busy: their station's share of the receive queue was full"

    _EXPIRED = "edge_central_mqtt_queue_expired"
    _EXPIRED_HELP = ("MQTT messages removed from the receive queue unhandled: their Message Expiry passed "
                     "while they waited")

    def __init__(self, waiting: Callable[[], int], busy: Callable[[], int],
                 expired: Callable[[], int] | None) -> None:
        self._waiting = waiting
        self._busy = busy
        self._expired = expired

    def collect(self) -> Iterable[Metric]:
        waiting = GaugeMetricFamily(self._WAITING, self._WAITING_HELP)
        waiting.add_metric([], float(self._waiting()))
        yield waiting
        busy = CounterMetricFamily(self._BUSY, self._BUSY_HELP)
        busy.add_metric([], float(self._busy()))
        yield busy
        if self._expired is not None:
            expired = CounterMetricFamily(self._EXPIRED, self._EXPIRED_HELP)
            expired.add_metric([], float(self._expired()))
            yield expired

    def describe(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(self._WAITING, self._WAITING_HELP)
        yield CounterMetricFamily(self._BUSY, self._BUSY_HELP)
        if self._expired is not None:
            yield CounterMetricFamily(self._EXPIRED, self._EXPIRED_HELP)


class _FleetCollector(Collector):
    _NAME = "edge_central_recorders_overdue"
    _HELP = "Recorders overdue over the latest fleet report of every station"

    def __init__(self, overdue: Callable[[], int]) -> None:
        self._overdue = overdue

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(self._NAME, self._HELP)
        family.add_metric([], float(self._overdue()))
        yield family

    def describe(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(self._NAME, self._HELP)


class _GaugeCollector(Collector):
    """One unlabelled gauge, read when scraped."""

    def __init__(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self._name = name
        self._help = help_text
        self._read = read

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(self._name, self._help)
        family.add_metric([], float(self._read()))
        yield family

    def describe(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(self._name, self._help)


class _CounterCollector(Collector):
    """One unlabelled counter kept elsewhere, read when scraped."""

    def __init__(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self._name = name
        self._help = help_text
        self._read = read

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(self._name, self._help)
        family.add_metric([], float(self._read()))
        yield family

    def describe(self) -> Iterable[Metric]:
        yield CounterMetricFamily(self._name, self._help)


class CentralMetrics:
    """The central's counters and histograms on their own registry."""

    def __init__(self, log_size: Callable[[], int] | None = None,
                 crl_seconds_left: Callable[[], float | None] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("edge_central_requests", "Requests answered, by route template, method and "
                                "status", ("route", "method", "status"), registry=self.registry)
        self.upload_bytes = Counter("edge_central_upload_bytes", "Request body bytes received by tus PATCH "
                                    "requests", registry=self.registry)
        self.refusals = Counter("edge_central_refusals", "Answers with status 400 or more, by refusal code",
                                ("class",), registry=self.registry)
        self.verify_seconds = Histogram("edge_central_verify_seconds", "Re-hash of an upload's content "
                                        "into the object store", buckets=_DURATION_BUCKETS_S,
                                        registry=self.registry)
        self.receipt_seconds = Histogram("edge_central_receipt_seconds", "Item registration, from request "
                                         "to receipt or refusal", buckets=_DURATION_BUCKETS_S,
                                         registry=self.registry)
        if log_size is not None:
            self.registry.register(_LogSizeCollector(log_size))
        if crl_seconds_left is not None:
            self.registry.register(_CrlCollector(crl_seconds_left))

    def __repr__(self) -> str:
        return "CentralMetrics()"

    def watch_receive_queue(self, waiting: Callable[[], int], busy: Callable[[], int],
                            expired: Callable[[], int] | None = None) -> None:
        """Report the MQTT receiver's queue (its waiting messages, its busy answers, the messages it removed
        as expired), read when scraped."""
        self.registry.register(_ReceiveQueueCollector(waiting, busy, expired))

    def watch_lock_extensions(self, pending: Callable[[], int]) -> None:
        """Report the object-lock extensions the store has not confirmed yet, read when scraped."""
        self.registry.register(_GaugeCollector(
            "edge_central_lock_extensions_pending",
            "Object lock extensions (a retention class changed) the object store has not confirmed yet",
            pending))

    def watch_unrecorded_refusals(self, not_recorded: Callable[[], int]) -> None:
        """Report the refusals not written to the index (rate-limited, edge.central.record_rate), read when
        scraped."""
        self.registry.register(_CounterCollector(
            "edge_central_refusals_not_recorded",
            "Refusals of a station or reader not written to the index because it was refused more than a "
            "burst, then more than the per-minute rate (each still refused; the next recorded says how many)",
            not_recorded))

    def watch_upload_writes(self, in_progress: Callable[[], int]) -> None:
        """Report the upload writes in progress (each holds a database connection with the shared
        store), read when scraped."""
        self.registry.register(_GaugeCollector(
            "edge_central_upload_writes",
            "tus upload writes (PATCH, creation with a body) in progress on this receiver", in_progress))

    def watch_fleet(self, overdue: Callable[[], int]) -> None:
        """Report the recorders overdue agency-wide (the stations' fleet reports), read when scraped."""
        self.registry.register(_FleetCollector(overdue))

    def answered(self, request: web.BaseRequest, response: web.StreamResponse, status: int) -> None:
        """Count one answered request (the connection calls this once per request)."""
        method = request.method if request.method in _KNOWN_METHODS else "other"
        route = route_template(request)
        self.requests.labels(route=route, method=method, status=str(status)).inc()
        if method == "PATCH" and route != UNMATCHED_ROUTE:
            received = int(getattr(request.content, "total_bytes", 0))
            if received:
                self.upload_bytes.inc(received)
        if status >= 400:
            self.refusals.labels(refusal_class(response)).inc()

    def exposition(self) -> bytes:
        """The text exposition format (what Prometheus scrapes)."""
        return generate_latest(self.registry)
