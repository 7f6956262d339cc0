"""Which pattern a bay's LED shows for each way a docking ends (drivers/serial/DOCK_PROTOCOL.md, LED
states and patterns).

An officer reads the bay before the screen: every error class that asks something different of them has
its own pattern (a recorder not on the allow-list and a wrong password both go to the administrator, but
an administrator fixes them differently; a recorder pulled early goes back in its bay). The dock screen's
legend shows the same table with the words.

Error classes are the codes of the station's status model (`error_class` of a bay in the local API); a
class without a pattern of its own shows the generic red `ERROR` ("see the screen").
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from drivers.serial.dock import BayLed
from edge.sources.usb.offload import OffloadOutcome

NOT_ALLOWED = "not_allowed"
WRONG_PASSWORD = "wrong_password"
DISK_FULL = "disk_full"
ROOMS_RECORDING = "rooms_recording"
PULLED_EARLY = "pulled_early"
FILES_FAILED = "files_failed"
AWAITING_RECEIPT = "awaiting_receipt"

ERROR_CLASS_LEDS: Mapping[str, BayLed] = MappingProxyType({
    NOT_ALLOWED: BayLed.DENIED,
    WRONG_PASSWORD: BayLed.PASSWORD,
    DISK_FULL: BayLed.FULL,
    ROOMS_RECORDING: BayLed.FULL,  # the same for the officer: untouched, dock again later
    PULLED_EARLY: BayLed.PULLED,
    FILES_FAILED: BayLed.PARTIAL,
    AWAITING_RECEIPT: BayLed.RECEIPT,
})

# What a bay shows while it is not in error (the bay states of the status model; the dock screen's
# tiles blink their LED dot with the same table).
STATE_LEDS: Mapping[str, BayLed] = MappingProxyType({
    "empty": BayLed.IDLE,
    "authenticating": BayLed.COPYING,
    "copying": BayLed.COPYING,
    "verifying": BayLed.COPYING,
    "awaiting_receipt": BayLed.RECEIPT,
    "done": BayLed.DONE,
    "error": BayLed.ERROR,
})

OUTCOME_LEDS: Mapping[OffloadOutcome, BayLed] = MappingProxyType({
    OffloadOutcome.DONE: BayLed.DONE,
    OffloadOutcome.PARTIAL: BayLed.PARTIAL,
    OffloadOutcome.DEVICE_GONE: BayLed.PULLED,
    OffloadOutcome.STORE_FULL: BayLed.FULL,
    OffloadOutcome.FAILED: BayLed.ERROR,
    # Safe at the station either way; erased from the recorder at a later docking.
    OffloadOutcome.AWAITING_RECEIPT: BayLed.RECEIPT,
    OffloadOutcome.AWAITING_WITNESS: BayLed.RECEIPT,
})


def led_for_error(error_class: str | None) -> BayLed:
    """The pattern for an error class; the generic `ERROR` for a class without one of its own."""
    return BayLed.ERROR if error_class is None else ERROR_CLASS_LEDS.get(error_class, BayLed.ERROR)


def led_after_removal(shown: BayLed | None) -> BayLed:
    """What a bay shows once its recorder left: `PULLED` if it left in the middle of a docking (and
    stays so, whichever of the bay board and the offload noticed first), otherwise ready again."""
    if shown in (BayLed.COPYING, BayLed.PULLED):
        return BayLed.PULLED
    return BayLed.IDLE


def led_after_presence(
    present: bool, shown: BayLed | None, *, decided_since: bool, before_pull: BayLed | None = None
) -> BayLed | None:
    """What a bay shows once the bay board's presence of it settled (`edge.sources.usb.bay_presence`);
    None leaves the LED as it is.

    A settled state stands as of its last raw event, so a LED that a docking decided after that event
    (`decided_since`: a session's outcome, an error class) is newer and stands: a bay whose recorder was
    docked, then pulled early by the USB side before the bay board's insertion settled, keeps `PULLED`.
    Otherwise a recorder leaving shows `led_after_removal`, and one going back into a bay that shows
    `PULLED` makes it ready again; or, when that `PULLED` was the station's own at-once reaction to the
    bay board reporting the bay empty in the middle of a docking and nothing has decided since
    (`before_pull`: what the bay showed before), the LED it showed before (the board bounced, the
    docking never stopped).
    """
    if decided_since:
        return None
    if not present:
        return led_after_removal(shown)
    if shown is BayLed.PULLED:
        return before_pull if before_pull is not None else BayLed.IDLE
    return None
