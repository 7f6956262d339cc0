"""Registration over both transports: "mqtt:<file id>" names the calling station's MQTT transfer (and only
its own), every other upload id a tus upload; one Registrar, one object store, one Merkle log."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from edge.central.mqtt_ingest_store import MqttIngestStore
from edge.central.registration import Registrar, Rejection, upload_source_key
from edge.central.upload_sources import CombinedUploadSource
from edge.custody.receipt import verify_receipt
from edge.mqtt.filetransfer import FileMeta, FinCommand, InitCommand, Mode, SegmentCommand, transfer_upload_id
from tests.central.conftest import Acquired, CentralParts, FakeStation, enroll


def _send_over_mqtt(store: MqttIngestStore, station: str, file_id: str, data: bytes) -> None:
    meta = FileMeta(name="a.mp4", size=len(data), checksum=hashlib.sha256(data).hexdigest())
    assert store.handle(station, InitCommand(file_id, Mode.ASYNC).topic, meta.to_payload()).ok
    for offset in range(0, len(data), 4096):
        chunk = data[offset:offset + 4096]
        command = SegmentCommand(file_id, offset, hashlib.sha256(chunk).hexdigest(), Mode.ASYNC)
        assert store.handle(station, command.topic, chunk).ok
    fin = FinCommand(file_id, len(data), hashlib.sha256(data).hexdigest(), Mode.ASYNC)
    assert store.handle(station, fin.topic, b"").ok


@pytest.fixture
def combined(parts: CentralParts, tmp_path: Path) -> tuple[Registrar, MqttIngestStore]:
    transfers = MqttIngestStore(tmp_path / "mqtt-transfers", max_size_bytes=1 << 30, reserve_bytes=0)
    source = CombinedUploadSource(parts.uploads, transfers)
    registrar = Registrar(parts.index, parts.objects, parts.merkle, source, signing_key=parts.signing_key,
                          central_id="central-test")
    return registrar, transfers


def _body(station: FakeStation, acquired: Acquired, upload: str) -> dict[str, object]:
    return {"upload": upload, "manifest": acquired.manifest, "ledger": station.segment(0)}


async def test_one_registrar_registers_an_mqtt_transfer_and_a_tus_upload_into_one_log(
    parts: CentralParts, combined: tuple[Registrar, MqttIngestStore], station: FakeStation
) -> None:
    registrar, transfers = combined
    enroll(parts.index, station)
    over_mqtt = station.acquire(b"sent over mqtt " * 3000)
    file_id = f"{over_mqtt.item}.0a1b2c3d"
    _send_over_mqtt(transfers, station.station_id, file_id, over_mqtt.content)
    first = await registrar.register_item(parts.caller(station.station_id), station.station_id,
                                          _body(station, over_mqtt, f"mqtt:{file_id}"))
    assert verify_receipt(first.receipt.to_dict(), parts.signing_key.public_key(),
                          expected_item=over_mqtt.item, expected_sha256=over_mqtt.sha256,
                          expected_station=station.station_id) == []
    assert transfers.get(transfer_upload_id(station.station_id, file_id)) is None  # taken, as tus uploads are
    over_http = station.acquire(b"sent over tus " * 3000)
    tus_id = parts.upload(station.station_id, over_http.content)
    second = await registrar.register_item(parts.caller(station.station_id), station.station_id,
                                           _body(station, over_http, tus_id))
    assert (first.receipt.leaf_index, second.receipt.leaf_index) == (0, 1)
    for acquired in (over_mqtt, over_http):
        assert parts.file_objects.path_of(acquired.sha256).read_bytes() == acquired.content


async def test_a_station_cannot_register_another_stations_mqtt_transfer(
    parts: CentralParts, combined: tuple[Registrar, MqttIngestStore], station: FakeStation,
    other_station: FakeStation,
) -> None:
    registrar, transfers = combined
    enroll(parts.index, station)
    enroll(parts.index, other_station)
    theirs = other_station.acquire(b"the other station's recording " * 2000)
    file_id = f"{theirs.item}.00000001"
    _send_over_mqtt(transfers, other_station.station_id, file_id, theirs.content)
    # Our own item, naming the other station's transfer: it is not ours, so it does not exist for us.
    ours = station.acquire(theirs.content)
    with pytest.raises(Rejection) as caught:
        await registrar.register_item(parts.caller(station.station_id), station.station_id,
                                      _body(station, ours, f"mqtt:{file_id}"))
    assert caught.value.code == "upload_not_found"
    held = transfers.get(transfer_upload_id(other_station.station_id, file_id))
    assert held is not None and held.offset == held.length  # untouched, still theirs to register
    # Control: the owner registers it.
    done = await registrar.register_item(parts.caller(other_station.station_id), other_station.station_id,
                                         _body(other_station, theirs, f"mqtt:{file_id}"))
    assert done.replay is False


@pytest.mark.parametrize(
    "upload", ["mqtt:", "mqtt:.hidden", "mqtt:a/b", "mqtt:" + "x" * 129, "MQTT:abc", "abc"]
)
async def test_malformed_upload_names_are_bad_requests(
    parts: CentralParts, combined: tuple[Registrar, MqttIngestStore], station: FakeStation, upload: str
) -> None:
    registrar, _ = combined
    enroll(parts.index, station)
    acquired = station.acquire(b"x" * 100)
    with pytest.raises(Rejection) as caught:
        await registrar.register_item(parts.caller(station.station_id), station.station_id,
                                      _body(station, acquired, upload))
    assert caught.value.code == "bad_request" and "mqtt:<file id>" in caught.value.detail


def test_upload_source_keys_carry_the_calling_station() -> None:
    assert upload_source_key("st-1", "0123456789abcdef0123456789abcdef") == "0123456789abcdef0123456789abcdef"
    assert upload_source_key("st-1", "mqtt:item.0a1b2c3d") == "mqtt:st-1/item.0a1b2c3d"
    assert upload_source_key("st-2", "mqtt:item.0a1b2c3d") == "mqtt:st-2/item.0a1b2c3d"
    assert upload_source_key("st-1", "mqtt:../etc") is None


async def test_without_an_mqtt_receiver_mqtt_uploads_are_unknown(
    parts: CentralParts, station: FakeStation
) -> None:
    source = CombinedUploadSource(parts.uploads, None)
    registrar = Registrar(parts.index, parts.objects, parts.merkle, source, signing_key=parts.signing_key,
                          central_id="central-test")
    enroll(parts.index, station)
    acquired = station.acquire(b"y" * 100)
    with pytest.raises(Rejection) as caught:
        await registrar.register_item(parts.caller(station.station_id), station.station_id,
                                      _body(station, acquired, "mqtt:abc.12345678"))
    assert caught.value.code == "upload_not_found"
