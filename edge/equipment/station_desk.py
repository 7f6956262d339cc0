"""The check-out desk as the running station serves it: the card reader, the dock screen's 警号 + PIN, and
what the screen shows of each outcome.

`StationDesk` wraps the :class:`~edge.equipment.checkout.CheckoutDesk` of the agent's store:

- `run_card_reader` opens the configured reader and serves it (`serve_card_reader`) until it is lost; the
  agent runs it as a supervised task, which opens the reader again after a loss;
- `check_out_by_pin` is the local API's check-out (edge.observe.desk_api), behind a rate limit over every
  警号 together: the desk's lockout stops many PINs tried against one 警号, not one common PIN tried
  against many 警号;
- every outcome (an assignment with its bay, or a refusal with its screen text) is kept, the newest
  `KEPT_OUTCOMES`, for the dock screen (`outcomes`). A refusal is shown by its reason and screen text
  only: never the card or the 警号 typed, which the kiosk listener must not hand to whoever asks.

Never a PIN anywhere: not in an outcome, a log line or an exception.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from drivers.serial.card_reader import CardReaderDriver, CardReaderError
from drivers.serial.card_reader_protocol import CardFraming
from edge.config.station import CardReaderSection
from edge.custody.ledger import EntryType, station_time_now
from edge.equipment.assignments import Assignment
from edge.equipment.card_desk import CardOutcome, serve_card_reader
from edge.equipment.checkout import CheckoutDesk, CheckoutRefused

__all__ = ["KEPT_OUTCOMES", "DeskOutcome", "PinRateLimited", "StationDesk"]

log = logging.getLogger(__name__)

KEPT_OUTCOMES = 20
RATE_WINDOW_S = 60.0
RATE_LIMITED = "rate_limited"
RATE_LIMITED_TEXT = "尝试过于频繁，请一分钟后再试 · too many attempts: try again in a minute"


class PinRateLimited(Exception):
    """More PIN check-outs than the station takes per minute; `retry_after_s` until the next is taken."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"too many PIN check-outs: the next in {retry_after_s:.0f} s")
        self.retry_after_s = retry_after_s

    @property
    def screen_text(self) -> str:
        return RATE_LIMITED_TEXT


def issued_text(assignment: Assignment) -> str:
    """What the screen says to the officer a recorder was issued to, Chinese first."""
    bay = "?" if assignment.bay is None else str(assignment.bay)
    return (f"{assignment.officer_name}（警号 {assignment.officer_no}）：请取 {bay} 号托架的执法记录仪 · "
            f"take the recorder from bay {bay}")


@dataclass(frozen=True)
class DeskOutcome:
    number: int  # 1, 2, ... since the agent started: the screen shows each new one once
    time: str  # station UTC
    monotonic_s: float
    method: str  # card | pin
    assignment: Assignment | None = None
    reason: str | None = None  # a RefusalReason, or rate_limited
    screen_text: str = ""

    def as_json(self, now_monotonic_s: float) -> dict[str, Any]:
        out: dict[str, Any] = {
            "number": self.number, "time": self.time,
            "age_s": round(max(0.0, now_monotonic_s - self.monotonic_s), 1),
            "method": self.method, "outcome": "refused" if self.assignment is None else "assigned",
            "screen_text": self.screen_text,
        }
        if self.assignment is not None:
            a = self.assignment
            out.update(bay=a.bay, officer_no=a.officer_no, officer_name=a.officer_name,
                       device_serial=a.device_serial, checked_out=a.checked_out)
        else:
            out["reason"] = self.reason
        return out


