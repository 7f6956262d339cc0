"""The tus client sends the sha256-prefix digests recorded when the stored copy was verified at offload
(edge.ingest.prefix_digests) instead of hashing every byte again, against the central's real tus server,
which checks every chunk against its own running hash of the bytes it received.

Hashing is counted where the client makes its prefix hashers (``tus_client._prefix_hasher``): an upload
with digests hashes nothing; the controls, without them, hash every byte. A copy changed after offload
ends in ContentMismatch at the first refused chunk, not in a loop of refusals; a wrong recorded digest
ends in a good upload with the computed digest."""

from __future__ import annotations

import base64
import hashlib
import logging
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edge.central.tus_store import TusUploadStore
from edge.ingest.prefix_digests import DIGEST_BYTES, PrefixDigests, PrefixRecorder
from edge.uplink import tus_client
from edge.uplink.tus_client import PREFIX_SHA256, ContentMismatch, TusClient
from tests.uplink.test_tus_client import (  # noqa: F401 (fixtures, found by their names)
    CHUNK,
    Served,
    TcpProxy,
    central,
    evidence,
    make_client,
    proxy,
    session,
    store,
    stored,
    upload_id,
)

pytestmark = pytest.mark.timeout(60)


def recorded(data: bytes, step: int = CHUNK) -> PrefixDigests:
    recorder = PrefixRecorder(step)
    recorder.update(data)
    digests = recorder.finish()
    assert digests is not None
    return digests


@dataclass
class Hashing:
    """Bytes hashed through the client's prefix hashers, and the chunks it read (offset, size, header,
    whether the header was a recorded digest)."""

    bytes: int = 0
    chunks: list[tuple[int, int, str | None, bool]] = field(default_factory=list)
    checks: int = 0


class _Counted:
    def __init__(self, inner: Any, tally: Hashing) -> None:
        self.inner, self.tally = inner, tally

    def update(self, data: Any) -> None:
        self.tally.bytes += len(memoryview(data))
        self.inner.update(data)

    def copy(self) -> _Counted:
        return _Counted(self.inner.copy(), self.tally)

    def digest(self) -> bytes:
        return bytes(self.inner.digest())

    def hexdigest(self) -> str:
        return str(self.inner.hexdigest())


@pytest.fixture
def hashing(monkeypatch: pytest.MonkeyPatch) -> Iterator[Hashing]:
    tally = Hashing()
    monkeypatch.setattr(tus_client, "_prefix_hasher", lambda: _Counted(hashlib.sha256(), tally))
    real_read, real_check = tus_client._read_chunk, tus_client._check_recorded

    def read(*args: Any) -> tus_client._Chunk:
        chunk = real_read(*args)
        tally.chunks.append((chunk.offset, len(chunk.data), chunk.checksum_header, chunk.recorded))
        return chunk

    def check(*args: Any) -> Any:
        tally.checks += 1
        return real_check(*args)

    monkeypatch.setattr(tus_client, "_read_chunk", read)
    monkeypatch.setattr(tus_client, "_check_recorded", check)
    yield tally


def header(digest: bytes) -> str:
    return f"{PREFIX_SHA256} {base64.b64encode(digest).decode('ascii')}"


def prefix_client(http: aiohttp.ClientSession, origin: str, **kwargs: object) -> TusClient:
    return make_client(http, origin, checksum=PREFIX_SHA256, **kwargs)


