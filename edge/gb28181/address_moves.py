"""Which moves of a device's registered address go on the ledger (review 24).

A device legitimately changes address rarely (a new DHCP lease, a carrier NAT rebinding, another cell), so
every move is worth an entry: someone holding a device's password and registering in turn with it from a
second address moves the device's queries, INVITEs and DeviceStatus answers (hence the clock offset of its
recordings) to them, and each of those moves must be on the record, back-and-forth included. A device
flapping beyond `MAX_MOVES_RECORDED` moves in `MOVES_WINDOW_S` is itself the fact worth recording, bounded:
the move over the limit is an entry that says so (the count and the addresses seen), the moves after it in
the window are held back and counted, and the first registration after the window is an entry at once with
how many were held back and where the device was meanwhile. In memory, per device (the registry's devices
are bounded), with at most `MAX_ADDRESSES_KEPT` addresses kept per window.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MOVES_WINDOW_S = 3600.0
MAX_MOVES_RECORDED = 20  # moves a device makes in a window that are each an entry
MAX_ADDRESSES_KEPT = 16  # addresses named in a flapping entry (beyond: counted)


@dataclass
class _Window:
    started_at: float
    moves: int = 0
    held_back: int = 0
    addresses: list[str] = field(default_factory=list)
    addresses_not_kept: int = 0

    def saw(self, address: str) -> None:
        if address in self.addresses:
            return
        if len(self.addresses) < MAX_ADDRESSES_KEPT:
            self.addresses.append(address)
        else:
            self.addresses_not_kept += 1

    def described(self) -> dict[str, Any]:
        return {"moves_in_window": self.moves, "window_s": MOVES_WINDOW_S,
                "addresses_seen": list(self.addresses), "addresses_not_named": self.addresses_not_kept}


class AddressMoves:
    """See the module docstring. `clock` is monotonic seconds."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._windows: dict[str, _Window] = {}

    def _window(self, device_id: str) -> _Window:
        now = self._clock()
        window = self._windows.get(device_id)
        if window is None or now - window.started_at >= MOVES_WINDOW_S:
            window = self._windows[device_id] = _Window(now)
        return window

    def ended_window(self, device_id: str) -> dict[str, Any] | None:
        """The moves held back in a window that is over (to add to the entry now written), once; None when
        none were held back or the window still runs."""
        window = self._windows.get(device_id)
        if window is None or not window.held_back or self._clock() - window.started_at < MOVES_WINDOW_S:
            return None
        del self._windows[device_id]
        return {"flapping_ended": {**window.described(), "moves_not_recorded": window.held_back}}

    def moved(self, device_id: str, previous: str, address: str) -> dict[str, Any] | None:
        """The device's registered address changed from `previous` to `address`: None to hold its entry
        back (flapping, counted), else what to add to the entry (empty for an ordinary move)."""
        window = self._window(device_id)
        window.moves += 1
        window.saw(previous)
        window.saw(address)
        if window.moves <= MAX_MOVES_RECORDED:
            return {}
        if window.moves == MAX_MOVES_RECORDED + 1:
            return {"flapping": {**window.described(), "reason": (
                f"the device's address changed more than {MAX_MOVES_RECORDED} times within "
                f"{MOVES_WINDOW_S / 60:g} min: further changes in this window are counted, not each "
                "recorded; the first registration after it is recorded with the count")}}
        window.held_back += 1
        return None
