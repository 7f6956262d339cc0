"""RFC 3161 time-stamps of the log's checkpoints, when a time-stamping authority (TSA) is configured.

A signed tree head says when the central signed it, by the central's own clock. A time-stamp token from
an independent TSA proves that the checkpoint existed no later than the TSA's time: the central cannot
back-date a log it rewrote. Every ``tsa_interval_s`` the newest tree head without a token is taken as a
C2SP checkpoint note (:mod:`edge.custody.checkpoint_note`, signed by the central) and its bytes are
time-stamped (SHA-256 message imprint, a nonce, the TSA's certificate requested). The response is
verified with ``rfc3161-client`` against the configured TSA root before the token is kept, beside the
head, with the note it covers (``merkle_head_timestamps``).

The TSA being down never holds up the log: heads are signed as always, the missing token is logged and
asked for again at the next interval, and `edge verify` reports which heads have none. The TSA roots
are copied into ``identity/tsa-roots/`` so that the store's tokens can be checked later.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from rfc3161_client import (
    HashAlgorithm,
    TimestampRequestBuilder,
    VerificationError,
    VerifierBuilder,
    decode_timestamp_response,
)

from edge.central.background import background_task
from edge.central.log import MerkleLog
from edge.custody.checkpoint_note import checkpoint_text, sign_note
from edge.custody.keys import StationKey
from edge.custody.ledger import station_time_now

__all__ = ["TimeStampError", "TimeStamper", "load_tsa_roots", "timestamp_task", "verify_token"]

log = logging.getLogger(__name__)

_MAX_RESPONSE_BYTES = 64 * 1024


class TimeStampError(Exception):
    """The TSA could not be used, or its answer does not verify."""


def load_tsa_roots(path: Path) -> list[x509.Certificate]:
    """Every certificate in a PEM file (the TSA roots to trust); raises :class:`TimeStampError`."""
    try:
        certificates = x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise TimeStampError(f"cannot read the TSA root certificates {path}: {exc}") from None
    if not certificates:
        raise TimeStampError(f"{path} holds no certificate")
    return certificates


def keep_tsa_roots(roots: list[x509.Certificate], roots_dir: Path) -> None:
    """Copy the TSA roots into the store (one file per certificate, never replaced)."""
    roots_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    for certificate in roots:
        pem = certificate.public_bytes(Encoding.PEM)
        target = roots_dir / f"{hashlib.sha256(certificate.public_bytes(Encoding.DER)).hexdigest()}.pem"
        if not target.exists():
            target.write_bytes(pem)


def verify_token(token: bytes, message: bytes, roots: list[x509.Certificate]) -> str:
    """The TSA's time (ISO 8601 UTC) of a token over ``message``; raises :class:`TimeStampError`."""
    try:
        response = decode_timestamp_response(token)
    except Exception as exc:  # the parser raises several kinds for hostile bytes
        raise TimeStampError(f"not an RFC 3161 time-stamp response: {exc}") from None
    last: Exception | None = None
    for root in roots:
        try:
            VerifierBuilder().add_root_certificate(root).build().verify_message(response, message)
        except VerificationError as exc:
            last = exc
            continue
        return response.tst_info.gen_time.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    raise TimeStampError(f"the time-stamp does not verify: {last}")


@dataclass
class TimeStamper:
    """Asks the TSA for a token over the newest unstamped checkpoint; keeps the verified token."""

    merkle: MerkleLog
    key: StationKey
    tsa_url: str
    roots: list[x509.Certificate]
    timeout_s: float = 10.0
    clock: Callable[[], str] = station_time_now

    async def stamp_newest(self, session: aiohttp.ClientSession) -> bool:
        """Time-stamp the newest tree head if it has no token yet; True when a token was kept."""
        newest = await self.merkle.unit.run_reads(self.merkle.store.newest_head_unstamped)
        if newest is None:
            return False  # the newest head is stamped (older unstamped ones are covered by it)
        head_id, head = newest
        note = sign_note(checkpoint_text(head.origin, head.tree_size, head.root), head.origin, self.key)
        message = note.encode("utf-8")
        request = TimestampRequestBuilder().data(message).hash_algorithm(HashAlgorithm.SHA256).build()
        token = await self._ask(session, request.as_bytes())
        try:
            response = decode_timestamp_response(token)
        except Exception as exc:
            raise TimeStampError(f"the TSA's answer is not a time-stamp response: {exc}") from None
        builder = VerifierBuilder.from_request(request)
        for root in self.roots:
            builder = builder.add_root_certificate(root)
        try:
            builder.build().verify_message(response, message)
        except VerificationError as exc:
            raise TimeStampError(f"the TSA's time-stamp does not verify: {exc}") from None
        gen_time = response.tst_info.gen_time.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        def keep() -> None:
            with self.merkle.unit.transaction():
                self.merkle.store.append_timestamp(head_id, head, note, token, gen_time, self.clock())

        await self.merkle.unit.run_writes(keep)
        log.info("tree head %d (size %d) time-stamped by %s at %s", head_id, head.tree_size, self.tsa_url,
                 gen_time)
        return True

    async def _ask(self, session: aiohttp.ClientSession, query: bytes) -> bytes:
        try:
            async with session.post(
                self.tsa_url, data=query, headers={"Content-Type": "application/timestamp-query"},
                timeout=aiohttp.ClientTimeout(total=self.timeout_s), allow_redirects=False,
            ) as response:
                body = await response.content.read(_MAX_RESPONSE_BYTES + 1)
                if response.status != 200:
                    raise TimeStampError(f"the TSA at {self.tsa_url} answered HTTP {response.status}")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise TimeStampError(f"the TSA at {self.tsa_url} cannot be reached: {exc}") from None
        if len(body) > _MAX_RESPONSE_BYTES:
            raise TimeStampError(f"the TSA's answer is larger than {_MAX_RESPONSE_BYTES} bytes")
        return body

    async def run(self, interval_s: float) -> None:
        """Stamp the newest head every ``interval_s`` until cancelled; failures are logged and retried."""
        failures: tuple[type[Exception], ...] = (TimeStampError, *self.merkle.unit.errors)
        async with aiohttp.ClientSession() as session:
            while True:
                try:
                    await self.stamp_newest(session)
                except failures as exc:
                    log.warning("checkpoint not time-stamped (asked again in %.0f s): %s", interval_s, exc)
                await asyncio.sleep(interval_s)


def timestamp_task(stamper: TimeStamper, interval_s: float) -> Callable[[object], AsyncIterator[None]]:
    """An aiohttp cleanup context running the time-stamper beside the application."""

    return background_task("tsa-timestamper", lambda: stamper.run(interval_s))
