"""The station's Prometheus metrics, on a registry of its own (never the process-global default, so
that two stations in one process, as in the tests, never share a counter).

Counters grow with what happened (refusals and errors by class, dockings by how they ended, bytes and
files copied); gauges mirror the status board (bays by state, spool, disk, ledger, central, clock,
tasks, the fleet's recorders by state and how many are overdue); histograms time the four steps that
decide how long an officer waits and how long evidence waits for the central: copy, verify, upload and
receipt.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from edge.observe.sink import BayPhase, DurationKind

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Seconds: one file off a recorder or verified takes from a fraction of a second to minutes (4 GB).
STEP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
# Seconds from sealing to the central's receipt: seconds when the central is up, hours when it is not.
RECEIPT_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 86400.0)


class StationMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.refusals = Counter(
            "edge_station_refusals", "Recorders, volumes and files the station refused, by class",
            ["class"], registry=r,
        )
        self.errors = Counter(
            "edge_station_errors", "Error entries on the station's ledger, by stage", ["stage"], registry=r
        )
        self.dockings = Counter(
            "edge_station_dockings",
            "Dockings that ended, by how (done, awaiting_receipt, or the error class)",
            ["outcome"], registry=r,
        )
        self.copied_bytes = Counter(
            "edge_station_copied_bytes", "Bytes copied off recorders and hashed", registry=r
        )
        self.bays = Gauge("edge_station_bays", "Bays in each state", ["state"], registry=r)
        for phase in BayPhase:
            self.bays.labels(phase.value).set(0)
        self.spool_items = Gauge("edge_station_spool_items", "Sealed items not yet receipted", registry=r)
        self.spool_bytes = Gauge("edge_station_spool_bytes", "Bytes of the items in the spool", registry=r)
        self.disk_free = Gauge("edge_station_disk_free_bytes", "Free bytes on the store's disk", registry=r)
        self.ledger_head = Gauge("edge_station_ledger_head_seq", "Seq of the newest ledger entry", registry=r)
        self.ledger_witnessed = Gauge(
            "edge_station_ledger_witnessed_seq", "Newest seq of the ledger the central witnessed", registry=r
        )
        self.ledger_unwitnessed = Gauge(
            "edge_station_ledger_unwitnessed_entries", "Ledger entries past the witnessed head", registry=r
        )
        self.central_reachable = Gauge(
            "edge_station_central_reachable", "1 when the last exchange with the central worked", registry=r
        )
        self.breaker = Gauge(
            "edge_station_central_breaker", "1 for the uplink circuit breaker's current state", ["state"],
            registry=r,
        )
        self.clock_trusted = Gauge(
            "edge_station_clock_trusted", "1 when the station clock may set recorder clocks", registry=r
        )
        self.task_up = Gauge(
            "edge_station_task_running", "1 while a supervised task runs", ["task"], registry=r
        )
        self.task_restarts = Gauge(
            "edge_station_task_restarts", "Restarts of a supervised task since the agent started", ["task"],
            registry=r,
        )
        self.recorders = Gauge(
            "edge_station_recorders", "Recorders of the station's fleet in each state (edge.equipment.fleet)",
            ["state"], registry=r,
        )
        self.recorders_overdue = Gauge(
            "edge_station_recorders_overdue",
            "Recorders checked out longer than [equipment] overdue_after_h and not returned", registry=r,
        )
        self.durations = {
            kind: Histogram(
                f"edge_station_{kind.value}_seconds",
                doc,
                buckets=RECEIPT_BUCKETS if kind is DurationKind.RECEIPT else STEP_BUCKETS,
                registry=r,
            )
            for kind, doc in (
                (DurationKind.COPY, "Time to copy, hash and fsync one file off a recorder"),
                (DurationKind.VERIFY, "Time to verify and seal one copied file"),
                (DurationKind.UPLOAD, "Time to send one item's content to the central"),
                (DurationKind.RECEIPT, "Time from an item's sealing to its verified central receipt"),
            )
        }

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
