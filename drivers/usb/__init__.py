"""USB recorders: the EE-ZFY control protocol (protocol.py, PROTOCOL.md), its pyusb driver (recorder.py)."""

from drivers.usb.protocol import (
    DeviceClock,
    DeviceStatus,
    RecorderError,
    RecorderInfo,
    RecorderMode,
    RecorderProtocolError,
)
from drivers.usb.recorder import (
    DEFAULT_IDS,
    ClockSample,
    RecorderAuthError,
    RecorderDriver,
    RecorderGoneError,
    RecorderHandle,
    RecorderLockedError,
    RecorderRejectedError,
    RecorderTimeoutError,
    UsbLocation,
    find_recorders,
)

__all__ = [
    "DEFAULT_IDS",
    "ClockSample",
    "DeviceClock",
    "DeviceStatus",
    "RecorderAuthError",
    "RecorderDriver",
    "RecorderError",
    "RecorderGoneError",
    "RecorderHandle",
    "RecorderInfo",
    "RecorderLockedError",
    "RecorderMode",
    "RecorderProtocolError",
    "RecorderRejectedError",
    "RecorderTimeoutError",
    "UsbLocation",
    "find_recorders",
]