@pytest.mark.parametrize("size", [1, CHUNK - 1, CHUNK, CHUNK * 7 // 2])
async def test_an_upload_with_recorded_digests_sends_them_and_hashes_nothing(
    tmp_path: Path, central: Served, store: TusUploadStore, session: aiohttp.ClientSession,  # noqa: F811
    hashing: Hashing, size: int,
) -> None:
    path, data = evidence(tmp_path, size, seed=21, tail=b"evidence box")
    digests = recorded(data)
    sealed = hashlib.sha256(data).hexdigest()
    client = prefix_client(session, central.origin)
    result = await client.upload(None, path, size, {}, expected_sha256=sealed, recorded=digests)
    assert stored(store, result.url) == data and result.checksum_retries == 0
    info = store.get(upload_id(result.url))
    assert info is not None and info.sha256 == sealed  # the central's own hash of what it received
    assert hashing.bytes == 0, "nothing hashed on the station"
    ends = [offset + n for offset, n, _, _ in hashing.chunks]
    assert [h for _, _, h, _ in hashing.chunks] == [header(digests.at(end) or b"") for end in ends]
    assert all(was_recorded for *_, was_recorded in hashing.chunks)

    # Control: the same upload without them hashes every byte once, and sends the same digests.
    hashing.chunks.clear()
    again = await client.upload(None, path, size, {}, expected_sha256=sealed)
    assert stored(store, again.url) == data
    assert hashing.bytes == size
    assert [h for _, _, h, _ in hashing.chunks] == [header(digests.at(end) or b"") for end in ends]
    assert not any(was_recorded for *_, was_recorded in hashing.chunks)


# The chunk whose byte flipped, and the chunks read: up to it and one read ahead (never sent), or the
# first alone, refused with its creation (creation-with-upload).
@pytest.mark.parametrize(("damaged", "read"), [(2, [0, CHUNK, CHUNK * 2, CHUNK * 3]), (0, [0])],
                         ids=["third-chunk", "first-chunk"])
async def test_a_copy_changed_after_offload_ends_in_content_mismatch_not_a_loop_of_refusals(
    tmp_path: Path, central: Served, store: TusUploadStore, session: aiohttp.ClientSession,  # noqa: F811
    hashing: Hashing, damaged: int, read: list[int],
) -> None:
    size = CHUNK * 4 + 100
    path, data = evidence(tmp_path, size, seed=22)
    digests, sealed = recorded(data), hashlib.sha256(data).hexdigest()
    rotten = bytearray(data)
    rotten[CHUNK * damaged + 7] ^= 0x01  # one byte of the stored copy flipped after it was verified
    path.write_bytes(bytes(rotten))
    client = prefix_client(session, central.origin)
    created: list[str] = []
    with pytest.raises(ContentMismatch) as caught:
        await client.upload(None, path, size, {}, on_created=created.append, expected_sha256=sealed,
                            recorded=digests)
    assert caught.value.found == hashlib.sha256(rotten).hexdigest()
    assert "changed since it was verified" in str(caught.value)
    assert f"refused the chunk at {CHUNK * damaged}" in str(caught.value)
    assert caught.value.refused_at == CHUNK * damaged  # how it was found, for the ledger
    assert hashing.checks == 1, "one refusal, checked once, no loop"
    assert [o for o, *_ in hashing.chunks] == read
    # The upload was terminated: the central holds nothing of it.
    assert caught.value.url is not None and created in ([], [caught.value.url])
    assert store.get(upload_id(caught.value.url)) is None and list(store.root.glob("*.part")) == []

    # Control: the untouched copy goes through with the same digests, nothing hashed.
    path.write_bytes(data)
    hashing.bytes = 0
    result = await client.upload(None, path, size, {}, expected_sha256=sealed, recorded=digests)
    assert stored(store, result.url) == data and hashing.bytes == 0


async def test_bytes_damaged_on_the_way_are_sent_again_with_the_recorded_digest(
    tmp_path: Path, proxy: TcpProxy, store: TusUploadStore, session: aiohttp.ClientSession,  # noqa: F811
    hashing: Hashing,
) -> None:
    size = CHUNK * 3
    path, data = evidence(tmp_path, size, seed=23)
    proxy.corrupt(data[CHUNK + 1000 : CHUNK + 1032])  # a byte inside the second chunk's body, once
    client = prefix_client(session, proxy.origin)
    result = await client.upload(None, path, size, {}, expected_sha256=hashlib.sha256(data).hexdigest(),
                                 recorded=recorded(data))
    assert proxy.corrupted == 1 and result.checksum_retries == 1
    assert result.bytes_sent == size + CHUNK  # the refused chunk went twice, nothing else
    assert stored(store, result.url) == data
    # The copy was checked once (it gives the recorded digest: the wire damaged it), then re-sent as is.
    assert hashing.checks == 1 and hashing.bytes == CHUNK * 2
    # (the third chunk was read ahead before the refusal came, and sent once)
    assert [(o, r) for o, _, _, r in hashing.chunks] == [(0, True), (CHUNK, True), (CHUNK * 2, True),
                                                         (CHUNK, True)]


async def test_a_wrong_recorded_digest_ends_in_a_good_upload_with_the_computed_digest(
    tmp_path: Path, central: Served, store: TusUploadStore, session: aiohttp.ClientSession,  # noqa: F811
    hashing: Hashing, caplog: pytest.LogCaptureFixture,
) -> None:
    size = CHUNK * 4 + 9
    path, data = evidence(tmp_path, size, seed=24)
    good = recorded(data)
    second = bytearray(good.digests)
    second[DIGEST_BYTES + 3] ^= 0x40  # the digest of bytes 0..2*CHUNK, damaged in the store
    wrong = PrefixDigests(good.step_bytes, good.size, bytes(second))
    sealed = hashlib.sha256(data).hexdigest()
    forgotten: list[bool] = []
    client = prefix_client(session, central.origin)
    caplog.set_level(logging.WARNING, "edge.uplink.tus_client")
    result = await client.upload(None, path, size, {}, expected_sha256=sealed, recorded=wrong,
                                 on_recorded_wrong=lambda: forgotten.append(True))
    assert stored(store, result.url) == data and result.checksum_retries == 1
    assert forgotten == [True] and "is wrong" in caplog.text
    assert hashing.checks == 1
    # From the refused chunk on, hashed as it is sent: the re-sent chunk carries the computed digest.
    resent = [(o, h, r) for o, _, h, r in hashing.chunks if o == CHUNK]
    assert resent == [(CHUNK, header(wrong.at(2 * CHUNK) or b""), True),
                      (CHUNK, header(hashlib.sha256(data[: 2 * CHUNK]).digest()), False)]
    # The chunk read ahead with a recorded digest was dropped: every later chunk went hashed.
    last_read = {o: r for o, _, _, r in hashing.chunks}
    assert [o for o, r in last_read.items() if o > CHUNK and r] == []
    # The check hashed the whole copy (it gave its sealed hash), then the upload from the refused chunk on.
    assert hashing.bytes == size + (size - CHUNK)

    # Control: the right digests go through at the first try, and nothing is forgotten.
    forgotten.clear()
    again = await client.upload(None, path, size, {}, expected_sha256=sealed, recorded=good,
                                on_recorded_wrong=lambda: forgotten.append(True))
    assert stored(store, again.url) == data and again.checksum_retries == 0 and forgotten == []


async def test_a_failure_dropping_wrong_digests_does_not_fail_the_upload(
    tmp_path: Path, central: Served, store: TusUploadStore, session: aiohttp.ClientSession,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    size = CHUNK * 3 + 5
    path, data = evidence(tmp_path, size, seed=25)
    good = recorded(data)
    second = bytearray(good.digests)
    second[DIGEST_BYTES] ^= 0x01
    wrong = PrefixDigests(good.step_bytes, good.size, bytes(second))
    sealed = hashlib.sha256(data).hexdigest()
    calls: list[bool] = []

    def locked() -> None:
        calls.append(True)
        raise sqlite3.OperationalError("database is locked")

    client = prefix_client(session, central.origin)
    caplog.set_level(logging.WARNING, "edge.uplink.tus_client")
    result = await client.upload(None, path, size, {}, expected_sha256=sealed, recorded=wrong,
                                 on_recorded_wrong=locked)
    assert calls == [True] and stored(store, result.url) == data and result.checksum_retries == 1
    assert "dropping its wrong prefix digests failed" in caplog.text and "database is locked" in caplog.text
    # Control: the callback was reached only because a digest was wrong; right ones never call it.
    again = await client.upload(None, path, size, {}, expected_sha256=sealed, recorded=good,
                                on_recorded_wrong=locked)
    assert stored(store, again.url) == data and calls == [True]


class _Stop(Exception):
    pass


@pytest.mark.parametrize("first_chunk", [CHUNK, CHUNK // 2], ids=["same-chunk", "odd-offset"])
async def test_a_resume_with_recorded_digests_hashes_nothing_before_its_offset(
    tmp_path: Path, central: Served, store: TusUploadStore, session: aiohttp.ClientSession,  # noqa: F811
    hashing: Hashing, first_chunk: int,
) -> None:
    """Resumed where the central stands; with a first attempt of half-size chunks that is not a multiple
    of the chunk size, and the first chunk then goes up to the next one (a recorded boundary)."""
    size = CHUNK * 5 + 77
    path, data = evidence(tmp_path, size, seed=25)
    digests, sealed = recorded(data, CHUNK // 2), hashlib.sha256(data).hexdigest()
    stop_at = first_chunk * 3

    def stop(offset: int) -> None:
        if offset >= stop_at:
            raise _Stop

    created: list[str] = []
    first = prefix_client(session, central.origin, chunk_size_bytes=first_chunk, creation_with_upload=False)
    with pytest.raises(_Stop):
        await first.upload(None, path, size, {}, progress=stop, on_created=created.append,
                           expected_sha256=sealed, recorded=digests)
    assert await first.offset(created[0]) == stop_at
    hashing.bytes, hashing.chunks = 0, []

    client = prefix_client(session, central.origin)
    result = await client.upload(created[0], path, size, {}, expected_sha256=sealed, recorded=digests)
    assert result.resumed_from == stop_at and stored(store, result.url) == data
    assert hashing.bytes == 0, "nothing before the offset hashed, nor after it"
    assert all(r for *_, r in hashing.chunks)
    assert all((o + n) % CHUNK == 0 or o + n == size for o, n, _, _ in hashing.chunks)

    # Control: the same resume without the digests hashes the bytes before the offset, then the rest.
    with pytest.raises(_Stop):
        await first.upload(None, path, size, {}, progress=stop, on_created=created.append,
                           expected_sha256=sealed)
    hashing.bytes = 0
    again = await client.upload(created[-1], path, size, {}, expected_sha256=sealed)
    assert again.resumed_from == stop_at and stored(store, again.url) == data
    assert hashing.bytes == size


async def test_digests_at_a_step_the_chunk_size_is_not_a_multiple_of_are_not_used(
    tmp_path: Path, central: Served, store: TusUploadStore, session: aiohttp.ClientSession,  # noqa: F811
    hashing: Hashing, caplog: pytest.LogCaptureFixture,
) -> None:
    """chunk_mb changed since the offload: the digests do not fall on its chunks' ends; hashed as before."""
    size = CHUNK * 4 + 3
    path, data = evidence(tmp_path, size, seed=26)
    sealed = hashlib.sha256(data).hexdigest()
    client = prefix_client(session, central.origin)
    caplog.set_level(logging.INFO, "edge.uplink.tus_client")
    result = await client.upload(None, path, size, {}, expected_sha256=sealed,
                                 recorded=recorded(data, CHUNK * 3 // 2))
    assert stored(store, result.url) == data and hashing.bytes == size
    assert "chunk_mb changed" in caplog.text
    # Control: a chunk size that is a multiple of the step uses them.
    hashing.bytes = 0
    again = await client.upload(None, path, size, {}, expected_sha256=sealed,
                                recorded=recorded(data, CHUNK // 4))
    assert stored(store, again.url) == data and hashing.bytes == 0


async def test_digests_that_do_not_end_at_the_sealed_hash_are_not_used(
    tmp_path: Path, central: Served, store: TusUploadStore, session: aiohttp.ClientSession,  # noqa: F811
    hashing: Hashing,
) -> None:
    size = CHUNK * 2 + 5
    path, data = evidence(tmp_path, size, seed=27)
    other = recorded(evidence(tmp_path, size, seed=28)[1])
    sealed = hashlib.sha256(data).hexdigest()
    client = prefix_client(session, central.origin)
    result = await client.upload(None, path, size, {}, expected_sha256=sealed, recorded=other)
    assert stored(store, result.url) == data and hashing.bytes == size and result.checksum_retries == 0
