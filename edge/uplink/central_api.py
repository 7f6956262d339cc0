"""The central receiver's registration and ledger endpoints, as the station calls them.

Content goes through tus (`edge.uplink.tus_client`); this module sends what makes content evidence at
the central: the signed manifest and the station's ledger segments, and brings back the receipt. Every
answer from the central is untrusted input: bodies are bounded, JSON is parsed strictly and the receipt
is verified by the caller before anything relies on it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import aiohttp

from edge.custody.canonical import canonical_json, parse_json
from edge.custody.errors import CanonicalJsonError
from edge.custody.ledger import GENESIS_PREV, Checkpoint, LedgerEntry

log = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 4 << 20
_TRANSIENT_STATUSES = {408, 425, 429, 500, 502, 503, 504}


class CentralError(Exception):
    """The central could not be used for this request."""


class CentralUnavailable(CentralError):
    """Down, unreachable, overloaded or timing out: retry later."""


class CentralRejected(CentralError):
    """The central refused the request and said why (`code`, `detail`)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"HTTP {status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail


class CentralApi:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        station_id: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout_s: float = 120.0,
    ) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.station_id = station_id
        self.headers = dict(headers or {})
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)

    def _station_url(self, tail: str) -> str:
        return f"{self.base_url}/v1/stations/{quote(self.station_id, safe='')}/{tail}"

    async def ledger_head(self) -> tuple[int, str]:
        """The last ledger entry of this station the central accepted: (0, genesis) when none."""
        doc = await self._request("GET", self._station_url("ledger/head"), None)
        seq, hash_hex = doc.get("seq"), doc.get("hash")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0 or not _is_hex64(hash_hex):
            raise CentralRejected(200, "bad_response", f"ledger head is malformed: {str(doc)[:200]}")
        assert isinstance(hash_hex, str)
        return seq, hash_hex if seq else GENESIS_PREV

    async def post_ledger(self, entries: Sequence[LedgerEntry], checkpoint: Checkpoint) -> tuple[int, str]:
        doc = await self._request("POST", self._station_url("ledger"), _segment(entries, checkpoint))
        seq, hash_hex = doc.get("seq"), doc.get("hash")
        if not isinstance(seq, int) or isinstance(seq, bool) or not _is_hex64(hash_hex):
            raise CentralRejected(200, "bad_response", f"ledger answer is malformed: {str(doc)[:200]}")
        assert isinstance(hash_hex, str)
        return seq, hash_hex

    async def register(
        self,
        upload_id: str,
        manifest: Mapping[str, Any],
        entries: Sequence[LedgerEntry],
        checkpoint: Checkpoint | None,
    ) -> dict[str, Any]:
        """Register an uploaded item; returns the receipt document (unverified)."""
        body: dict[str, Any] = {"upload": upload_id, "manifest": dict(manifest), "ledger": None}
        if entries:
            assert checkpoint is not None
            body["ledger"] = _segment(entries, checkpoint)
        doc = await self._request("POST", self._station_url("items"), body)
        receipt = doc.get("receipt")
        if not isinstance(receipt, dict):
            raise CentralRejected(200, "bad_response", "registration answer carries no receipt object")
        return receipt

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
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise CentralUnavailable(f"{method} {url}: {type(exc).__name__}: {exc}") from exc
        if len(raw) > MAX_RESPONSE_BYTES:
            raise CentralRejected(status, "bad_response", f"response larger than {MAX_RESPONSE_BYTES} bytes")
        doc = _json_object(raw)
        if status in _TRANSIENT_STATUSES:
            raise CentralUnavailable(f"{method} {url}: HTTP {status} {_detail(doc, raw)}")
        if status >= 300:
            code = doc.get("error") if isinstance(doc.get("error"), str) else f"http_{status}"
            raise CentralRejected(status, str(code)[:64], _detail(doc, raw))
        return doc


def _segment(entries: Sequence[LedgerEntry], checkpoint: Checkpoint) -> dict[str, Any]:
    return {"entries": [e.to_dict() for e in entries], "checkpoint": checkpoint.to_dict()}


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        doc = parse_json(raw) if raw else {}
    except (CanonicalJsonError, ValueError, UnicodeDecodeError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _detail(doc: Mapping[str, Any], raw: bytes) -> str:
    detail = doc.get("detail")
    if isinstance(detail, str):
        return detail[:1000]
    return raw[:200].decode("utf-8", "replace")


def _is_hex64(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
