"""Review of issue 12: a refused PIN check-out must not tell which 警号 exist.

`CheckoutDesk.check_out_by_pin` verifies an unknown 警号 against a dummy hash "so that the time of a
refusal does not tell which 警号 exist", and the screen says the same words for both. But the outcome the
local API answers (POST /api/v1/checkout) and lists to any kiosk caller (GET /api/v1/checkout/outcomes,
`StationDesk.outcomes`) carries the reason code: `unknown_officer` for a 警号 not in the registry,
`wrong_pin` for one that is. Whoever can post a check-out (any local process on the loopback listener) or
read the kiosk outcomes learns the agency's 警号 one guess at a time, without spending the PIN lockout of
anyone (an unknown 警号 counts no failure).
"""

from __future__ import annotations

from typing import Any

from edge.equipment.station_desk import StationDesk
from tests.equipment.test_checkout import Rig, rig, store  # noqa: F401  (fixtures)

VOLATILE = ("number", "time", "age_s")


def kiosk_view(outcome: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in outcome.items() if k not in VOLATILE}


async def test_an_unknown_officer_number_looks_like_a_wrong_pin_to_api_and_kiosk(rig: Rig) -> None:  # noqa: F811
    rig.dock(0, "1-1.1")
    desk = StationDesk(rig.desk, pin_attempts_per_minute=100, card_max_age_s=10.0)
    # The control: the right PIN of the known 警号 is served (the desk is the working path); back in.
    issued = (await desk.check_out_by_pin("220001", "4321")).as_json(0.0)
    assert issued["outcome"] == "assigned", issued
    assert rig.desk.check_in(issued["device_serial"], bay=1) is not None
    unknown = (await desk.check_out_by_pin("999999", "1111")).as_json(0.0)
    wrong = (await desk.check_out_by_pin("220001", "1111")).as_json(0.0)
    # What the screen shows is the same (this holds now).
    assert unknown["screen_text"] == wrong["screen_text"]
    assert unknown["outcome"] == wrong["outcome"] == "refused"
    # Failed before the fix: {"reason": "unknown_officer"} vs {"reason": "wrong_pin"}, in the answer and
    # every kiosk caller's GET /api/v1/checkout/outcomes.
    assert kiosk_view(unknown) == kiosk_view(wrong)
    assert kiosk_view(desk.outcomes()[0]) == kiosk_view(desk.outcomes()[1])
