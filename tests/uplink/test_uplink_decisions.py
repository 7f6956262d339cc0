"""What the uplink does with each kind of refusal from the central: only refusals about the item, signed
by the central, are final; station-level, transient, garbled, unsigned and forged answers are retried
with back-off, never held against the evidence. And `edge verify` binds a stored receipt to the sealed
manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge.central.embedded import EmbeddedCentral
from edge.config.station import StationConfig
from edge.custody.keys import StationKey
from edge.custody.ledger import ENTRY_SALT, ITEM_PREV
from edge.custody.refusal import sign_refusal
from edge.ingest.store import StationStore
from edge.uplink.central_api import CentralRejected
from edge.uplink.service import UplinkFatal, UplinkService
from edge.uplink.spool import Spool
from edge.uplink.tus_transport import outcome_of_rejection
from edge.verify.station import verify_store
from tests.station.harness import simulated_station, spec
from tests.uplink.test_uplink_station import FAST_RETRY, STATION


def central_key(tmp_path: Path) -> StationKey:
    return StationKey.load_or_create(tmp_path / "central.key")


def signed(tmp_path: Path, code: str, **overrides: object) -> dict[str, object]:
    values: dict[str, object] = {
        "central": "central-test", "station": STATION, "item": "it-1", "upload": None, "code": code,
        "detail": "why", "time": "2026-11-21T00:00:00.000000Z", "key": central_key(tmp_path),
    }
    values.update(overrides)
    return sign_refusal(**values)  # type: ignore[arg-type]


@pytest.fixture
def service(tmp_path: Path) -> UplinkService:
    key = central_key(tmp_path)
    assert key.public_path is not None
    config = StationConfig.model_validate(
        {
            "station": {"id": STATION, "store_dir": str(tmp_path / "store")},
            "usb": {"mount_root": str(tmp_path / "media")},
            "uplink": {
                "central_url": "http://127.0.0.1:9",
                "insecure_plain_http": True,
                "central_signing_key": str(key.public_path),
            },
        }
    )
    store = StationStore(tmp_path / "store", STATION)
    store.conn.execute(
        "INSERT INTO items (item, sha256, size, path, device_serial, acquired, manifest) "
        "VALUES ('it-1', ?, 3, 'items/x.mp4', 'D1', '2026-11-21T00:00:00.000000Z', '{}')",
        ("a" * 64,),
    )
    uplink = UplinkService(config, store, clock=lambda: 1000.0)
    assert uplink.spool.enqueue_sealed() == ["it-1"]
    return uplink


def state_of(spool: Spool) -> tuple[str, int, float]:
    row = spool.store.conn.execute("SELECT state, attempts, next_attempt FROM uploads").fetchone()
    return row["state"], row["attempts"], row["next_attempt"]


def entry(spool: Spool):  # type: ignore[no-untyped-def]
    return spool.due(10_000.0, (), 1)[0]


def answered(service: UplinkService, rejection: CentralRejected) -> None:
    """The central's HTTP answer to a registration, as the tus transport reports it to the core."""
    service._registration_failed(entry(service.spool), outcome_of_rejection(rejection, None))


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (503, "store_damaged"),
        (200, "bad_response"),
        (403, "station_revoked"),
        (403, "unknown_station"),
        (404, "not_found"),
        (409, "ledger_gap"),
        (422, "bad_checkpoint"),
    ],
)
def test_transient_or_station_level_refusals_back_off_and_keep_the_item(
    service: UplinkService, status: int, code: str
) -> None:
    answered(service, CentralRejected(status, code, "detail"))
    state, attempts, next_attempt = state_of(service.spool)
    assert state == "queued" and attempts == 1 and next_attempt > 1000.0
    assert [e for e in service.store.ledger.entries() if e.type == "error"] == []


@pytest.mark.parametrize("code", ["content_mismatch", "bad_signature", "item_conflict", "chain_mismatch"])
def test_signed_refusals_about_the_item_are_final_and_on_the_record(
    service: UplinkService, tmp_path: Path, code: str
) -> None:
    refusal = signed(tmp_path, code)
    answered(service, CentralRejected(422, code, "why", refusal=refusal))
    assert state_of(service.spool)[0] == "rejected"
    # (item_prev, the item chain's link the ledger adds to every entry of an item, is tested with it)
    errors = [{k: v for k, v in e.data.items() if k not in (ITEM_PREV, ENTRY_SALT)}
              for e in service.store.ledger.entries() if e.type == "error"]
    assert errors == [{"stage": "register", "code": code, "reason": "why", "refusal": refusal}]


