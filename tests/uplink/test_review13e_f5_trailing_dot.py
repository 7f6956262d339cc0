"""Review of issue 13 (blocking body sender), finding 5, LOW: a ``central_url`` naming the central by its
absolute name (a trailing dot, ``https://central.example.:8443``) works over aiohttp, which strips the dot
from the TLS server name, and fails every chunk over the blocking connections, which check the
certificate against ``central.example.`` (OpenSSL: a hostname mismatch). Fails closed, but HEAD and
creation succeed while every PATCH is an interruption, retried for ever.

This machine's resolver knows no absolute name, so the test stands in for DNS: ``localhost.`` resolves as
``localhost`` (what any resolver does with an absolute name). TLS, sockets and the server are real."""

from __future__ import annotations

import socket
from typing import Any

import aiohttp
import pytest

from edge.pki.tls import client_ssl_context
from edge.uplink.blocking_body import BlockingBodySender
from tests.mqtt.broker import TestPki
from tests.uplink.test_blocking_body import (
    STATION,
    ScriptedServer,
    answers_every_request,
    pki,  # noqa: F401  (the module's fixture)
    tls_server_context,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def absolute_names_resolve(monkeypatch: pytest.MonkeyPatch) -> None:
    resolve = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host.endswith(".") and len(host) > 1:
            host = host[:-1]
        return resolve(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.mark.parametrize("host", ["localhost", "localhost."], ids=["control", "absolute-name"])
async def test_an_absolute_central_name_is_checked_as_aiohttp_checks_it(
    pki: TestPki, absolute_names_resolve: None, host: str  # noqa: F811
) -> None:
    context = client_ssl_context(pki.client(STATION))
    async with (
        ScriptedServer(answers_every_request, tls=tls_server_context(pki)) as server,
        BlockingBodySender(ssl_context=context, max_connections=1) as sender,
    ):
        url = server.url(host)
        # The aiohttp path (HEAD, creation, the JSON API) with the same context reaches the central.
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session,
            session.patch(url, data=b"abc") as resp,
        ):
            assert resp.status == 204
        answer = await sender.send("PATCH", url, {}, b"abc", timeout_s=30.0)
        assert answer.status == 204
