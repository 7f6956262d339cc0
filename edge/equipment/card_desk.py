"""The station's card reader at the check-out desk: each card presented is a check-out request.

`serve_card_reader` reads presentations from a `CardReaderDriver` and hands each to the desk, one at a
time. A presentation older than `max_age_s` when its turn comes (the desk was busy, or the queue held it
while nobody listened) is dropped with a log line, never honoured late: an officer who walked away must
not find a recorder issued in their name. Each outcome (an assignment, or a refusal with its screen text)
goes to `on_outcome`, where the dock screen will show it. A lost reader ends the loop with its exception,
for the supervisor that runs it to restart (the station's supervised tasks).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from drivers.serial.card_reader import CardReaderDriver
from edge.equipment.assignments import Assignment
from edge.equipment.checkout import CheckoutDesk, CheckoutRefused

__all__ = ["CardOutcome", "serve_card_reader"]

log = logging.getLogger(__name__)

DEFAULT_MAX_AGE_S = 10.0


@dataclass(frozen=True)
class CardOutcome:
    card_uid: str
    assignment: Assignment | None = None
    refused: CheckoutRefused | None = None


async def serve_card_reader(reader: CardReaderDriver, desk: CheckoutDesk, *,
                            on_outcome: Callable[[CardOutcome], None] = lambda outcome: None,
                            max_age_s: float = DEFAULT_MAX_AGE_S,
                            clock: Callable[[], float] = time.monotonic) -> None:
    """Serve presentations until the reader is closed (returns) or lost (raises)."""
    async for card in reader.cards():
        age_s = clock() - card.monotonic_s
        if age_s > max_age_s:
            log.warning("card reader %s: a card presented %.0f s ago was not served in time; dropped",
                        reader.url, age_s)
            continue
        try:
            assignment = await desk.check_out_by_card(card.uid)
        except CheckoutRefused as refused:
            on_outcome(CardOutcome(card.uid, refused=refused))
            continue
        on_outcome(CardOutcome(card.uid, assignment=assignment))
