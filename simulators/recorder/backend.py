"""A pyusb backend (`usb.backend.IBackend`) whose devices are the simulated recorders of a bus server.

    import usb.core
    from simulators.recorder.backend import get_backend
    usb.core.find(find_all=True, backend=get_backend(Path("/run/ee-sim/bus.sock")))

Descriptors are parsed from the bytes the devices send; control transfers go over the bus socket;
failures surface as the `usb.core.USBError`s libusb gives pyusb (errno EPIPE for a STALL, ENODEV for
a device that is gone, ETIMEDOUT as `USBTimeoutError`), so the driver cannot tell this from hardware.
Safe for several threads (one connection, one lock); reconnects when the server restarts.
Bulk transfers are not simulated: a mass-storage recorder's files are reached through its mounted
volume, as the service reaches a real one through the kernel's usb-storage driver.
"""

from __future__ import annotations

import array
import contextlib
import errno
import json
import logging
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import usb.backend
import usb.core

from simulators.recorder.descriptors import (
    ConfigurationDescriptor,
    DescriptorError,
    DeviceDescriptor,
    EndpointDescriptor,
    InterfaceDescriptor,
)

logger = logging.getLogger(__name__)

# libusb error codes, as libusb1.py puts them into USBError.backend_error_code.
LIBUSB_ERROR_IO = -1
LIBUSB_ERROR_INVALID_PARAM = -2
LIBUSB_ERROR_NO_DEVICE = -4
LIBUSB_ERROR_NOT_FOUND = -5
LIBUSB_ERROR_TIMEOUT = -7
LIBUSB_ERROR_OVERFLOW = -8
LIBUSB_ERROR_PIPE = -9

_ERRORS: dict[str, tuple[str, int, int]] = {
    "stall": ("Pipe error", LIBUSB_ERROR_PIPE, errno.EPIPE),
    "no_device": ("No such device (it may have been disconnected)", LIBUSB_ERROR_NO_DEVICE, errno.ENODEV),
    "timeout": ("Operation timed out", LIBUSB_ERROR_TIMEOUT, errno.ETIMEDOUT),
    "overflow": ("Overflow", LIBUSB_ERROR_OVERFLOW, errno.EOVERFLOW),
    "invalid": ("Invalid parameter", LIBUSB_ERROR_INVALID_PARAM, errno.EINVAL),
    "not_found": ("Entity not found", LIBUSB_ERROR_NOT_FOUND, errno.ENOENT),
}

_ENUMERATE_TIMEOUT_S = 10.0
# The server bounds its own wait for a busy device by the transfer timeout; this margin covers
# what a transfer does after that (SET_MSDC mounts a volume before it answers).
_TRANSFER_MARGIN_S = 30.0


def _usb_error(kind: str, message: str) -> usb.core.USBError:
    strerror, code, err = _ERRORS.get(kind, ("Input/output error", LIBUSB_ERROR_IO, errno.EIO))
    if kind == "timeout":
        return usb.core.USBTimeoutError(f"{strerror}: {message}", code, err)
    return usb.core.USBError(f"{strerror}: {message}", code, err)


@dataclass(frozen=True)
class SimDeviceDescriptor:
    """The libusb device descriptor view pyusb copies its fields from (incl. bus and ports)."""

    bLength: int
    bDescriptorType: int
    bcdUSB: int
    bDeviceClass: int
    bDeviceSubClass: int
    bDeviceProtocol: int
    bMaxPacketSize0: int
    idVendor: int
    idProduct: int
    bcdDevice: int
    iManufacturer: int
    iProduct: int
    iSerialNumber: int
    bNumConfigurations: int
    bus: int
    address: int
    port_number: int | None
    port_numbers: tuple[int, ...] | None
    speed: int


@dataclass(frozen=True)
class SimDevice:
    """What enumerate_devices yields: one enumeration of one device (a new one after re-plug)."""

    key: str
    descriptor: SimDeviceDescriptor
    configurations: tuple[ConfigurationDescriptor, ...]


