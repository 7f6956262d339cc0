"""Health, readiness and metrics endpoints of the central, for load balancers and monitoring.

- ``GET /healthz``: the process is alive and its event loop turns (``200 {"status": "alive"}``). Nothing
  is checked beyond that: a load balancer that restarts on it must not restart a central whose disk is
  merely full.
- ``GET /readyz``: the central can accept evidence now: the store takes a write (an unnamed probe file
  written and fsync'd in ``<store>/readiness/``, a directory of its own that holds no evidence and that
  `edge verify` does not look into: never in ``objects/`` or ``uploads/``, where a named probe left by
  a crash would read as a planted file), the index answers (the Merkle log's size is read), the log
  signer signs (a probe message signed and verified with the central key), and with an S3 store the
  buckets an upload needs answer: ``objects`` (the content bucket) and, when the tus parts have one of
  their own (``staging_bucket``, receivers sharing PostgreSQL and S3), ``staging``. Each probe runs off
  the event loop (a worker or reader thread) within :data:`_PROBE_TIMEOUT_S`. The verdict is cached for
  :data:`READINESS_MAX_AGE_S` seconds and shared by every caller: whoever calls and however often (the
  endpoint answers anonymous callers), the central probes at most once in that time. ``200``
  when all pass; ``503`` naming each failing check otherwise, with ``Retry-After``. The body names checks
  and a short word (``ok``, ``not_writable``, ``not_answering``, ``not_signing``, ``unreachable``,
  ``timed_out``): never a path, a URL, a bucket's name, an exception text or a key; the details go to
  the central's log (never a key or a password), once per change of state.
  A warning that does not stop the central taking evidence is named under ``warnings`` without turning
  the answer 503: ``{"crl": "expires_soon"}`` (less than 7 days before the CA's revocation list needs
  its next update; past it the broker refuses every client), ``"expired"`` or ``"unreadable"`` (also:
  missing while the central has an ``[mqtt]`` section), with ``"crl_list"`` naming which copy was read
  (:class:`edge.central.revocation.CrlList`: ``broker_crl_file``, the file the broker reads, when
  ``[mqtt] broker_crl_file`` is set; else ``last_installed``, the copy `edge central crl --out` last
  installed; else ``central_copy``, the central's own ``identity/ca.crl``, which enrolments renew
  without installing it for the broker). ``{"lock_extensions": "pending"}`` while an item's retention
  class changed and the object store has not yet confirmed the longer lock (:mod:`edge.central.
  lock_extensions` retries it; ``edge_central_lock_extensions_pending`` counts them).

Both answer **without a client certificate** on the central's TLS listener (the TLS context asks for a
certificate but no longer requires one in the handshake); :data:`PUBLIC_ROUTES` is the complete list
of what :func:`edge.central.auth.require_client_certificate` lets through without one. Every other route
refuses a caller without a certificate (401) before its handler runs.

- ``GET /metrics``: Prometheus text exposition (:mod:`edge.central.metrics`). **Not** on the TLS
  listener: only on a listener of its own on the loopback address (``[server] metrics_port``, off when
  0), with ``/healthz`` and ``/readyz`` beside it. Who can connect to 127.0.0.1 on the central's host
  may read it (a Prometheus on that host, or an agent that forwards); nothing beyond the host can. The
  metrics carry no station or item ids, but traffic volumes and refusal patterns are still the agency's
  business, so they are kept off the internet-facing port.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web
from cryptography.exceptions import InvalidSignature

from edge.central.metrics import METRICS_CONTENT_TYPE, CentralMetrics
from edge.central.objects import FileObjectStore
from edge.central.revocation import CRL_WARN_BEFORE, CrlList, crl_standing
from edge.central.tus_store import TusUploadStore
from edge.custody.canonical import canonical_json

if TYPE_CHECKING:
    from edge.central.app import CentralParts

__all__ = ["PUBLIC_ROUTES", "READINESS_DIR", "READINESS_MAX_AGE_S", "Readiness", "add_health_routes",
           "metrics_app"]

log = logging.getLogger(__name__)

_CRL_COPY_TEXT = {
    CrlList.BROKER: "the broker's copy, [mqtt] broker_crl_file",
    CrlList.INSTALLED: "of the copies installed by `edge central crl --out` or `broker-cert`, the one whose "
                       "next update comes first",
    CrlList.CENTRAL: "the central's own copy: none was installed through `edge central crl --out`, and "
                     "[mqtt] broker_crl_file is not set",
}

HEALTHZ = "/healthz"
READYZ = "/readyz"
METRICS = "/metrics"
# Routes of the TLS listener that answer without a client certificate: nothing else does.
PUBLIC_ROUTES = frozenset({HEALTHZ, READYZ})
# A probe that takes longer than this counts as failed (a hung disk must not hang the load balancer).
_PROBE_TIMEOUT_S = 5.0
_RETRY_AFTER_S = "5"
# How old a readiness verdict may be when answered: anonymous callers must not make the central write.
READINESS_MAX_AGE_S = 5.0
# The probe's directory under the store (edge.central.verify knows it holds nothing of the store's).
READINESS_DIR = "readiness"
_PROBE_MESSAGE_PREFIX = b"evidence-edge readiness probe "


def _json(doc: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=canonical_json(doc), status=status, content_type="application/json",
                        headers={"Cache-Control": "no-store", **(headers or {})})


def _probe_directory(directory: Path) -> None:
    """Write and fsync a byte in ``directory`` (made when missing; raises OSError when it cannot).

    The probe is an unnamed file (``O_TMPFILE``): it never has a name in the store, so neither a crash
    nor `edge verify` running beside the central can ever see it as a planted file. A file system
    without ``O_TMPFILE`` gets a named probe, removed at once (one a crash leaves is in a directory
    that holds nothing else and that verify does not look into)."""
    directory.mkdir(mode=0o700, exist_ok=True)
    try:
        fd = os.open(directory, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            raise
        _probe_named(directory)
        return
    try:
        os.write(fd, b"ready\n")
        os.fsync(fd)
    finally:
        os.close(fd)


def _probe_named(directory: Path) -> None:
    probe = directory / f".readyz-{secrets.token_hex(8)}"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, b"ready\n")
        os.fsync(fd)
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(probe)


class Readiness:
    """The three readiness checks of ``/readyz``; remembers the last verdict to log only changes and to
    answer from it while it is younger than ``max_age_s`` (:meth:`verdict`)."""

    def __init__(self, parts: CentralParts, *, max_age_s: float = READINESS_MAX_AGE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._parts = parts
        self._last_failed: frozenset[str] | None = None
        self.max_age_s = max_age_s
        self._clock = clock
        self._cached: dict[str, str] | None = None
        # Not failures: named in the answer, logged once per change.
        self.warnings: dict[str, str] = {}
        self._cached_at = float("-inf")
        # One probe at a time: a burst of callers waits for the probe under way and shares its verdict.
        self._refreshing = asyncio.Lock()

    async def verdict(self) -> dict[str, str]:
        """:meth:`check`'s answer, probed again only when the last one is ``max_age_s`` old."""
        async with self._refreshing:
            if self._cached is None or self._clock() - self._cached_at >= self.max_age_s:
                self._cached = await self.check()
                self._cached_at = self._clock()
            return dict(self._cached)

    def __repr__(self) -> str:
        return f"Readiness(last_failed={sorted(self._last_failed or ())!r})"

    async def check(self) -> dict[str, str]:
        """``{check: "ok" | failure word}`` for ``store``, ``index`` and ``signer``, ``objects`` when
        they are in a bucket (an S3 store: the bucket answers), and ``staging`` when the tus parts have a
        bucket of their own (the staging bucket answers)."""
        details: dict[str, str] = {}
        results = {
            "store": await self._timed("store", "not_writable", self._store, details),
            "index": await self._timed("index", "not_answering", self._index, details),
            "signer": await self._timed("signer", "not_signing", self._signer, details),
        }
        if not isinstance(self._parts.objects, FileObjectStore):  # a local folder is the "store" check
            results["objects"] = await self._timed("objects", "unreachable", self._objects, details)
        staging = self._staging_bucket()
        if staging is not None:
            results["staging"] = await self._timed("staging", "unreachable", staging, details)
        # A warning, never a failed check: read off the loop within the probes' time limit (review 13),
        # and not when the index check names a database that does not answer.
        pending: list[int] = []

        async def pending_locks() -> None:
            pending.append(await self._parts.read(self._parts.index.pending_lock_count))

        if results["index"] == "ok":
            await self._timed("lock_extensions", "not_answering", pending_locks, {})
        failed = frozenset(name for name, word in results.items() if word != "ok")
        if failed != self._last_failed:
            if failed:
                log.warning("central NOT ready: %s", "; ".join(f"{name}: {details[name]}" for name in
                                                                sorted(failed)))
            elif self._last_failed is not None:
                log.info("central ready again: %s answer", ", ".join(sorted(results)))
            self._last_failed = failed
        self._check_crl()
        if pending:
            self._check_lock_extensions(pending[0])
        return results

    def _check_lock_extensions(self, pending: int) -> None:
        """Warn while object-lock extensions wait for the store (evidence locked for less than its class
        requires): the central still takes evidence, so it stays ready."""
        if pending and "lock_extensions" not in self.warnings:
            log.warning("%d object lock extension(s) wait for the object store (retried every %g s): "
                        "their evidence is locked for less than its retention class requires", pending,
                        self._parts.config.retention.lock_retry_interval_s)
        elif not pending and "lock_extensions" in self.warnings:
            log.info("every object lock extension is confirmed by the object store")
        if pending:
            self.warnings["lock_extensions"] = "pending"
        else:
            self.warnings.pop("lock_extensions", None)

    def _check_crl(self) -> None:
        config = self._parts.config
        layout = config.layout
        standing = crl_standing(layout, broker_crl_file=config.mqtt.broker_crl_file if config.mqtt else None)
        left = standing.seconds_left
        if left is None and standing.copy is CrlList.CENTRAL and not layout.crl_file.exists() \
                and config.mqtt is None:
            word = ""  # a store made before the list (or by hand) serving HTTPS only: no broker reads one
        elif left is None:
            word = "unreadable"
        elif left <= 0:
            word = "expired"
        elif left < CRL_WARN_BEFORE.total_seconds():
            word = "expires_soon"
        else:
            word = ""
        if word != self.warnings.get("crl", ""):
            if word:
                log.warning("the CA's revocation list %s (%s) is %s (%s): the broker refuses every client "
                            "once it is past its next update; renew it: `edge central crl --config FILE "
                            "--out BROKER_CRL` (systemd/edge-central-crl.timer does it daily)", standing.path,
                            _CRL_COPY_TEXT[standing.copy], word.replace("_", " "),
                            "no next update" if left is None else f"{left / 86400:.1f} days left")
            else:
                log.info("the CA's revocation list %s (%s) is renewed", standing.path,
                         _CRL_COPY_TEXT[standing.copy])
        if word:
            self.warnings["crl"] = word
            # Which copy was read (a word, never its path: /readyz answers anyone).
            self.warnings["crl_list"] = standing.copy.value
        else:
            self.warnings.pop("crl", None)
            self.warnings.pop("crl_list", None)

    async def _timed(self, name: str, failure: str, probe: Callable[[], Awaitable[None]],
                     details: dict[str, str]) -> str:
        try:
            async with asyncio.timeout(_PROBE_TIMEOUT_S):
                await probe()
        except TimeoutError:
            details[name] = f"no answer within {_PROBE_TIMEOUT_S:g} s"
            return "timed_out"
        except Exception as exc:  # a probe never fails the endpoint itself: it names the check instead
            details[name] = f"{type(exc).__name__}: {exc}"
            return failure
        return "ok"

    async def _store(self) -> None:
        await asyncio.to_thread(_probe_directory, self._parts.config.layout.store_dir / READINESS_DIR)

    async def _objects(self) -> None:
        problem = await asyncio.to_thread(self._parts.objects.reachable)
        if problem is not None:
            raise ConnectionError(problem)

    def _staging_bucket(self) -> Callable[[], Awaitable[None]] | None:
        """The probe of the tus parts' own bucket (``staging_bucket``), which every upload's bytes go to
        on receivers sharing PostgreSQL and S3; None without one (local uploads, or parts in the content
        bucket, which ``objects`` checks)."""
        uploads = self._parts.uploads
        if isinstance(uploads, TusUploadStore) or not uploads.staging.own_bucket:
            return None
        staging = uploads.staging

        async def probe() -> None:
            problem = await asyncio.to_thread(staging.reachable)
            if problem is not None:
                raise ConnectionError(problem)

        return probe

    async def _index(self) -> None:
        # What a station's read gets: the stations' reader threads.
        size = await self._parts.station_read(self._parts.merkle.size)
        if size < 0:
            raise ValueError(f"the log reports a negative size {size}")

    async def _signer(self) -> None:
        key = self._parts.signing_key
        message = _PROBE_MESSAGE_PREFIX + str(time.time_ns()).encode()
        signature = key.sign(message)
        try:
            key.public_key().verify(signature, message)
        except InvalidSignature:
            raise ValueError("the central key's signature does not verify with its own public key") from None


