"""Shared helpers for the tus server tests: a real TCP server on 127.0.0.1, raw HTTP over sockets, and
a subprocess server that a test can kill -9 (``python -m tests.central.tus_fixtures ROOT``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from edge.central.tus import add_tus_routes, tus_purge_task
from edge.central.tus_store import ChunkChecksum, TusUploadStore, UploadInfo, UploadWrite

STATION_HEADER = "X-Test-Station"
BASE_PATH = "/v1/uploads"


async def identify_by_header(request: web.Request) -> str:
    station = request.headers.get(STATION_HEADER)
    if not station:
        raise web.HTTPUnauthorized(text="no station")
    return station


class SignallingStore(TusUploadStore):
    """A store that tells the test when a request holds an upload and when it let go of it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.began = threading.Event()
        self.released = threading.Event()
        self.purged = threading.Event()

    def begin_write(
        self, upload_id: str, *, offset: int, checksum: ChunkChecksum | None = None
    ) -> UploadWrite:
        write = super().begin_write(upload_id, offset=offset, checksum=checksum)
        self.released.clear()
        self.began.set()
        return write

    def _release(self, state: Any) -> None:
        super()._release(state)
        self.began.clear()
        self.released.set()

    def purge_expired(self, now: Any = None) -> int:
        removed = super().purge_expired(now)
        self.purged.set()
        return removed


async def wait_event(event: threading.Event, timeout_s: float = 10.0) -> None:
    if not await asyncio.to_thread(event.wait, timeout_s):
        raise AssertionError(f"event not set within {timeout_s} s")


@dataclass
class RunningTus:
    store: TusUploadStore
    runner: web.AppRunner
    port: int
    completed: list[UploadInfo] = field(default_factory=list)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def collection_url(self) -> str:
        return self.origin + BASE_PATH


@contextlib.asynccontextmanager
async def running_tus(
    store: TusUploadStore,
    *,
    chunk_timeout_s: float = 10.0,
    purge_interval_s: float | None = None,
    port: int = 0,
    handler_cancellation: bool = False,
) -> AsyncIterator[RunningTus]:
    completed: list[UploadInfo] = []

    async def on_complete(info: UploadInfo) -> None:
        completed.append(info)

    app = web.Application()
    add_tus_routes(
        app,
        store,
        base_path=BASE_PATH,
        identify=identify_by_header,
        chunk_timeout_s=chunk_timeout_s,
        on_complete=on_complete,
    )
    if purge_interval_s is not None:
        app.cleanup_ctx.append(tus_purge_task(store, purge_interval_s))
    runner = web.AppRunner(app, shutdown_timeout=1.0, handler_cancellation=handler_cancellation)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    bound = int(runner.addresses[0][1])
    try:
        yield RunningTus(store, runner, bound, completed)
    finally:
        await runner.cleanup()


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


async def read_response(reader: asyncio.StreamReader, *, head: bool = False) -> RawResponse:
    """One HTTP/1.1 response from a raw connection (Content-Length bodies only)."""
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("connection closed before a response")
    status = int(status_line.split(b" ", 2)[1])
    headers: dict[str, str] = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    length = 0 if head or status in (204, 304) else int(headers.get("content-length", "0"))
    body = await reader.readexactly(length) if length else b""
    return RawResponse(status, headers, body)


def request_bytes(
    method: str, path: str, headers: Sequence[tuple[str, str | bytes]], body: bytes = b""
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1".encode("latin-1"), b"Host: 127.0.0.1"]
    for name, value in headers:
        raw = value if isinstance(value, bytes) else value.encode("latin-1")
        lines.append(name.encode("latin-1") + b": " + raw)
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def raw_request(
    port: int, method: str, path: str, headers: Sequence[tuple[str, str | bytes]], body: bytes = b""
) -> RawResponse:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request_bytes(method, path, headers, body))
        await writer.drain()
        return await read_response(reader, head=method == "HEAD")
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


# -- subprocess server (crash tests) -------------------------------------------------------------------


async def _serve(root: Path, commit_every_bytes: int) -> None:
    store = TusUploadStore(
        root, max_size_bytes=1 << 30, expire_after_s=3600, commit_every_bytes=commit_every_bytes
    )
    async with running_tus(store) as server:
        print(f"PORT {server.port}", flush=True)
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="tus test server (killed by the crash tests)")
    parser.add_argument("root", type=Path)
    parser.add_argument("--commit-every", type=int, default=1 << 20)
    args = parser.parse_args(argv)
    # Commit lines on stdout are the events the crash test waits for.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    store_log = logging.getLogger("edge.central.tus_store")
    store_log.addHandler(handler)
    store_log.setLevel(logging.DEBUG)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.root, args.commit_every))


if __name__ == "__main__":
    main()


class CallCounter:
    """What :class:`CountedWrite` counts: the calls on one upload running at once, and the most seen."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active = 0
        self.most_at_once = 0


class CountedWrite:
    """An upload's write handle that counts its calls running at once (two threads must never touch one
    upload) and lets a test hold or fail a call in :meth:`_before`."""

    def __init__(self, inner: UploadWrite, watch: Any) -> None:
        self._inner = inner
        self._watch = watch

    upload_id = property(lambda self: self._inner.upload_id)
    offset = property(lambda self: self._inner.offset)
    length = property(lambda self: self._inner.length)
    info = property(lambda self: self._inner.info)

    def _before(self, name: str) -> None:
        """Runs inside the counted call, before the real one: a test's hold or injected failure."""

    def _run(self, name: str, *args: Any) -> Any:
        watch = self._watch
        with watch.lock:
            watch.active += 1
            watch.most_at_once = max(watch.most_at_once, watch.active)
        try:
            self._before(name)
            return getattr(self._inner, name)(*args)
        finally:
            with watch.lock:
                watch.active -= 1

    def write(self, data: bytes) -> None:
        self._run("write", data)

    def write_pieces(self, pieces: Sequence[bytes]) -> None:
        self._run("write_pieces", pieces)

    def finish(self) -> UploadInfo:
        return self._run("finish")  # type: ignore[no-any-return]

    def keep(self) -> UploadInfo:
        return self._run("keep")  # type: ignore[no-any-return]

    def discard(self) -> UploadInfo:
        return self._run("discard")  # type: ignore[no-any-return]

    def close(self) -> None:
        self._run("close")
