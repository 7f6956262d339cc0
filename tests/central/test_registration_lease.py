"""A registration's lease on its upload ends with the registration: a registration that fails gives it back,
so the station's termination (DELETE) is not refused 423 "held by its registration" for the hour the lease
would run while nothing holds it (review rev13d, minor note). Replays and content mismatches, which hold no
lease, leave an upload another registration holds.

Controls: while a registration holds the lease, the termination is refused; the failure here is a real
one (the object store's shard path is a file).
"""

from __future__ import annotations

import pytest

from edge.central.objects import FileObjectStore
from edge.central.registration import RejectCode, Rejection
from edge.central.tus_store import TusUploadStore, UploadLeasedError
from tests.central.conftest import CentralParts, FakeStation, enroll


def _tus(parts: CentralParts) -> TusUploadStore:
    assert isinstance(parts.uploads, TusUploadStore)
    return parts.uploads


async def test_a_failed_registration_releases_its_lease(parts: CentralParts, station: FakeStation) -> None:
    enroll(parts.index, station)
    acquired = station.acquire(b"evidence the object store cannot take now")
    upload = parts.upload(station.station_id, acquired.content)
    assert isinstance(parts.objects, FileObjectStore)
    # The object's shard folder is a file: moving the content in fails (after the upload was claimed).
    parts.objects.path_of(acquired.sha256).parent.parent.write_bytes(b"in the way")
    body = {"upload": upload, "manifest": acquired.manifest, "ledger": station.segment(0)}
    with pytest.raises(Rejection) as caught:
        await parts.registrar.register_item(parts.caller(station.station_id), station.station_id, body)
    assert caught.value.code is RejectCode.STORE_DAMAGED
    assert parts.index.item(acquired.item) is None
    assert _tus(parts).terminate(upload) is True  # the station's DELETE: not held by anything


async def test_control_a_claimed_upload_cannot_be_terminated(
    parts: CentralParts, station: FakeStation
) -> None:
    enroll(parts.index, station)
    upload = parts.upload(station.station_id, b"claimed content")
    _tus(parts).complete_path(upload)  # a registration's claim, as registration makes it
    with pytest.raises(UploadLeasedError):
        _tus(parts).terminate(upload)
    assert _tus(parts).remove_unleased(upload) is False  # a replay's discard leaves it too
    _tus(parts).release_lease(upload)
    assert _tus(parts).terminate(upload) is True