def _handlers(readiness: Readiness) -> tuple[Callable[[web.Request], Awaitable[web.Response]],
                                              Callable[[web.Request], Awaitable[web.Response]]]:
    async def healthz(request: web.Request) -> web.Response:
        return _json({"status": "alive"})

    async def readyz(request: web.Request) -> web.Response:
        checks = await readiness.verdict()
        warnings = {"warnings": dict(readiness.warnings)} if readiness.warnings else {}
        if all(word == "ok" for word in checks.values()):
            return _json({"status": "ready", "checks": checks, **warnings})
        return _json({"status": "not_ready", "checks": checks, **warnings}, status=503,
                     headers={"Retry-After": _RETRY_AFTER_S})

    return healthz, readyz


def add_health_routes(app: web.Application, readiness: Readiness) -> None:
    """``/healthz`` and ``/readyz`` on the central's main (TLS) application."""
    healthz, readyz = _handlers(readiness)
    app.router.add_get(HEALTHZ, healthz, allow_head=False)
    app.router.add_get(READYZ, readyz, allow_head=False)


def metrics_app(metrics: CentralMetrics, readiness: Readiness, parts: CentralParts) -> web.Application:
    """The loopback-only application: ``/metrics``, ``/healthz`` and ``/readyz``."""
    healthz, readyz = _handlers(readiness)

    async def exposition(request: web.Request) -> web.Response:
        # Built in a reader (``CentralParts.read``): its collectors read the log's size, the pending lock
        # extensions and the fleet from the index when scraped, which must not wait on the loop (review 13).
        body = await parts.read(metrics.exposition)
        return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE,
                                                "Cache-Control": "no-store"})

    app = web.Application()
    app.router.add_get(METRICS, exposition, allow_head=False)
    app.router.add_get(HEALTHZ, healthz, allow_head=False)
    app.router.add_get(READYZ, readyz, allow_head=False)
    return app
