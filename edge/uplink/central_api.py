"""The central receiver's registration and ledger endpoints over HTTPS, as the station calls them.

Part of the tus transport (`edge.uplink.tus_transport`). Content goes through tus
(`edge.uplink.tus_client`); this module sends what makes content evidence at the central: the signed
manifest and the station's ledger segments, and brings back the receipt, the central's witnessed head of
our ledger and its log's tree heads and consistency proofs. The calls and the checks of their answers are
the MQTT transport's too (`edge.uplink.central_calls`); this module maps them to HTTP requests. Every
answer from the central is untrusted input: bodies are bounded, JSON is parsed strictly and every signed
document is verified by the caller before anything relies on it.

A refusal here is only what an answer *says*: a proxy in front of the central, or a broken link, can
answer with any status and any body. So :class:`CentralRejected` carries the body's code and the signed
refusal it came with, if any (unverified); the service decides, and takes nothing as final for an item
unless that refusal verifies with the pinned central key (:mod:`edge.custody.refusal`). ``Retry-After``
on a transient answer is passed on as ``retry_after_s``.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp

from edge.config.station import UplinkSection
from edge.custody.canonical import canonical_json
from edge.uplink.central_calls import (
    CENTRAL_REQUEST_ID_HEADER,
    LEDGER_FORMAT_2,
    SEGMENT_CHECKPOINTS,
    CentralCalls,
    CentralError,
    CentralOp,
    CentralRejected,
    CentralUnavailable,
    check_answer,
    json_object,
)
from edge.uplink.policy import parse_retry_after

__all__ = [
    "LEDGER_FORMAT_2",
    "MAX_RESPONSE_BYTES",
    "SEGMENT_CHECKPOINTS",
    "CentralApi",
    "CentralError",
    "CentralRejected",
    "CentralSession",
    "CentralUnavailable",
    "central_session",
]

log = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 4 << 20


class CentralApi(CentralCalls):
    """The calls of :class:`CentralCalls` as HTTPS requests to ``base_url``."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        station_id: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout_s: float = 120.0,
    ) -> None:
        super().__init__(base_url)
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.station_id = station_id
        self.headers = dict(headers or {})
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)

    def _station_url(self, tail: str) -> str:
        return f"{self.base_url}/v1/stations/{quote(self.station_id, safe='')}/{tail}"

    async def call(self, op: CentralOp, body: Mapping[str, Any]) -> dict[str, Any]:
        if op is CentralOp.LEDGER_HEAD:
            return await self._request("GET", self._station_url("ledger/head"), None)
        if op is CentralOp.LEDGER_PUSH:
            return await self._request("POST", self._station_url("ledger"), body)
        if op is CentralOp.LEDGER_PAGE:
            query = f"after={int(body['after'])}&limit={int(body['limit'])}"
            return await self._request("GET", self._station_url(f"ledger?{query}"), None)
        if op is CentralOp.REGISTER:
            return await self._request("POST", self._station_url("items"), body)
        if op is CentralOp.TREE_HEAD:
            return await self._request("GET", f"{self.base_url}/v1/log/tree-head", None)
        if op is CentralOp.CONSISTENCY:
            query = f"first={int(body['first'])}&second={int(body['second'])}"
            return await self._request("GET", f"{self.base_url}/v1/log/consistency?{query}", None)
        if op is CentralOp.OFFICERS:
            return await self._request("GET", self._station_url(f"officers?have={int(body['have'])}"), None)
        if op is CentralOp.FLEET_REPORT:
            return await self._request("POST", self._station_url("fleet"), body)
        raise ValueError(f"the central's HTTP API has no call {op!r}")

    async def _request(self, method: str, url: str, body: Mapping[str, Any] | None) -> dict[str, Any]:
        data = None if body is None else canonical_json(body)
        headers = {**self.headers, "Content-Type": "application/json"} if data is not None else self.headers
        try:
            async with self.session.request(
                method, url, data=data, headers=headers, timeout=self.timeout, allow_redirects=False
            ) as response:
                received = bytearray()
                while len(received) <= MAX_RESPONSE_BYTES:  # read(n) returns what is buffered: loop
                    piece = await response.content.read(64 * 1024)
                    if not piece:
                        break
                    received += piece
                raw = bytes(received)
                status = response.status
                retry_after = response.headers.get("Retry-After")
                request_id = response.headers.get(CENTRAL_REQUEST_ID_HEADER)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise CentralUnavailable(f"{method} {url}: {type(exc).__name__}: {exc}") from exc
        if len(raw) > MAX_RESPONSE_BYTES:
            raise CentralRejected(status, "bad_response", f"response larger than {MAX_RESPONSE_BYTES} bytes")
        return check_answer(status, json_object(raw), raw, what=f"{method} {url}",
                            retry_after_s=parse_retry_after(retry_after, time.time()), request_id=request_id)


@dataclass(frozen=True, slots=True)
class CentralSession:
    http: aiohttp.ClientSession
    headers: dict[str, str] = field(repr=False)
    """What every request carries (the development mode's station header)."""
    tls: ssl.SSLContext | None
    """The context the session's connector uses (mutual TLS with the enrollment bundle); None in the
    development mode's plain HTTP. Other connections to the central (the tus client's blocking body
    connections) use this same object."""


@contextlib.asynccontextmanager
async def central_session(
    uplink: UplinkSection, station_id: str, *, connections: int = 4
) -> AsyncIterator[CentralSession]:
    """An HTTP session to the central as ``uplink`` configures it (mutual TLS with the enrollment bundle,
    or the development mode's plain HTTP), the headers every request carries and its TLS context."""
    context: ssl.SSLContext | None = None
    headers: dict[str, str] = {}
    if uplink.insecure_plain_http:
        log.warning("uplink uses PLAIN HTTP (insecure_plain_http): development only, not for evidence")
        headers = {"X-Edge-Station": station_id}
    else:
        from edge.pki.tls import client_ssl_context  # the enrollment bundle's format

        assert uplink.identity_dir is not None  # config validation guarantees it
        context = client_ssl_context(uplink.identity_dir)
    connector = aiohttp.TCPConnector(ssl=context if context is not None else False, limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield CentralSession(session, headers, context)
