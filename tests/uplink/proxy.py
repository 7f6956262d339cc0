"""A reverse proxy on a real socket in front of a real central, that answers some requests itself.

Agencies put nginx or a load balancer between stations and the central; such a proxy answers on the
central's behalf when it dislikes a request (400, 413 with its own HTML page), when the central is slow
or down (502, 503, 504), and sometimes cuts a body short. :class:`FaultyProxy` forwards everything to
the central over HTTP unless a :class:`Fault` matches the request, in which case it answers with that
fault's status, headers and body instead (the request never reaches the central). Each fault applies a
given number of times, then the proxy passes requests through again, so a test can show that the
station retried and that the evidence arrived in the end.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

# Hop-by-hop headers, and those the server recomputes for the body it sends.
_NOT_FORWARDED = frozenset(
    name.lower()
    for name in (
        "Connection", "Keep-Alive", "Proxy-Connection", "TE", "Trailer", "Transfer-Encoding", "Upgrade",
        "Host", "Content-Length", "Content-Encoding",
    )
)

Answer = Callable[[web.Request, bytes], tuple[int, dict[str, str], bytes]]
"""``answer(request, its body) -> (status, headers, body)``: what the proxy says instead."""


def nginx_page(status: int, reason: str) -> Answer:
    """The page nginx answers with when it refuses a request itself."""
    body = (
        f"<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
        f"<center><h1>{status} {reason}</h1></center>\r\n<hr><center>nginx/1.22.1</center>\r\n"
        "</body>\r\n</html>\r\n"
    ).encode()
    return lambda _request, _body: (status, {"Content-Type": "text/html", "Server": "nginx/1.22.1"}, body)


@dataclass
class Fault:
    """Answer ``answer`` instead of the central to ``method`` requests whose path matches ``path``, the
    first ``times`` times (0: for ever)."""

    method: str
    path: str
    answer: Answer
    times: int = 1
    applied: int = 0

    def matches(self, method: str, path: str) -> bool:
        spent = self.times and self.applied >= self.times
        return not spent and method == self.method and re.fullmatch(self.path, path) is not None


@dataclass
class FaultyProxy:
    upstream: str
    faults: list[Fault] = field(default_factory=list)
    seen: list[tuple[str, str, int]] = field(default_factory=list)
    """(method, path, status answered) of every request, faults and forwarded ones alike."""
    url: str = ""
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None

    async def start(self) -> FaultyProxy:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._session = aiohttp.ClientSession(auto_decompress=False)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None)  # asyncio.Server's (AbstractServer does not declare it)
        assert sockets
        port = sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def count(self, method: str, path: str) -> int:
        return sum(1 for m, p, _ in self.seen if m == method and re.fullmatch(path, p))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        for fault in self.faults:
            if fault.matches(request.method, request.path):
                fault.applied += 1
                status, headers, content = fault.answer(request, body)
                self.seen.append((request.method, request.path, status))
                response = web.Response(status=status, body=content, headers=headers)
                response.force_close()  # nginx closes after refusing a request it did not read
                return response
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _NOT_FORWARDED}
        async with self._session.request(
            request.method, self.upstream + request.path_qs, headers=headers, data=body or None,
            allow_redirects=False,
        ) as upstream:
            content = await upstream.read()
            answer_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _NOT_FORWARDED}
            self.seen.append((request.method, request.path, upstream.status))
            return web.Response(status=upstream.status, body=content if request.method != "HEAD" else None,
                                headers=answer_headers)