class PinRateLimit:
    """At most `per_minute` attempts in any 60 s (a sliding window)."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self._attempts: collections.deque[float] = collections.deque()

    def take(self) -> float | None:
        """Take one attempt: None when allowed, else the seconds until one is."""
        now = self.clock()
        while self._attempts and now - self._attempts[0] >= RATE_WINDOW_S:
            self._attempts.popleft()
        if len(self._attempts) >= self.per_minute:
            return RATE_WINDOW_S - (now - self._attempts[0])
        self._attempts.append(now)
        return None


class StationDesk:
    def __init__(self, desk: CheckoutDesk, *, pin_attempts_per_minute: int, card_max_age_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.desk = desk
        self.card_max_age_s = card_max_age_s
        self._clock = clock
        self._rate = PinRateLimit(pin_attempts_per_minute, clock)
        self._limiting = False  # inside a stretch of refused attempts (one ledger entry per stretch)
        self._outcomes: collections.deque[DeskOutcome] = collections.deque(maxlen=KEPT_OUTCOMES)
        self._numbers = 0
        self.listeners: list[Callable[[DeskOutcome], None]] = []

    # -- outcomes ---------------------------------------------------------------------------------------

    def outcomes(self) -> list[dict[str, Any]]:
        """The kept outcomes, newest first, as the dock screen reads them."""
        now = self._clock()
        return [outcome.as_json(now) for outcome in reversed(self._outcomes)]

    def _keep(self, method: str, assignment: Assignment | None = None, refused: CheckoutRefused | None = None,
              reason: str | None = None, screen_text: str = "") -> DeskOutcome:
        self._numbers += 1
        if assignment is not None:
            screen_text = issued_text(assignment)
        elif refused is not None:
            # Outside the ledger, which keeps the true reason: an unknown 警号 reads as a wrong PIN.
            reason, screen_text = str(refused.public_reason), refused.screen_text
        outcome = DeskOutcome(self._numbers, station_time_now(), self._clock(), method, assignment, reason,
                              screen_text)
        self._outcomes.append(outcome)
        for listener in self.listeners:
            listener(outcome)
        return outcome

    # -- 警号 + PIN (the local API) -----------------------------------------------------------------------

    async def check_out_by_pin(self, officer_no: str, pin: str) -> DeskOutcome:
        """One check-out by 警号 + PIN: its outcome (kept for the screen), or `PinRateLimited`."""
        retry_after_s = self._rate.take()
        if retry_after_s is not None:
            if not self._limiting:
                self._limiting = True
                log.warning("check-out desk: PIN check-outs beyond %d a minute refused",
                            self._rate.per_minute)
                self.desk.store.record(EntryType.REFUSED, None, {
                    "what": "check-out", "reason": RATE_LIMITED, "method": "pin",
                    "detail": f"more than {self._rate.per_minute} PIN check-outs within a minute: refused "
                              "until the rate falls"})
            self._keep("pin", reason=RATE_LIMITED, screen_text=RATE_LIMITED_TEXT)
            raise PinRateLimited(retry_after_s)
        self._limiting = False
        try:
            assignment = await self.desk.check_out_by_pin(officer_no, pin)
        except CheckoutRefused as refused:
            return self._keep("pin", refused=refused)
        return self._keep("pin", assignment=assignment)

    # -- the card reader (a supervised task) --------------------------------------------------------------

    def _card_outcome(self, outcome: CardOutcome) -> None:
        self._keep("card", assignment=outcome.assignment, refused=outcome.refused)

    async def run_card_reader(self, section: CardReaderSection) -> None:
        """Serve the reader until it is lost (raises, for the supervisor to open it again)."""
        framing = None if section.framing == "any" else CardFraming(section.framing)
        try:
            reader = await CardReaderDriver.open(section.port, baudrate=section.baudrate,
                                                 repeat_hold_s=section.repeat_hold_s, framing=framing)
        except CardReaderError as exc:
            self._reader_error(f"card reader unavailable: {exc}")
            raise
        try:
            await serve_card_reader(reader, self.desk, on_outcome=self._card_outcome,
                                    max_age_s=self.card_max_age_s)
        except CardReaderError as exc:
            self._reader_error(f"card reader lost: {exc}")
            raise
        finally:
            await reader.close()
        raise ConnectionError(f"card reader {section.port} closed")

    def _reader_error(self, reason: str) -> None:
        """On the record like a lost dock controller: card check-outs stop until the reader is back."""
        self.desk.store.record(EntryType.ERROR, None, {"stage": "card-reader", "reason": reason})
