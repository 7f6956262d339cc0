"""The clock history of each GB/T 28181 device, kept across restarts of the agent (review 17).

The platform's registry keeps, per device, the epochs of its clock between the station's settings of it
(edge.gb28181.registry.ClockEpoch), so that a recording is given the offset of the clock that stamped it.
Held in memory only, a restart lost them: a recording stamped before the previous run set the clock was
given the offset measured after the setting, a concrete wrong value. So each device whose clock the
station has set has a small file, `<device id>.json` in the platform's directory of the station store
(`CLOCK_HISTORY_DIR`), rewritten atomically (temp file, fsync, rename, directory fsync) at each setting and
each trusted measurement after one, read once per run when the device first registers.

Bounded: at most `MAX_CLOCK_EPOCHS` epochs (the registry's bound) and `MAX_FILE_BYTES` per file, one file
per device that passed digest (the registry's bound on devices). Only a 20-digit device id names a file.
Read without trusting it: a regular file only (not a FIFO, not through a symlink's target kind check),
`MAX_FILE_BYTES` at most, JSON of the exact shape below with finite numbers, its own device id, the
epochs in order (every one closed but the last, which is open). Anything else raises `ClockHistoryError`:
the platform logs it, puts an error on the ledger and takes the device's history as lost (what was
stamped before this run gets no offset: `ClockUnknown.BEFORE_HISTORY`), never a guess.

    {"version": 3, "device_id": "<20 digits>", "history_from_s": null | station Unix seconds,
     "utc_offset_minutes": null | the devices' zone the offsets were measured in,
     "epochs": [{"offset_s": null | s, "started_at_device_s": null | s, "ended_at_device_s": null | s,
                 "matched_at_s": null | station Unix seconds}]}

`matched_at_s` (version 3, review 21) is when a trusted measurement last matched the stretch's offset: the
drift allowed for the next measurement grows from it (edge.gb28181.registry.CLOCK_DRIFT_S_PER_DAY), and a
step found after a restart has its window from it. Version 2 did not keep it: a version 2 file is read,
each stretch with `matched_at_s` null, which is what version 2 itself did after a restart (no drift allowed
for the first measurement of the run, a step's window from the stretch's start, or unknown without one);
that measurement writes version 3. A later stretch without a start (version 3 only) began at a step whose
window could not be bounded (`ClockUnknown.STEP_WINDOW_UNKNOWN`).

An offset reads the device's zone-less DeviceTime in the configured zone (`utc_offset_minutes`), so it
holds in that zone only (review 20): a file of another zone (or of version 1, which did not say its zone)
raises `ClockHistoryZoneChanged` when loaded for a zone, and the platform takes the history as lost with
the reason `zone-changed`, never applies it.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import Path
from typing import Any

from edge.durable.files import SmallFileError, ensure_private_dir, read_small_file, write_atomic
from edge.gb28181.registry import MAX_CLOCK_EPOCHS, MAX_CLOCK_OFFSET_S, ClockEpoch

CLOCK_HISTORY_DIR = "gb28181-clocks"
FORMAT_VERSION = 3
MAX_FILE_BYTES = 16 * 1024  # 32 epochs of three numbers each take ~3 KiB
_DEVICE_ID = re.compile(r"[0-9]{20}")
_EPOCH_KEYS_V2 = {"offset_s", "started_at_device_s", "ended_at_device_s"}
_EPOCH_KEYS = _EPOCH_KEYS_V2 | {"matched_at_s"}
_DOCUMENT_KEYS_V1 = {"version", "device_id", "history_from_s", "epochs"}
_DOCUMENT_KEYS = _DOCUMENT_KEYS_V1 | {"utc_offset_minutes"}


class ClockHistoryError(Exception):
    """A device's clock history file that cannot be used; the message says what is wrong (no raw bytes)."""


class ClockHistoryZoneChanged(ClockHistoryError):
    """A history whose offsets were measured in another devices' zone (or an unknown one)."""


def history_path(directory: Path, device_id: str) -> Path:
    """The file of `device_id` (a 20-digit id only: device text never becomes a path otherwise)."""
    if not _DEVICE_ID.fullmatch(device_id):
        raise ClockHistoryError("a device id that is not 20 digits names no clock history file")
    return directory / f"{device_id}.json"


def encode(device_id: str, epochs: list[ClockEpoch], history_from_s: float | None, *,
           utc_offset_minutes: int | None = None) -> bytes:
    """The file's bytes (pure)."""
    return json.dumps({
        "version": FORMAT_VERSION, "device_id": device_id, "history_from_s": history_from_s,
        "utc_offset_minutes": utc_offset_minutes,
        "epochs": [{"offset_s": e.offset_s, "started_at_device_s": e.started_at_device_s,
                    "ended_at_device_s": e.ended_at_device_s, "matched_at_s": e.matched_at_s}
                   for e in epochs[-MAX_CLOCK_EPOCHS:]],
    }, sort_keys=True).encode()


