"""The central signs its final refusals (edge.custody.refusal) so that stations can tell them from what a
proxy answers; everything that may pass (a gap, a busy server, a wrong request) stays unsigned."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from edge.central.registration import SIGNED_REFUSALS, RejectCode, Rejection
from edge.custody.refusal import FINAL_ITEM_CODES, verify_refusal
from tests.central.conftest import CentralParts, FakeStation, enroll


def _body(parts: CentralParts, station: FakeStation, content: bytes, upload_content: bytes | None = None
          ) -> tuple[dict[str, Any], str]:
    acquired = station.acquire(content)
    upload = parts.upload(station.station_id, content if upload_content is None else upload_content)
    return {"upload": upload, "manifest": acquired.manifest, "ledger": station.segment(0)}, acquired.item


async def _refused(parts: CentralParts, station: FakeStation, body: object) -> Rejection:
    with pytest.raises(Rejection) as caught:
        await parts.registrar.register_item(parts.caller(station.station_id), station.station_id, body)
    return caught.value


def test_the_registrar_signs_exactly_the_final_codes() -> None:
    assert {str(code) for code in SIGNED_REFUSALS} == (FINAL_ITEM_CODES - {"too_large"}) | {"ledger_fork"}


@pytest.mark.parametrize("refusal", ["content_mismatch", "bad_signature"])
async def test_a_final_refusal_of_an_item_is_signed_for_that_item_and_upload(
    parts: CentralParts, station: FakeStation, refusal: str
) -> None:
    enroll(parts.index, station)
    if refusal == "content_mismatch":
        body, item = _body(parts, station, b"as recorded", b"as edited")
    else:
        body, item = _body(parts, station, b"as recorded")
        body["manifest"] = copy.deepcopy(body["manifest"])
        body["manifest"]["case"]["subject"] = "something else"
    rejection = await _refused(parts, station, body)
    assert rejection.code == refusal
    signed = rejection.refusal
    assert signed is not None
    assert (signed["item"], signed["upload"], signed["code"]) == (item, body["upload"], refusal)
    assert signed["detail"] == rejection.detail[:500]
    central = parts.signing_key.public_key()
    assert verify_refusal(signed, central, station=station.station_id, item=item, code=refusal,
                          upload=body["upload"]) == []


async def test_a_ledger_fork_is_signed_about_the_ledger_not_an_item(
    parts: CentralParts, station: FakeStation
) -> None:
    enroll(parts.index, station)
    body, _ = _body(parts, station, b"one")
    await parts.registrar.register_item(parts.caller(station.station_id), station.station_id, body)
    rebuilt = FakeStation(station.station_id, key=station.key)
    for note in ("rebuilt", "more", "more", "more"):
        rebuilt.record("station_started", None, {"note": note})
    with pytest.raises(Rejection) as caught:
        await parts.registrar.accept_segment(parts.caller(station.station_id), station.station_id,
                                             rebuilt.segment(0))
    rebuilt.conn.close()
    assert caught.value.code == RejectCode.LEDGER_FORK
    assert caught.value.refusal is not None
    assert verify_refusal(caught.value.refusal, parts.signing_key.public_key(), station=station.station_id,
                          item=None, code="ledger_fork", upload=None) == []


async def test_refusals_that_may_pass_are_not_signed(parts: CentralParts, station: FakeStation) -> None:
    enroll(parts.index, station)
    body, _ = _body(parts, station, b"one")
    gap = copy.deepcopy(body)
    gap["ledger"]["entries"] = gap["ledger"]["entries"][1:]
    not_found = {**body, "upload": "0" * 32}
    for request, code in ((gap, RejectCode.LEDGER_GAP), (not_found, RejectCode.UPLOAD_NOT_FOUND),
                          ({"upload": 1}, RejectCode.BAD_REQUEST)):
        rejection = await _refused(parts, station, request)
        assert rejection.code == code and rejection.refusal is None