@pytest.mark.parametrize(
    "forgery",
    ["unsigned", "other_key", "other_item", "other_station", "other_code", "other_upload", "altered",
     "malformed"],
)
def test_refusals_the_central_did_not_sign_for_this_item_are_retried(
    service: UplinkService, tmp_path: Path, forgery: str
) -> None:
    """Only the pinned central key's signature over this station, item, upload and code makes a refusal
    final: anything else (a proxy's JSON, a refusal of another item replayed) keeps the item queued."""
    refusal: object = {
        "unsigned": None,
        "other_key": signed(tmp_path, "content_mismatch", key=StationKey.generate()),
        "other_item": signed(tmp_path, "content_mismatch", item="it-2"),
        "other_station": signed(tmp_path, "content_mismatch", station="OTHER-STATION"),
        "other_code": signed(tmp_path, "bad_signature"),
        "other_upload": signed(tmp_path, "content_mismatch", upload="f" * 32),
        "altered": {**signed(tmp_path, "content_mismatch"), "detail": "edited"},
        "malformed": {"code": "content_mismatch", "item": "it-1", "signature": "yes"},
    }[forgery]
    rejection = CentralRejected(422, "content_mismatch", "why", refusal=refusal)  # type: ignore[arg-type]
    answered(service, rejection)
    state, attempts, next_attempt = state_of(service.spool)
    assert (state, attempts) == ("queued", 1) and next_attempt > 1000.0
    errors = [e.data for e in service.store.ledger.entries() if e.type == "error"]
    assert [(e["stage"], e["code"], e["refused"]) for e in errors] == [
        ("register", "unverified_refusal", "content_mismatch")
    ]
    # On the record once, however often the same claim comes back.
    answered(service, rejection)
    assert len([e for e in service.store.ledger.entries() if e.type == "error"]) == 1


@pytest.mark.parametrize(("status", "code"), [(400, "http_400"), (413, "http_413"), (422, "bad_request"),
                                              (418, "whatever_a_proxy_says")])
def test_codes_off_the_published_list_are_never_final_even_signed(
    service: UplinkService, tmp_path: Path, status: int, code: str
) -> None:
    rejection = CentralRejected(status, code, "why", refusal=signed(tmp_path, code))
    answered(service, rejection)
    assert state_of(service.spool)[0] == "queued"
    assert [e for e in service.store.ledger.entries() if e.type == "error"] == []


def test_a_lost_upload_is_sent_again_after_a_backoff(service: UplinkService) -> None:
    service.spool.set_upload_url("it-1", "http://127.0.0.1:9/v1/uploads/" + "0" * 32)
    answered(service, CentralRejected(404, "upload_not_found", "gone"))
    state, attempts, next_attempt = state_of(service.spool)
    assert (state, attempts) == ("queued", 1) and next_attempt > 1000.0
    assert service.spool.store.conn.execute("SELECT upload_url FROM uploads").fetchone()[0] is None


def test_upload_incomplete_resumes_the_same_upload(service: UplinkService) -> None:
    url = "http://127.0.0.1:9/v1/uploads/" + "1" * 32
    service.spool.mark_uploaded("it-1", url, 3, 0)
    answered(service, CentralRejected(409, "upload_incomplete", "short"))
    assert state_of(service.spool)[0] == "queued"
    assert service.spool.store.conn.execute("SELECT upload_url FROM uploads").fetchone()[0] == url


def test_a_ledger_fork_stops_the_uplink_without_blaming_the_item(
    service: UplinkService, tmp_path: Path
) -> None:
    fork = signed(tmp_path, "ledger_fork", item=None)
    with pytest.raises(UplinkFatal):
        answered(service, CentralRejected(409, "ledger_fork", "seq 3",
                                                                           refusal=fork))
    assert state_of(service.spool)[0] == "queued"


def test_an_unsigned_ledger_fork_does_not_stop_the_uplink(service: UplinkService, tmp_path: Path) -> None:
    """Anyone between station and central could answer "ledger_fork": only the central's word stops it."""
    forged = signed(tmp_path, "ledger_fork", item=None, key=StationKey.generate())
    for refusal in (None, forged):
        answered(service, CentralRejected(409, "ledger_fork", "seq 3",
                                                                           refusal=refusal))
    assert state_of(service.spool)[:2] == ("queued", 2)
    errors = [e.data for e in service.store.ledger.entries() if e.type == "error"]
    assert [(e["code"], e["refused"]) for e in errors] == [("unverified_refusal", "ledger_fork")]


async def test_verify_names_a_receipt_bound_to_another_manifest(tmp_path: Path) -> None:
    central = await EmbeddedCentral.start(tmp_path, STATION, tmp_path / "store")
    s = spec(0, files=1)
    try:
        async with simulated_station(
            tmp_path, [s], uplink={**central.uplink_config(), **FAST_RETRY}, wipe={"policy": "after-receipt"}
        ) as station:
            await station.dock_recorder(s.device_serial, 1)
            await station.wait_results(1)
    finally:
        await central.stop()
    assert verify_store(tmp_path / "store", central_key=central.signing_public_key()).ok
    receipt_file = next((tmp_path / "store" / "items").rglob("*.receipt.json"))
    receipt = json.loads(receipt_file.read_text())
    receipt["leaf"]["manifest_sha256"] = "b" * 64
    receipt_file.write_text(json.dumps(receipt))
    report = verify_store(tmp_path / "store")
    assert any("another manifest" in p.what for p in report.problems), report.problems
    # With the central key the altered leaf also fails its inclusion proof.
    pinned = verify_store(tmp_path / "store", central_key=central.signing_public_key())
    assert any("receipt:" in p.what for p in pinned.problems)
