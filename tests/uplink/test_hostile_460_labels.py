"""Review (revul): a hostile central answering 460 to chunks of an intact stored copy sent with its
recorded digests: the station never concludes its copy changed and keeps its digests."""

from __future__ import annotations

import hashlib
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from edge.uplink.tus_client import PREFIX_SHA256, ChecksumRejected, ContentMismatch
from tests.uplink.test_tus_client import (  # noqa: F401
    CHUNK,
    HostileCentral,
    Served,
    evidence,
    hostile,
    make_client,
    session,
    upload_id,
)
from tests.uplink.test_tus_prefix_digests import recorded

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("refuse_from", [0, 1, 2], ids=["first", "middle", "last"])
@pytest.mark.parametrize("changed", [False, True], ids=["intact", "control-changed"])
async def test_refusals_of_an_intact_copy_never_label_it_changed(
    tmp_path: Path, hostile: tuple[HostileCentral, Served], session: aiohttp.ClientSession,  # noqa: F811
    refuse_from: int, changed: bool,
) -> None:
    fake, served = hostile
    path, data = evidence(tmp_path, CHUNK * 2 + 5, seed=3, tail=b"box")
    digests = recorded(data)
    sealed = hashlib.sha256(data).hexdigest()
    if changed:  # control: the copy really changed in the refused chunk
        raw = bytearray(path.read_bytes())
        raw[CHUNK * refuse_from + 1] ^= 1
        path.write_bytes(bytes(raw))

    async def patch(request: web.Request) -> web.StreamResponse:
        upload = fake.uploads[request.match_info["id"]]
        body = await request.read()
        if int(request.headers["Upload-Offset"]) >= CHUNK * refuse_from:
            return web.Response(status=460)
        upload.data += body
        return web.Response(status=204, headers={"Tus-Resumable": "1.0.0",
                                                 "Upload-Offset": str(len(upload.data))})

    async def post(request: web.Request) -> web.StreamResponse:
        if refuse_from == 0 and request.headers.get("Content-Length", "0") != "0":
            await request.read()
            return web.Response(status=460)
        return await fake.default_post(request)

    fake.patch, fake.post = patch, post
    forgotten: list[bool] = []
    client = make_client(session, served.origin, checksum=PREFIX_SHA256, checksum_attempts=2)
    with pytest.raises((ChecksumRejected, ContentMismatch)) as caught:
        await client.upload(None, path, len(data), {}, expected_sha256=sealed, recorded=digests,
                            on_recorded_wrong=lambda: forgotten.append(True))
    if changed:
        assert isinstance(caught.value, ContentMismatch) and caught.value.refused_at == CHUNK * refuse_from
    else:
        assert isinstance(caught.value, ChecksumRejected), "an intact copy was called changed"
    assert forgotten == []
