"""Standard USB descriptors (USB 2.0 ch. 9.6) as frozen dataclasses with from_bytes/to_bytes.

The simulated device answers GET_DESCRIPTOR with these bytes, and the pyusb backend parses the same
bytes back into the objects pyusb reads its fields from, the way libusb parses a real device's
descriptors. One source of truth: the bytes on the wire.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import ClassVar


class DescriptorError(ValueError):
    """Descriptor bytes that do not parse."""


class DescriptorType(IntEnum):
    DEVICE = 1
    CONFIGURATION = 2
    STRING = 3
    INTERFACE = 4
    ENDPOINT = 5


LANGID_EN_US = 0x0409


@dataclass(frozen=True)
class DeviceDescriptor:
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
    bLength: int = 18
    bDescriptorType: int = int(DescriptorType.DEVICE)

    SIZE_BYTES: ClassVar[int] = 18
    _STRUCT: ClassVar[struct.Struct] = struct.Struct("<BBHBBBBHHHBBBB")

    @classmethod
    def from_bytes(cls, data: bytes) -> DeviceDescriptor:
        if len(data) != cls.SIZE_BYTES:
            raise DescriptorError(f"device descriptor: expected {cls.SIZE_BYTES} bytes, got {len(data)}")
        (length, dtype, bcd_usb, dclass, dsub, dproto, maxpkt, vid, pid, bcd_dev, i_man, i_prod, i_ser,
         n_cfg) = cls._STRUCT.unpack(data)
        if length != cls.SIZE_BYTES or dtype != DescriptorType.DEVICE:
            raise DescriptorError(f"device descriptor: expected bLength 18 type 1, got {length} type {dtype}")
        return cls(bcd_usb, dclass, dsub, dproto, maxpkt, vid, pid, bcd_dev, i_man, i_prod, i_ser, n_cfg)

    def to_bytes(self) -> bytes:
        return self._STRUCT.pack(
            self.SIZE_BYTES, DescriptorType.DEVICE, self.bcdUSB, self.bDeviceClass, self.bDeviceSubClass,
            self.bDeviceProtocol, self.bMaxPacketSize0, self.idVendor, self.idProduct, self.bcdDevice,
            self.iManufacturer, self.iProduct, self.iSerialNumber, self.bNumConfigurations,
        )


@dataclass(frozen=True)
class EndpointDescriptor:
    bEndpointAddress: int
    bmAttributes: int
    wMaxPacketSize: int
    bInterval: int
    bLength: int = 7
    bDescriptorType: int = int(DescriptorType.ENDPOINT)
    # pyusb reads these audio-class extension fields on every endpoint.
    bRefresh: int = 0
    bSynchAddress: int = 0
    extra_descriptors: tuple[int, ...] = ()

    SIZE_BYTES: ClassVar[int] = 7
    _STRUCT: ClassVar[struct.Struct] = struct.Struct("<BBBBHB")

    @classmethod
    def from_bytes(cls, data: bytes) -> EndpointDescriptor:
        if len(data) < cls.SIZE_BYTES:
            raise DescriptorError(f"endpoint descriptor: expected {cls.SIZE_BYTES} bytes, got {len(data)}")
        _, _, address, attributes, max_packet, interval = cls._STRUCT.unpack(data[: cls.SIZE_BYTES])
        return cls(address, attributes, max_packet, interval)

    def to_bytes(self) -> bytes:
        return self._STRUCT.pack(
            self.SIZE_BYTES, DescriptorType.ENDPOINT, self.bEndpointAddress, self.bmAttributes,
            self.wMaxPacketSize, self.bInterval,
        )


@dataclass(frozen=True)
class InterfaceDescriptor:
    bInterfaceNumber: int
    bAlternateSetting: int
    bInterfaceClass: int
    bInterfaceSubClass: int
    bInterfaceProtocol: int
    iInterface: int
    endpoints: tuple[EndpointDescriptor, ...] = ()
    bLength: int = 9
    bDescriptorType: int = int(DescriptorType.INTERFACE)
    extra_descriptors: tuple[int, ...] = ()

    SIZE_BYTES: ClassVar[int] = 9
    _STRUCT: ClassVar[struct.Struct] = struct.Struct("<BBBBBBBBB")

    @property
    def bNumEndpoints(self) -> int:
        return len(self.endpoints)

    def to_bytes(self) -> bytes:
        head = self._STRUCT.pack(
            self.SIZE_BYTES, DescriptorType.INTERFACE, self.bInterfaceNumber, self.bAlternateSetting,
            self.bNumEndpoints, self.bInterfaceClass, self.bInterfaceSubClass, self.bInterfaceProtocol,
            self.iInterface,
        )
        return head + b"".join(ep.to_bytes() for ep in self.endpoints)


@dataclass(frozen=True)
class ConfigurationDescriptor:
    bConfigurationValue: int
    iConfiguration: int
    bmAttributes: int
    bMaxPower: int
    # interfaces[i] = the alternate settings of interface i, alternate 0 first.
    interfaces: tuple[tuple[InterfaceDescriptor, ...], ...] = field(default=())
    bLength: int = 9
    bDescriptorType: int = int(DescriptorType.CONFIGURATION)
    extra_descriptors: tuple[int, ...] = ()

    SIZE_BYTES: ClassVar[int] = 9
    _STRUCT: ClassVar[struct.Struct] = struct.Struct("<BBHBBBBB")

    @property
    def bNumInterfaces(self) -> int:
        return len(self.interfaces)

    @property
    def wTotalLength(self) -> int:
        return len(self.to_bytes())

    def to_bytes(self) -> bytes:
        body = b"".join(alt.to_bytes() for alts in self.interfaces for alt in alts)
        head = self._STRUCT.pack(
            self.SIZE_BYTES, DescriptorType.CONFIGURATION, self.SIZE_BYTES + len(body), self.bNumInterfaces,
            self.bConfigurationValue, self.iConfiguration, self.bmAttributes, self.bMaxPower,
        )
        return head + body

    @classmethod
    def from_bytes(cls, data: bytes) -> ConfigurationDescriptor:
        """Parse a full configuration (config + interfaces + endpoints), walking bLength like libusb."""
        if len(data) < cls.SIZE_BYTES:
            raise DescriptorError(f"configuration descriptor: expected >= 9 bytes, got {len(data)}")
        length, dtype, total, n_intf, value, i_cfg, attributes, max_power = cls._STRUCT.unpack(
            data[: cls.SIZE_BYTES]
        )
        if length != cls.SIZE_BYTES or dtype != DescriptorType.CONFIGURATION:
            raise DescriptorError(
                f"configuration descriptor: expected bLength 9 type 2, got {length} type {dtype}"
            )
        if total != len(data):
            raise DescriptorError(f"configuration descriptor: wTotalLength {total}, got {len(data)} bytes")
        parsed: list[list[InterfaceDescriptor]] = []
        current: tuple[int, list[EndpointDescriptor], bytes] | None = None
        pending: list[tuple[bytes, list[EndpointDescriptor]]] = []
        offset = cls.SIZE_BYTES
        while offset < len(data):
            if offset + 2 > len(data):
                raise DescriptorError(f"configuration descriptor: truncated descriptor at offset {offset}")
            sub_length, sub_type = data[offset], data[offset + 1]
            if sub_length < 2 or offset + sub_length > len(data):
                raise DescriptorError(
                    f"configuration descriptor: bad bLength {sub_length} at offset {offset}"
                )
            chunk = data[offset : offset + sub_length]
            if sub_type == DescriptorType.INTERFACE:
                if sub_length < InterfaceDescriptor.SIZE_BYTES:
                    raise DescriptorError(f"interface descriptor: expected 9 bytes, got {sub_length}")
                current = (chunk[4], [], chunk)
                pending.append((chunk, current[1]))
            elif sub_type == DescriptorType.ENDPOINT:
                if current is None:
                    raise DescriptorError(f"endpoint descriptor before any interface at offset {offset}")
                current[1].append(EndpointDescriptor.from_bytes(chunk))
            offset += sub_length
        for chunk, endpoints in pending:
            _, _, number, alt, n_ep, i_class, i_sub, i_proto, i_intf = InterfaceDescriptor._STRUCT.unpack(
                chunk[: InterfaceDescriptor.SIZE_BYTES]
            )
            if n_ep != len(endpoints):
                raise DescriptorError(f"interface {number}: bNumEndpoints {n_ep}, found {len(endpoints)}")
            descriptor = InterfaceDescriptor(number, alt, i_class, i_sub, i_proto, i_intf, tuple(endpoints))
            if alt == 0:
                parsed.append([descriptor])
            elif parsed and parsed[-1][0].bInterfaceNumber == number:
                parsed[-1].append(descriptor)
            else:
                raise DescriptorError(f"interface {number} alternate {alt} without alternate 0")
        if len(parsed) != n_intf:
            raise DescriptorError(f"configuration descriptor: bNumInterfaces {n_intf}, found {len(parsed)}")
        return cls(value, i_cfg, attributes, max_power, tuple(tuple(alts) for alts in parsed))


def string_descriptor(text: str) -> bytes:
    encoded = text.encode("utf-16-le")
    if len(encoded) + 2 > 255:
        raise DescriptorError(f"string descriptor: {len(encoded)} bytes does not fit in 253")
    return bytes((len(encoded) + 2, DescriptorType.STRING)) + encoded


def langid_descriptor(langids: tuple[int, ...] = (LANGID_EN_US,)) -> bytes:
    return bytes((2 + 2 * len(langids), DescriptorType.STRING)) + b"".join(
        struct.pack("<H", langid) for langid in langids
    )
