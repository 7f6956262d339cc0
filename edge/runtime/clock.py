"""Is the station clock trustworthy enough to stamp recorders (校时)? Invariant 8."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from typing import Literal

log = logging.getLogger(__name__)

TIME_ERROR = 5  # adjtimex(2) return value: the kernel clock is not synchronised
TIMEX_BYTES = 512  # struct timex is 208 bytes on x86-64; room to spare on any ABI


def kernel_clock_synchronised() -> bool:
    """True when the kernel reports its clock disciplined by NTP/PTP (adjtimex state != TIME_ERROR)."""
    path = ctypes.util.find_library("c")
    if path is None:
        return False
    try:
        libc = ctypes.CDLL(path, use_errno=True)
        buffer = ctypes.create_string_buffer(TIMEX_BYTES)  # modes = 0: read only, change nothing
        state = int(libc.adjtimex(buffer))
    except (OSError, AttributeError):
        return False
    return state not in (-1, TIME_ERROR)


def station_clock_trusted(setting: Literal["auto", "trusted", "untrusted"]) -> bool:
    if setting == "trusted":
        return True
    if setting == "untrusted":
        return False
    return kernel_clock_synchronised()


def measure_offset_ms(host_before_ms: int, device_ms: int, host_after_ms: int) -> int:
    """Device minus station time, taking the station time at the middle of the round trip."""
    return device_ms - (host_before_ms + host_after_ms) // 2
