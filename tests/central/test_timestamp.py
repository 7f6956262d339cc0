"""RFC 3161 time-stamps of checkpoints against a real local TSA over HTTP: tokens kept and verified,
a token over another head refused, a TSA that is down never holds up the log and is asked again."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from edge.central.timestamp import TimeStamper, TimeStampError, verify_token
from edge.central.verify import verify_central
from edge.custody.checkpoint_note import open_note, parse_checkpoint
from tests.central.conftest import CentralParts, FakeStation, enroll, make_central_parts
from tests.central.tsa import LocalTsa


@pytest.fixture
async def tsa() -> AsyncIterator[LocalTsa]:
    authority = LocalTsa()
    await authority.start()
    yield authority
    await authority.stop()


async def _register(parts: CentralParts, station: FakeStation, content: bytes) -> None:
    acquired = station.acquire(content)
    after = parts.index.ledger_head(station.station_id)[0]
    body = {"upload": parts.upload(station.station_id, content), "manifest": acquired.manifest,
            "ledger": station.segment(after)}
    await parts.registrar.register_item(parts.caller(station.station_id), station.station_id, body)


def _stamper(parts: CentralParts, tsa: LocalTsa, url: str | None = None) -> TimeStamper:
    from cryptography import x509

    return TimeStamper(parts.merkle, parts.signing_key, url or tsa.url,
                       [x509.load_pem_x509_certificate(tsa.root_pem())])


def _keep_roots(parts: CentralParts, tsa: LocalTsa) -> None:
    roots = parts.root / "identity" / "tsa-roots"
    roots.mkdir(parents=True, exist_ok=True)
    (roots / "root.pem").write_bytes(tsa.root_pem())


async def test_checkpoints_are_time_stamped_and_verified(tmp_path: Path, tsa: LocalTsa,
                                                         station: FakeStation) -> None:
    parts = make_central_parts(tmp_path / "central")
    enroll(parts.index, station)
    stamper = _stamper(parts, tsa)
    async with aiohttp.ClientSession() as session:
        await _register(parts, station, b"first")
        assert await stamper.stamp_newest(session)
        assert not await stamper.stamp_newest(session), "a stamped newest head is not stamped again"
        await _register(parts, station, b"second")
        assert await stamper.stamp_newest(session)
    rows = parts.sqlite_index.conn.execute(
        "SELECT tree_size, note, token FROM merkle_head_timestamps ORDER BY id").fetchall()
    assert [row[0] for row in rows] == [1, 2] and tsa.answered == 2
    for size, note, token in rows:
        text, _ = open_note(note, "central-test", parts.signing_key.public_key())
        assert parse_checkpoint(text).tree_size == size
        assert verify_token(token, note.encode(), stamper.roots).endswith("Z")
    # Control: the same token does not verify against another authority's root.
    from cryptography import x509

    stranger = x509.load_pem_x509_certificate(LocalTsa().root_pem())
    with pytest.raises(TimeStampError, match="does not verify"):
        verify_token(rows[0][2], rows[0][1].encode(), [stranger])
    _keep_roots(parts, tsa)
    parts.index.close()
    findings = verify_central(parts.root, central_public_key=parts.signing_key.public_key())
    assert findings.problems == [] and findings.checked["timestamps"] == 2


async def test_a_token_over_another_head_is_refused(
    tmp_path: Path, tsa: LocalTsa, station: FakeStation
) -> None:
    parts = make_central_parts(tmp_path / "central")
    enroll(parts.index, station)
    stamper = _stamper(parts, tsa)
    async with aiohttp.ClientSession() as session:
        for content in (b"one", b"two"):
            await _register(parts, station, content)
            assert await stamper.stamp_newest(session)
    (first_note, _first_token), (_second_note, second_token) = parts.sqlite_index.conn.execute(
        "SELECT note, token FROM merkle_head_timestamps ORDER BY id").fetchall()
    with pytest.raises(TimeStampError, match="does not verify"):
        verify_token(second_token, first_note.encode(), stamper.roots)
    _keep_roots(parts, tsa)
    parts.index.close()
    db = sqlite3.connect(parts.root / "index.db")
    for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        db.execute(f"DROP TRIGGER {name}")
    db.execute("UPDATE merkle_head_timestamps SET token = ? WHERE id = 1", (second_token,))
    db.commit()
    db.close()
    problems = verify_central(parts.root, central_public_key=parts.signing_key.public_key()).problems
    assert [p.where for p in problems] == ["time-stamp 1 (tree head size 1)"]
    assert "does not verify" in problems[0].what


async def test_a_tsa_that_is_down_never_holds_up_the_log(tmp_path: Path, tsa: LocalTsa,
                                                         station: FakeStation) -> None:
    parts = make_central_parts(tmp_path / "central")
    enroll(parts.index, station)
    stamper = _stamper(parts, tsa)
    await tsa.stop()
    async with aiohttp.ClientSession() as session:
        await _register(parts, station, b"while the TSA is down")
        assert parts.merkle.latest_tree_head() is not None, "the head is signed regardless"
        with pytest.raises(TimeStampError, match="cannot be reached"):
            await stamper.stamp_newest(session)
        _keep_roots(parts, tsa)
        findings = verify_central(parts.root, central_public_key=parts.signing_key.public_key())
        assert findings.problems == []
        assert any("has no time-stamp" in note for note in findings.notes)
        # Asked again once the TSA is back.
        await tsa.start()
        assert await stamper.stamp_newest(session)
    assert parts.sqlite_index.conn.execute("SELECT count(*) FROM merkle_head_timestamps").fetchone()[0] == 1
    parts.index.close()


async def test_the_central_stamps_in_the_background(
    tmp_path: Path, tsa: LocalTsa, station: FakeStation
) -> None:
    from edge.central.timestamp import timestamp_task

    parts = make_central_parts(tmp_path / "central")
    enroll(parts.index, station)
    context = timestamp_task(_stamper(parts, tsa), interval_s=0.05)(None)
    await context.__anext__()
    try:
        await _register(parts, station, b"stamped in the background")
        async with asyncio.timeout(10):
            while not parts.sqlite_index.conn.execute("SELECT 1 FROM merkle_head_timestamps").fetchone():
                await asyncio.sleep(0.02)
    finally:
        with pytest.raises(StopAsyncIteration):
            await context.__anext__()
    parts.index.close()


async def test_the_configured_tsa_is_wired_into_the_central(tmp_path: Path, tsa: LocalTsa) -> None:
    from pydantic import ValidationError

    from edge.central.config import CentralConfig
    from edge.central.embedded import EmbeddedCentral
    from edge.central.identity import init_central
    from edge.central.service import start_central

    root_file = tmp_path / "tsa-root.pem"
    root_file.write_bytes(tsa.root_pem())
    base = EmbeddedCentral.make_config(tmp_path / "central-store")
    with pytest.raises(ValidationError, match="tsa_root_cert"):
        CentralConfig.model_validate({**base.model_dump(), "log": {"tsa_url": tsa.url}})
    config = CentralConfig.model_validate(
        {**base.model_dump(),
         "log": {"tsa_url": tsa.url, "tsa_root_cert": str(root_file), "tsa_interval_s": 0.05}}
    )
    init_central(config)
    running = await start_central(config)
    try:
        with running.parts.index.transaction():
            running.parts.merkle.tree_head()  # the empty log's first head
        async with asyncio.timeout(10):
            while tsa.answered == 0:
                await asyncio.sleep(0.02)
    finally:
        await running.stop()
    assert list(config.layout.tsa_roots_dir.glob("*.pem")), "the TSA root is kept with the store"
    findings = verify_central(config.central.store_dir)
    assert findings.problems == [] and findings.checked.get("timestamps") == 1