def _number(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ClockHistoryError(f"{what} is not a finite number or null")
    return float(value)


def decode(device_id: str, data: bytes, *,
           utc_offset_minutes: int | None = None) -> tuple[list[ClockEpoch], float | None]:
    """The epochs and `history_from_s` of a file's bytes (pure); ClockHistoryError when it is not exactly
    what `encode` writes for `device_id`; ClockHistoryZoneChanged when `utc_offset_minutes` is given and
    the file's offsets were measured in another zone (or one it does not say)."""
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ClockHistoryError(f"not JSON ({type(exc).__name__})") from None
    version = document.get("version") if isinstance(document, dict) else None
    if not isinstance(document, dict) or isinstance(version, bool) or version not in (1, 2, FORMAT_VERSION) \
            or set(document) != (_DOCUMENT_KEYS_V1 if version == 1 else _DOCUMENT_KEYS):
        raise ClockHistoryError("not a clock history (unexpected fields or an unknown format version)")
    epoch_keys = _EPOCH_KEYS if version == FORMAT_VERSION else _EPOCH_KEYS_V2
    if document["device_id"] != device_id:
        raise ClockHistoryError("the file names another device")
    zone = document.get("utc_offset_minutes")
    if zone is not None and (isinstance(zone, bool) or not isinstance(zone, int) or abs(zone) > 24 * 60):
        raise ClockHistoryError("utc_offset_minutes is not a zone in minutes")
    history_from_s = _number(document["history_from_s"], "history_from_s")
    raw = document["epochs"]
    if not isinstance(raw, list) or not 0 < len(raw) <= MAX_CLOCK_EPOCHS:
        raise ClockHistoryError(f"epochs is not a list of 1 to {MAX_CLOCK_EPOCHS}")
    epochs: list[ClockEpoch] = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict) or set(item) != epoch_keys:
            raise ClockHistoryError(f"epoch {index} has unexpected fields")
        epochs.append(ClockEpoch(
            offset_s=_number(item["offset_s"], f"epoch {index} offset_s"),
            ended_at_device_s=_number(item["ended_at_device_s"], f"epoch {index} ended_at_device_s"),
            started_at_device_s=_number(item["started_at_device_s"], f"epoch {index} started_at_device_s"),
            matched_at_s=_number(item.get("matched_at_s"), f"epoch {index} matched_at_s"),
        ))
    if any(e.offset_s is not None and abs(e.offset_s) > MAX_CLOCK_OFFSET_S for e in epochs):
        raise ClockHistoryError("an absurd clock offset (beyond 50 years)")
    if any(e.ended_at_device_s is None for e in epochs[:-1]) or epochs[-1].ended_at_device_s is not None:
        raise ClockHistoryError("every epoch but the last must be closed, and the last open")
    if version != FORMAT_VERSION and any(e.started_at_device_s is None for e in epochs[1:]):
        raise ClockHistoryError("an epoch after the first without its start")
    if any(e.matched_at_s is not None and e.offset_s is None for e in epochs):
        raise ClockHistoryError("an epoch matched by a measurement without an offset")
    starts = [e.started_at_device_s for e in epochs[1:]]
    if any(b < a for a, b in itertools.pairwise(starts) if a is not None and b is not None):
        raise ClockHistoryError("epochs out of order")
    if utc_offset_minutes is not None and zone != utc_offset_minutes:
        measured_in = "a zone it does not say" if zone is None else f"UTC{zone / 60:+g} h"
        raise ClockHistoryZoneChanged(f"its offsets were measured in {measured_in}, the devices' zone is now "
                                      f"UTC{utc_offset_minutes / 60:+g} h")
    return epochs, history_from_s


def load(directory: Path, device_id: str, *,
         utc_offset_minutes: int | None = None) -> tuple[list[ClockEpoch], float | None] | None:
    """The device's saved history, or None when it has no file (its clock was never set by the station).
    Raises ClockHistoryError when the file is there but cannot be used."""
    path = history_path(directory, device_id)
    if not path.exists() and not path.is_symlink():
        return None
    if path.is_symlink():
        raise ClockHistoryError("the file is a symbolic link")
    try:
        data = read_small_file(path, MAX_FILE_BYTES, expected="a clock history file")
    except SmallFileError as exc:
        raise ClockHistoryError(str(exc)) from None
    return decode(device_id, data, utc_offset_minutes=utc_offset_minutes)


def save(directory: Path, device_id: str, epochs: list[ClockEpoch], history_from_s: float | None, *,
         utc_offset_minutes: int | None = None) -> None:
    """Write the device's history atomically (the directory made private if missing). Raises OSError or
    ClockHistoryError (an id that names no file)."""
    path = history_path(directory, device_id)
    ensure_private_dir(directory)
    write_atomic(path, encode(device_id, epochs, history_from_s, utc_offset_minutes=utc_offset_minutes))
