"""The transport seam (issue 7, 3): `[uplink] transport` chooses the wire, and the uplink's core (spool,
backoff, breaker, receipts, witness checks, signed refusals, Retry-After) works the same over any wire.

The second wire is `tests.uplink.line_wire`: framed JSON over plain TCP, segment by segment, to a real
receiver built from the real central's index, object store, Merkle log and registrar. It shares nothing
with tus or HTTP, so every behaviour below that holds over it belongs to the core.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from edge.central.embedded import free_port
from edge.central.service import RunningCentral, start_central
from edge.central.verify import verify_central_store
from edge.cli import main
from edge.config.station import StationConfig, TransportName
from edge.custody.keys import StationKey
from edge.custody.refusal import verify_refusal
from edge.ingest.pipeline import IngestOutcome, IngestPipeline, IngestSettings
from edge.ingest.store import StationStore
from edge.sources.local import LocalDirectory
from edge.uplink.service import UplinkService
from edge.uplink.spool import Spool
from edge.uplink.transports import TRANSPORTS, transport_for
from edge.uplink.tus_transport import TusTransport
from edge.verify.station import verify_store
from simulators.recorder.media import make_jpg, make_mp4
from tests.station.harness import eventually
from tests.uplink.line_wire import Fault, LineReceiver, LineTransport
from tests.uplink.test_refusals import CASE, central_config, drain, uplink_running
from tests.uplink.test_refusals import make_rig as make_http_rig

STATION = "TEST-STATION"
SEGMENT_BYTES = 64 << 10
RETRY = {"backoff_base_s": 0.05, "backoff_max_s": 0.2, "breaker_failures": 2, "breaker_open_s": 0.2,
         "request_timeout_s": 10}


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("seam-media")
    make_mp4(root / "clip.mp4", size_bytes=600_000, seed=31)
    make_jpg(root / "scene.jpg", seed=32)
    return root


@dataclass
class Rig:
    tmp: Path
    store: StationStore
    central: RunningCentral
    central_key: StationKey
    receiver: LineReceiver
    port: int
    items: dict[str, str]  # original name -> item id

    def service(self, **uplink: Any) -> UplinkService:
        """An uplink whose configuration names tus and whose transport is the line wire instead: the
        core under test, with no HTTP anywhere on its path."""
        config = StationConfig.model_validate({
            "station": {"id": STATION, "store_dir": str(self.tmp / "store")},
            "usb": {"mount_root": str(self.tmp / "media")},
            "uplink": {"central_url": "http://127.0.0.1:9", "insecure_plain_http": True,
                       "central_signing_key": str(self.tmp / "central-signing.pub"), **RETRY, **uplink},
        })
        wire = LineTransport("127.0.0.1", self.port, STATION, segment_bytes=SEGMENT_BYTES)
        return UplinkService(config, self.store, transport=wire)

    def states(self) -> dict[str, str]:
        rows = self.store.conn.execute("SELECT item, state FROM uploads").fetchall()
        by_item = {row["item"]: row["state"] for row in rows}
        return {name: by_item.get(item, "-") for name, item in self.items.items()}

    def ledger(self, type_: str) -> list[tuple[str | None, dict[str, Any]]]:
        return [(e.item, e.data) for e in self.store.ledger.entries() if e.type == type_]


@contextlib.asynccontextmanager
async def make_rig(tmp_path: Path, media: Path, *, listening: bool = True) -> AsyncIterator[Rig]:
    drop = tmp_path / "drop"
    shutil.copytree(media, drop)
    store = StationStore(tmp_path / "store", STATION)
    source = LocalDirectory(drop, label="room-2", station_id=STATION, case=CASE, collector_no="110002")
    run = await IngestPipeline(store, IngestSettings(min_free_bytes=0)).ingest(source, source.listing().items)
    assert run.outcome is IngestOutcome.DONE and len(run.sealed) == 2
    items = {row["name"]: row["item"] for row in store.conn.execute(
        "SELECT item, json_extract(manifest, '$.original.name') AS name FROM items")}
    central_key = StationKey.generate()
    central = await start_central(central_config(tmp_path / "central-store"), signing_key=central_key)
    central.parts.index.enroll_station(STATION, store.key.public_key_b64, "0" * 64)
    (tmp_path / "central-signing.pub").write_bytes(central_key.public_pem())
    port = free_port()
    receiver = LineReceiver(central.parts, STATION, tmp_path / "line")
    if listening:
        await receiver.start(port)
    rig = Rig(tmp_path, store, central, central_key, receiver, port, items)
    try:
        yield rig
    finally:
        await receiver.stop()
        await central.stop()
        store.close()


def receipted_and_provable(rig: Rig) -> None:
    assert set(rig.states().values()) == {"receipted"}, rig.states()
    receipts = rig.ledger("receipt")
    assert sorted(str(item) for item, _ in receipts) == sorted(rig.items.values())
    assert all(data["verified"] is True for _, data in receipts)
    report = verify_store(rig.tmp / "store", central_key=rig.central_key.public_key())
    assert report.ok, report.problems


# -- configuration chooses the transport ----------------------------------------------------------------


def station_config(tmp_path: Path, transport: str | None) -> StationConfig:
    uplink: dict[str, Any] = {"central_url": "http://127.0.0.1:9", "insecure_plain_http": True,
                              "central_signing_key": str(tmp_path / "central.pub")}
    if transport is not None:
        uplink["transport"] = transport
    doc: dict[str, Any] = {
        "station": {"id": STATION, "store_dir": str(tmp_path / "store")},
        "usb": {"mount_root": str(tmp_path / "media")},
        "uplink": uplink,
    }
    if transport == "mqtt":  # the broker it goes through (nothing connects here)
        doc["mqtt"] = {"broker_url": "mqtts://127.0.0.1:9", "username": STATION,
                       "password": "env:NO_SUCH_VAR", "ca_file": str(tmp_path / "ca.crt")}
    return StationConfig.model_validate(doc)


@pytest.mark.parametrize("transport", ["tus", None])
def test_the_configured_transport_is_the_one_the_uplink_speaks(tmp_path: Path, transport: str | None) -> None:
    """`transport = "tus"` (and the default) gives the uplink the tus transport, through the registry."""
    (tmp_path / "central.pub").write_bytes(StationKey.generate().public_pem())
    store = StationStore(tmp_path / "store", STATION)
    try:
        service = UplinkService(station_config(tmp_path, transport), store)
        assert isinstance(service.transport, TusTransport) and service.transport.name == "tus"
        assert "transport='tus'" in repr(service)
    finally:
        store.close()


def test_every_configurable_transport_has_a_factory_that_makes_it(tmp_path: Path) -> None:
    assert set(TRANSPORTS) == set(TransportName)
    for name in TransportName:
        config = station_config(tmp_path, str(name))
        assert transport_for(config, None).name == name


def test_an_unknown_transport_is_a_config_error_naming_the_known_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ValidationError, match=r"uplink\.transport[\s\S]*'tus'[\s\S]*'mqtt'"):
        station_config(tmp_path, "pigeon")
    config = station_config(tmp_path, "tus")
    config = config.model_copy(update={"uplink": config.uplink.model_copy(update={"transport": "pigeon"})})
    with pytest.raises(ValueError, match=r"'pigeon' is not one of: mqtt, tus"):
        transport_for(config, None)  # the registry refuses too, whatever gets past the model

    (tmp_path / "central.pub").write_bytes(StationKey.generate().public_pem())
    text = (
        '[station]\nid = "S1"\nstore_dir = "store"\n[usb]\nmount_root = "media"\n[uplink]\n'
        'central_url = "http://127.0.0.1:9"\ninsecure_plain_http = true\n'
        f'central_signing_key = "{tmp_path / "central.pub"}"\ntransport = "{{}}"\n'
    )
    bad, good = tmp_path / "bad.toml", tmp_path / "good.toml"
    bad.write_text(text.format("pigeon"))
    good.write_text(text.format("tus"))
    assert main(["check-config", str(bad)]) == 78
    err = capsys.readouterr().err
    assert "uplink.transport" in err and "'tus'" in err and str(bad) in err
    assert main(["run", "--config", str(bad)]) == 78
    assert "uplink.transport" in capsys.readouterr().err
    # Control: the same file naming a known transport is accepted.
    assert main(["check-config", str(good)]) == 0


# -- the core over a second wire -------------------------------------------------------------------------


async def test_the_core_drains_over_a_second_wire_and_resumes_where_the_receiver_holds_it(
    tmp_path: Path, media: Path
) -> None:
    async with make_rig(tmp_path, media) as rig:
        # The fourth segment's connection ends without an acknowledgement: the core backs off and the
        # transfer resumes at the receiver's offset, not from zero.
        rig.receiver.faults["segment"].extend([Fault("pass")] * 3 + [Fault("drop")])
        service = rig.service()
        async with uplink_running(service):
            assert await service.wait_drained(60), rig.states()
        receipted_and_provable(rig)
        assert service.stats.resumed == 1 and rig.receiver.count("offset") == 1
        total = sum((rig.tmp / "drop" / name).stat().st_size for name in rig.items)
        # The resumed transfer sent exactly what the receiver did not hold (the dropped segment was
        # stored): from the receiver's offset, not from zero and not from the last acknowledgement.
        held = [answer["ok"]["offset"] for op, answer in rig.receiver.answers if op == "offset"]
        assert len(held) == 1 and held[0] > 0
        assert service.stats.bytes_sent == total - held[0]
        assert rig.receiver.count("register") == 2
    central_key = rig.central_key.public_key()
    assert verify_central_store(rig.tmp / "central-store", central_public_key=central_key) == []


async def test_a_receiver_that_is_down_is_retried_and_the_breaker_spaces_the_probes(
    tmp_path: Path, media: Path
) -> None:
    """Connection refused is a wire failure (retry soon), never a local store problem (the core waits a
    minute for those); once open, the breaker lets one probe through per `breaker_open_s`."""
    async with make_rig(tmp_path, media, listening=False) as rig:
        # Five times the longest backoff (0.2 s): a probe that waited this long waited for the breaker.
        open_s = 1.0
        service = rig.service(breaker_open_s=open_s, concurrency=1)
        async with uplink_running(service):
            await eventually(lambda: service.breaker.consecutive_failures >= 2, timeout_s=30)
            errors = [row[0] for row in rig.store.conn.execute("SELECT last_error FROM uploads")]
            assert any("ConnectionRefusedError" in (error or "") for error in errors), errors
            # Busy answers for the next three sends, then service.
            rig.receiver.faults["init"].extend([Fault("retry", "busy")] * 3)
            await rig.receiver.start(rig.port)
            assert await service.wait_drained(60), rig.states()
        receipted_and_provable(rig)
        inits = [at for at, op in rig.receiver.requests if op == "init"]
        assert len(inits) == 5  # three refused busy, then one per item
        # Each busy answer while the breaker is open earns a full pause before the next probe.
        assert inits[1] - inits[0] >= open_s - 0.05 and inits[2] - inits[1] >= open_s - 0.05


async def test_retry_after_from_the_wire_holds_the_item(tmp_path: Path, media: Path) -> None:
    async with make_rig(tmp_path, media) as rig:
        rig.receiver.faults["register"].append(Fault("retry", "quota", retry_after_s=2.5))
        service = rig.service(concurrency=1)
        async with uplink_running(service):
            assert await service.wait_drained(60), rig.states()
        receipted_and_provable(rig)
        registers = [at for at, op in rig.receiver.requests if op == "register"]
        assert len(registers) == 3
        # The backoff alone would have retried within 0.2 s: the item and the breaker's probe waited
        # for what the receiver asked.
        assert registers[1] - registers[0] >= 2.5 - 0.05


async def test_only_a_refusal_the_central_signed_is_final_over_any_wire(tmp_path: Path, media: Path) -> None:
    async with make_rig(tmp_path, media) as rig:
        # A refusal claiming finality, signed by nobody: retried, and on the record once.
        rig.receiver.faults["register"].append(Fault("refuse", "content mismatch", code="content_mismatch"))
        # The first content segment is stored with a flipped bit: the real registrar finds the mismatch
        # and refuses that item in a refusal it signs.
        rig.receiver.faults["segment"].append(Fault("flip"))
        service = rig.service(concurrency=1)
        async with uplink_running(service):
            assert await service.wait_drained(60), rig.states()
            await eventually(lambda: rig.receiver.count("abort") == 1)
        assert sorted(rig.states().values()) == ["receipted", "rejected"], rig.states()
        errors = rig.ledger("error")
        unverified = [data for _, data in errors if data.get("code") == "unverified_refusal"]
        assert [(d["stage"], d["refused"]) for d in unverified] == [("register", "content_mismatch")]
        final = [(item, data) for item, data in errors if "refusal" in data]
        assert len(final) == 1
        item, data = final[0]
        assert rig.states()[next(n for n, i in rig.items.items() if i == item)] == "rejected"
        assert (data["stage"], data["code"]) == ("register", "content_mismatch")
        assert verify_refusal(data["refusal"], rig.central_key.public_key(), station=STATION, item=item,
                              code="content_mismatch", upload=data["refusal"]["upload"]) == []


async def test_a_stored_upload_on_another_origin_is_started_afresh_never_contacted(
    tmp_path: Path, media: Path
) -> None:
    """After `central_url` changed, an upload URL stored for the old central is not resumed (station
    headers and content go to the configured origin only): the tus transport reports it lost and the
    core starts a new upload."""
    contacted: list[str] = []

    async def elsewhere(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        contacted.append("connection")
        writer.close()

    other = await asyncio.start_server(elsewhere, "127.0.0.1", 0)
    other_port = other.sockets[0].getsockname()[1]
    try:
        async with make_http_rig(tmp_path, media) as rig:
            Spool(rig.store).enqueue_sealed()
            stale = f"http://127.0.0.1:{other_port}/v1/uploads/{'a' * 32}"
            Spool(rig.store).set_upload_url(rig.items["clip.mp4"], stale)
            service = await drain(rig)
            assert set(rig.states().values()) == {"receipted"}, rig.states()
            assert service.stats.uploaded == 2 and service.stats.resumed == 0
    finally:
        other.close()
        await other.wait_closed()
    assert contacted == []