@dataclass(frozen=True)
class SimDeviceHandle:
    device: SimDevice
    claimed: set[int] = field(default_factory=set, compare=False, hash=False)


class _ServerUnreachableError(Exception):
    pass


class SimulatorBackend(usb.backend.IBackend):  # type: ignore[misc]  # pyusb ships no type hints
    """pyusb backend speaking JSON lines to a `RecorderBusServer` on `socket_path`."""

    def __init__(self, socket_path: Path) -> None:
        super().__init__()
        self.socket_path = Path(socket_path)
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._rfile: Any = None

    def __repr__(self) -> str:
        return f"SimulatorBackend({str(self.socket_path)!r})"

    # ------------------------------------------------------------------------ connection

    def close(self) -> None:
        with self._lock:
            self._disconnect()

    def _finalize_object(self) -> None:
        self._disconnect()

    def _disconnect(self) -> None:
        rfile, self._rfile = self._rfile, None
        sock, self._sock = self._sock, None
        if rfile is not None:
            with contextlib.suppress(OSError):
                rfile.close()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def _connect(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(_ENUMERATE_TIMEOUT_S)
                sock.connect(str(self.socket_path))
            except OSError as exc:
                sock.close()
                raise _ServerUnreachableError(
                    f"recorder bus at {self.socket_path} unreachable: {exc}"
                ) from exc
            self._sock = sock
            self._rfile = sock.makefile("rb")
        return self._sock

    def call(self, op: str, timeout_s: float | None = _ENUMERATE_TIMEOUT_S, *, gone_kind: str = "io",
             **params: Any) -> Any:
        """One request/response. A request that could not be sent on a stale connection (the server
        restarted) is sent again on a fresh one; one that was sent is never repeated: the device may
        have acted on it, exactly as a real transfer cut by an unplug."""
        line = json.dumps({"op": op, **params}).encode() + b"\n"
        with self._lock:
            for attempt in (1, 2):
                try:
                    sock = self._connect()
                except _ServerUnreachableError as exc:
                    raise _usb_error(gone_kind, str(exc)) from None
                try:
                    sock.settimeout(timeout_s)
                    sock.sendall(line)
                except OSError:
                    self._disconnect()
                    if attempt == 2:
                        raise _usb_error(gone_kind, f"recorder bus at {self.socket_path} closed") from None
                    continue
                try:
                    raw = self._rfile.readline(1 << 24)
                except TimeoutError:
                    self._disconnect()  # a late reply would desynchronise the stream
                    raise _usb_error("timeout", f"no answer from recorder bus for {op}") from None
                except OSError as exc:
                    self._disconnect()
                    raise _usb_error(gone_kind, f"recorder bus connection lost: {exc}") from None
                if not raw.endswith(b"\n"):
                    self._disconnect()
                    raise _usb_error(gone_kind, f"recorder bus closed the connection during {op}")
                break
        try:
            response = json.loads(raw)
        except ValueError:
            raise _usb_error("io", f"recorder bus sent a malformed reply to {op}") from None
        if not isinstance(response, dict):
            raise _usb_error("io", f"recorder bus sent a malformed reply to {op}")
        if not response.get("ok"):
            raise _usb_error(str(response.get("error")), str(response.get("message", "")))
        return response.get("result")

    # ---------------------------------------------------------------------- enumeration

    def enumerate_devices(self) -> list[SimDevice]:
        result = self.call("enumerate")
        devices: list[SimDevice] = []
        for record in result if isinstance(result, list) else []:
            try:
                devices.append(self._parse_device(record))
            except (DescriptorError, KeyError, TypeError, ValueError) as exc:
                # A device whose descriptors do not parse is one libusb would also skip.
                logger.warning("simulated device skipped, bad descriptors: %s", exc)
        return devices

    @staticmethod
    def _parse_device(record: dict[str, Any]) -> SimDevice:
        raw = DeviceDescriptor.from_bytes(bytes.fromhex(record["device_descriptor"]))
        config = ConfigurationDescriptor.from_bytes(bytes.fromhex(record["configuration_descriptor"]))
        ports = tuple(int(p) for p in record["port_numbers"]) or None
        descriptor = SimDeviceDescriptor(
            bLength=raw.bLength,
            bDescriptorType=raw.bDescriptorType,
            bcdUSB=raw.bcdUSB,
            bDeviceClass=raw.bDeviceClass,
            bDeviceSubClass=raw.bDeviceSubClass,
            bDeviceProtocol=raw.bDeviceProtocol,
            bMaxPacketSize0=raw.bMaxPacketSize0,
            idVendor=raw.idVendor,
            idProduct=raw.idProduct,
            bcdDevice=raw.bcdDevice,
            iManufacturer=raw.iManufacturer,
            iProduct=raw.iProduct,
            iSerialNumber=raw.iSerialNumber,
            bNumConfigurations=raw.bNumConfigurations,
            bus=int(record["bus"]),
            address=int(record["address"]),
            port_number=None if ports is None else ports[-1],
            port_numbers=ports,
            speed=int(record["speed"]),
        )
        return SimDevice(key=str(record["key"]), descriptor=descriptor, configurations=(config,))

    def get_parent(self, dev: SimDevice) -> None:
        return None

    def get_device_descriptor(self, dev: SimDevice) -> SimDeviceDescriptor:
        return dev.descriptor

    def get_configuration_descriptor(self, dev: SimDevice, config: int) -> ConfigurationDescriptor:
        if not 0 <= config < len(dev.configurations):
            raise _usb_error("not_found", f"configuration index {config}")
        return dev.configurations[config]

    def get_interface_descriptor(self, dev: SimDevice, intf: int, alt: int,
                                 config: int) -> InterfaceDescriptor:
        cfg = self.get_configuration_descriptor(dev, config)
        if not 0 <= intf < cfg.bNumInterfaces:
            raise IndexError(f"Invalid interface index {intf}")
        alternates = cfg.interfaces[intf]
        if not 0 <= alt < len(alternates):
            raise IndexError(f"Invalid alternate setting index {alt}")
        return alternates[alt]

    def get_endpoint_descriptor(self, dev: SimDevice, ep: int, intf: int, alt: int,
                                config: int) -> EndpointDescriptor:
        interface = self.get_interface_descriptor(dev, intf, alt, config)
        if not 0 <= ep < interface.bNumEndpoints:
            raise IndexError(f"Invalid endpoint index {ep}")
        return interface.endpoints[ep]

    # ---------------------------------------------------------------------------- handles

    def open_device(self, dev: SimDevice) -> SimDeviceHandle:
        self.call("open", key=dev.key, gone_kind="no_device")
        return SimDeviceHandle(dev)

    def close_device(self, dev_handle: SimDeviceHandle) -> None:
        # Runs from pyusb finalizers too: no I/O, nothing that can raise.
        dev_handle.claimed.clear()

    def set_configuration(self, dev_handle: SimDeviceHandle, config_value: int) -> None:
        self._ctrl(dev_handle, 0x00, 0x09, config_value, 0, None, 1000)

    def get_configuration(self, dev_handle: SimDeviceHandle) -> int:
        reply = self._ctrl(dev_handle, 0x80, 0x08, 0, 0, 1, 1000)
        if not isinstance(reply, bytes) or len(reply) != 1:
            raise _usb_error("io", "GET_CONFIGURATION: expected 1 byte")
        return reply[0]

    def set_interface_altsetting(self, dev_handle: SimDeviceHandle, intf: int, altsetting: int) -> None:
        self._ctrl(dev_handle, 0x01, 0x0B, altsetting, intf, None, 1000)

    def claim_interface(self, dev_handle: SimDeviceHandle, intf: int) -> None:
        config = dev_handle.device.configurations[0]
        if not any(alts[0].bInterfaceNumber == intf for alts in config.interfaces):
            raise _usb_error("not_found", f"no interface {intf}")
        self.call("open", key=dev_handle.device.key, gone_kind="no_device")
        dev_handle.claimed.add(intf)

    def release_interface(self, dev_handle: SimDeviceHandle, intf: int) -> None:
        dev_handle.claimed.discard(intf)

    def clear_halt(self, dev_handle: SimDeviceHandle, ep: int) -> None:
        self.call("open", key=dev_handle.device.key, gone_kind="no_device")

    def reset_device(self, dev_handle: SimDeviceHandle) -> None:
        self.call("reset", key=dev_handle.device.key, timeout_ms=1000, gone_kind="no_device")

    def is_kernel_driver_active(self, dev_handle: SimDeviceHandle, intf: int) -> bool:
        # usb-storage binds to mass-storage interfaces; nothing binds to the vendor interface.
        config = dev_handle.device.configurations[0]
        return any(alts[0].bInterfaceNumber == intf and alts[0].bInterfaceClass == 0x08
                   for alts in config.interfaces)

    def detach_kernel_driver(self, dev_handle: SimDeviceHandle, intf: int) -> None:
        self.call("open", key=dev_handle.device.key, gone_kind="no_device")

    def attach_kernel_driver(self, dev_handle: SimDeviceHandle, intf: int) -> None:
        self.call("open", key=dev_handle.device.key, gone_kind="no_device")

    # -------------------------------------------------------------------------- transfers

    def ctrl_transfer(self, dev_handle: SimDeviceHandle, bmRequestType: int, bRequest: int, wValue: int,
                      wIndex: int, data: array.array[int], timeout: int) -> int:
        length = len(data) * data.itemsize
        if bmRequestType & 0x80:
            reply = self._ctrl(dev_handle, bmRequestType, bRequest, wValue, wIndex, length, timeout)
            assert isinstance(reply, bytes)
            # Fill the caller's buffer in place, as libusb does; pyusb slices to the returned count.
            view = memoryview(data).cast("B")
            view[: len(reply)] = reply
            return len(reply)
        written = self._ctrl(dev_handle, bmRequestType, bRequest, wValue, wIndex, data.tobytes(), timeout)
        assert isinstance(written, int)
        return written

    def _ctrl(self, dev_handle: SimDeviceHandle, bm_request_type: int, b_request: int, w_value: int,
              w_index: int, data: bytes | int | None, timeout_ms: int) -> bytes | int:
        params: dict[str, Any] = {
            "key": dev_handle.device.key,
            "bmRequestType": bm_request_type,
            "bRequest": b_request,
            "wValue": w_value,
            "wIndex": w_index,
            "timeout_ms": max(0, int(timeout_ms)),
        }
        if bm_request_type & 0x80:
            params["wLength"] = data if isinstance(data, int) else 0
        else:
            params["data"] = data.hex() if isinstance(data, bytes) else ""
        timeout_s = None if timeout_ms <= 0 else timeout_ms / 1000.0 + _TRANSFER_MARGIN_S
        result = self.call("ctrl", timeout_s, gone_kind="no_device", **params)
        if not isinstance(result, dict):
            raise _usb_error("io", "malformed ctrl reply")
        if bm_request_type & 0x80:
            reply = bytes.fromhex(str(result.get("data", "")))
            expected = params["wLength"]
            if len(reply) > expected:
                raise _usb_error("overflow", f"{len(reply)} bytes for wLength {expected}")
            return reply
        return int(result.get("written", 0))


def get_backend(socket_path: Path) -> SimulatorBackend:
    """The backend for `usb.core.find(backend=...)` and the recorder driver."""
    return SimulatorBackend(socket_path)
