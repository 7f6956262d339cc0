"""Running the central receiver: under systemd (`run_central`) or inside a test or demo (`start_central`).

`run_central` blocks until SIGTERM or SIGINT, tells systemd when it is ready (Type=notify) and pings the
watchdog while the event loop turns. The application is served over HTTPS with mutual TLS, each
connection a :class:`~edge.central.http_server.CentralProtocol` (request-head deadline, access log). Plain
HTTP only in the development mode the configuration must ask for, and then only on a loopback address:
the configuration refuses anything else, and so does :func:`start_central` once more, on the addresses
the name resolves to and on the sockets actually bound (a ``localhost`` that resolves elsewhere, a
configuration built without validation).

With ``[console] listen`` set, the auditor console also has a TLS listener of its own (same certificate,
same application) where it answers without a client certificate (password sign-in) and nothing else
answers; on the main, station-facing port the console needs a reader certificate like every other route.

With ``[server] metrics_port`` set, a second, plain-HTTP listener on 127.0.0.1 (and only there) serves
``/metrics``, ``/healthz`` and ``/readyz`` (:func:`edge.central.health.metrics_app`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import socket
import ssl
from collections.abc import Callable

from aiohttp import web

from edge.central.app import BOUNDS, CENTRAL, METRICS, READINESS, CentralParts, build_app
from edge.central.backends import open_central_database
from edge.central.config import CentralConfig, ConfigError
from edge.central.health import metrics_app
from edge.central.http_server import listen
from edge.central.identity import lock_central_store, server_ssl_context
from edge.central.limits import HttpBounds
from edge.central.storage import CentralDatabase
from edge.custody.keys import StationKey
from edge.durable.lock import StoreLock
from edge.runtime.collector import freeze_start_up_objects
from edge.runtime.sdnotify import SystemdNotifier

__all__ = ["RunningCentral", "run_central", "start_central"]

log = logging.getLogger(__name__)

# How long in-flight requests get to finish at shutdown (a registration is short; uploads resume).
_SHUTDOWN_TIMEOUT_S = 10.0
# The metrics listener binds here and nowhere else (see edge.central.health).
METRICS_LISTEN = "127.0.0.1"


class RunningCentral:
    """A central serving in the current event loop."""

    def __init__(
        self,
        runner: web.AppRunner,
        server: asyncio.Server,
        parts: CentralParts,
        bounds: HttpBounds,
        url: str,
        port: int,
        lock: StoreLock,
        metrics_runner: web.AppRunner | None = None,
        metrics_url: str | None = None,
        console_server: asyncio.Server | None = None,
        console_url: str | None = None,
    ) -> None:
        self._runner = runner
        self._server = server
        self.parts = parts
        self.bounds = bounds
        self.url = url
        self.port = port
        self._lock = lock
        self._metrics_runner = metrics_runner
        # http://127.0.0.1:PORT of the loopback metrics listener, None without one.
        self.metrics_url = metrics_url
        self._console_server = console_server
        # https://HOST:PORT of the console's own listener ([console] listen), None without one.
        self.console_url = console_url
        self._stopped = False

    @property
    def app(self) -> web.Application:
        """The application being served (its parts, the console's state)."""
        return self._runner.app

    def __repr__(self) -> str:
        return f"RunningCentral(url={self.url!r})"

    async def stop(self) -> None:
        """Stop listening, let requests finish (bounded), close the index. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        try:
            self._server.close()
            if self._console_server is not None:
                self._console_server.close()
            if self._metrics_runner is not None:
                await self._metrics_runner.cleanup()
            await self._runner.cleanup()
        finally:
            self._lock.release()
        log.info("central at %s stopped", self.url)


def _url_host(listen: str) -> str:
    """A host for URLs to reach a server bound to ``listen`` (an unspecified address means this host)."""
    try:
        address = ipaddress.ip_address(listen)
    except ValueError:
        return listen
    if address.is_unspecified:
        return "127.0.0.1" if address.version == 4 else "[::1]"
    return f"[{address}]" if address.version == 6 else str(address)


def _not_loopback(addresses: list[str]) -> list[str]:
    return [address for address in addresses if not ipaddress.ip_address(address.split("%")[0]).is_loopback]


async def _refuse_plain_http_beyond_loopback(config: CentralConfig) -> None:
    """Plain HTTP believes identity headers: it must not be reachable from another host."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(config.server.listen, config.server.port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ConfigError(f"server.listen: cannot resolve {config.server.listen!r}: {exc}") from None
    outside = _not_loopback([str(info[4][0]) for info in infos])
    if outside:
        raise ConfigError(
            f"server.listen: insecure_plain_http must listen on loopback only, but {config.server.listen!r} "
            f"resolves to {', '.join(sorted(set(outside)))}"
        )


async def start_central(
    config: CentralConfig,
    *,
    signing_key: StationKey | None = None,
    open_database: Callable[[CentralConfig], CentralDatabase] = open_central_database,
) -> RunningCentral:
    """Build the application and serve it on the configured address; stop it with ``.stop()``.

    ``open_database`` chooses the backend of the index and the Merkle log (see :func:`build_app`).

    Raises :class:`ConfigError` when development mode (plain HTTP) would be reachable beyond loopback.
    The store is locked first (one receiver per store): :class:`edge.durable.lock.StoreBusy` names the
    process that holds it.
    """
    lock = lock_central_store(config, purpose="central receiver")
    try:
        ssl_context: ssl.SSLContext | None = None
        if config.server.insecure_plain_http:
            await _refuse_plain_http_beyond_loopback(config)
        else:
            ssl_context = server_ssl_context(config)
        app = build_app(config, signing_key=signing_key, open_database=open_database)
        runner = web.AppRunner(app, shutdown_timeout=_SHUTDOWN_TIMEOUT_S, access_log=None)
        await runner.setup()
    except BaseException:
        lock.release()
        raise
    try:
        server = await listen(
            runner,
            host=config.server.listen,
            port=config.server.port,
            ssl_context=ssl_context,
            head_timeout_s=config.server.request_header_timeout_s,
            access_log=config.server.access_log,
            metrics=app[METRICS],
        )
    except BaseException:
        try:
            await runner.cleanup()
        finally:
            lock.release()
        raise
    bound = [str(sock.getsockname()[0]) for sock in server.sockets]
    if ssl_context is None and _not_loopback(bound):
        server.close()
        try:
            await runner.cleanup()
        finally:
            lock.release()
        raise ConfigError(f"server.listen: insecure_plain_http must listen on loopback only, but the server "
                          f"was bound to {', '.join(bound)}; it was closed at once")
    console_server: asyncio.Server | None = None
    console_url: str | None = None
    metrics_runner: web.AppRunner | None = None
    metrics_url: str | None = None
    try:
        if config.console.listen:
            console_server = await listen(
                runner,
                host=config.console.listen,
                port=config.console.port,
                ssl_context=ssl_context,
                head_timeout_s=config.server.request_header_timeout_s,
                access_log=config.server.access_log,
                metrics=app[METRICS],
                console_listener=True,
            )
            console_bound = [str(sock.getsockname()[0]) for sock in console_server.sockets]
            if ssl_context is None and _not_loopback(console_bound):
                raise ConfigError(f"console.listen: insecure_plain_http must listen on loopback only, but "
                                  f"the console was bound to {', '.join(console_bound)}")
            console_port = int(console_server.sockets[0].getsockname()[1])
            console_url = (f"{'http' if ssl_context is None else 'https'}://"
                           f"{_url_host(config.console.listen)}:{console_port}")
            log.info("central console (password sign-in, no client certificate) on %s", console_url)
        if config.server.metrics_port:
            metrics_runner, metrics_url = await _serve_metrics(app, config.server.metrics_port)
    except BaseException:
        if console_server is not None:
            console_server.close()
        server.close()
        try:
            await runner.cleanup()
        finally:
            lock.release()
        raise
    port = int(server.sockets[0].getsockname()[1])
    scheme = "http" if ssl_context is None else "https"
    url = f"{scheme}://{_url_host(config.server.listen)}:{port}"
    if ssl_context is None:
        log.warning("central %s listening on %s WITHOUT TLS (insecure_plain_http = true): development only",
                    config.central.id, url)
    else:
        log.info("central %s listening on %s (mutual TLS)", config.central.id, url)
    return RunningCentral(runner, server, app[CENTRAL], app[BOUNDS], url, port, lock, metrics_runner,
                          metrics_url, console_server, console_url)


async def _serve_metrics(app: web.Application, port: int) -> tuple[web.AppRunner, str]:
    """The loopback-only listener of /metrics, /healthz and /readyz; (its runner, its URL)."""
    runner = web.AppRunner(metrics_app(app[METRICS], app[READINESS], app[CENTRAL]), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, METRICS_LISTEN, port, reuse_address=True)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    url = f"http://{METRICS_LISTEN}:{port}"
    log.info("central metrics, health and readiness on %s (loopback only)", url)
    return runner, url


def run_central(config: CentralConfig) -> int:
    """Serve until SIGTERM/SIGINT; 0 on a clean stop, 1 when the server cannot start (port in use, ...).

    Identity problems (missing CA or keys) raise :class:`edge.central.identity.IdentityError`, and plain
    HTTP beyond loopback :class:`ConfigError`, for the command line to report.
    """
    return asyncio.run(_serve(config))


async def _serve(config: CentralConfig) -> int:
    notifier = SystemdNotifier()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        try:
            running = await start_central(config)
        except OSError as exc:
            log.error("central cannot listen on %s:%d: %s", config.server.listen, config.server.port, exc)
            return 1
        # `edge central run`'s own process: its start-up objects out of the cyclic collector's reach.
        freeze_start_up_objects("central")
        notifier.ready(f"central {config.central.id} serving on {running.url}")
        watchdog = asyncio.create_task(_watchdog(notifier), name="central-watchdog")
        try:
            await stop.wait()
            log.info("central %s stopping", config.central.id)
            notifier.stopping("stopping")
        finally:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
            await running.stop()
        return 0
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        notifier.close()


async def _watchdog(notifier: SystemdNotifier) -> None:
    """Ping while the event loop turns: a blocked loop stops the pings and systemd restarts us."""
    period_s = notifier.watchdog_period_s
    if period_s is None:
        return
    while True:
        notifier.watchdog()
        await asyncio.sleep(period_s)
