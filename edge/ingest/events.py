"""Every ledger entry the station commits, as one log line with its item, bay, device and station as
fields (logger ``edge.ingest.events``, INFO).

The ledger is the station's record of events (a recorder docked, a file acquired, verified, sealed,
uploaded, receipted, wiped, a refusal, an error); the log shows the same events to an administrator in
the journal (``journalctl -u edge-station DEVICE=3300001``) or a log shipper, without opening the store.
Lines are written after the transaction that appended the entries committed, never for one that
rolled back. An entry names its device and bay when its data does (``device_serial``, ``usb_serial``,
``bay``); later entries of the same item (verified, sealed, wiped carry only the item) get them from
what the line logger remembers of the item, in a bounded memory.

Only these fields and the entry's ``reason`` (escaped; ledger data is scrubbed of station paths and
never holds a secret) are logged, never the whole data.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

from edge.custody.ledger import LedgerEntry
from edge.runtime.logs import event_fields

__all__ = ["LedgerEventLog"]

log = logging.getLogger(__name__)

# Items and devices remembered for their device and bay (a docking session's worth and more).
_REMEMBERED = 4096
_MAX_REASON_CHARS = 300


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


class LedgerEventLog:
    """Writes one log line per committed ledger entry of one station."""

    def __init__(self, station: str) -> None:
        self.station = station
        self._bay_of_device: OrderedDict[str, int] = OrderedDict()
        self._origin_of_item: OrderedDict[str, tuple[str | None, int | None]] = OrderedDict()

    def __repr__(self) -> str:
        return f"LedgerEventLog(station={self.station!r})"

    def committed(self, entries: Iterable[LedgerEntry]) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        for entry in entries:
            self._line(entry)

    def _remember(self, table: OrderedDict[str, Any], key: str, value: Any) -> None:
        table[key] = value
        table.move_to_end(key)
        while len(table) > _REMEMBERED:
            table.popitem(last=False)

    def _line(self, entry: LedgerEntry) -> None:
        data: Mapping[str, Any] = entry.data if isinstance(entry.data, Mapping) else {}
        device = next((text for key in ("device_serial", "usb_serial", "device")
                       if (text := _text(data.get(key))) is not None), None)
        bay = data.get("bay") if isinstance(data.get("bay"), int) else None
        if device is not None and bay is not None:
            self._remember(self._bay_of_device, device, bay)
        elif device is not None and bay is None:
            bay = self._bay_of_device.get(device)
        if entry.item is not None:
            if device is not None:
                self._remember(self._origin_of_item, entry.item, (device, bay))
            else:
                device, bay = self._origin_of_item.get(entry.item, (None, None))
        reason = _text(data.get("reason"))
        if reason is not None and len(reason) > _MAX_REASON_CHARS:
            reason = reason[: _MAX_REASON_CHARS - 3] + "..."
        log.info("%s%s%s", entry.type, f" item {entry.item}" if entry.item else "",
                 f": {reason}" if reason else "",
                 extra=event_fields(event=entry.type, seq=entry.seq, item=entry.item, bay=bay, device=device,
                                    station=self.station))
