"""The station's side of a file transfer: cut a file into segments that fit the broker's packet limit, read
them one at a time, and know after a reconnect what still has to be sent.

Pure planning plus positioned reads of an open file; no MQTT library, no event loop.

- :func:`segment_bytes_for` is the largest segment payload whose PUBLISH (topic with the largest offset of
  the file and a checksum level, MQTT 5 properties, payload) fits ``max_packet_bytes``.
- A :class:`SegmentPlan` is only numbers (file size, segment size): segment ``i`` covers
  ``[i * segment_bytes, min((i + 1) * segment_bytes, file_size))``. Nothing per segment is kept, so a
  plan costs the same for a 1 kB file and a 100 GB one.
- :func:`read_segment` reads one segment at its offset and hashes it (SHA-256 in the topic). Memory is one
  segment, whatever the file size. A file shorter than its plan is refused (it changed after planning).
- :class:`TransferProgress` holds one bit per segment: set only when the *receiver* reports success for
  it. A broker's PUBACK is not that: Mosquitto acknowledges a publish even with no subscriber, so a
  PUBACK says the broker took the message, not that anyone stored it. After a reconnect the station
  sends :meth:`TransferProgress.missing` again (offsets make segments idempotent), then ``fin``.
  The bits survive a restart of the station through :meth:`TransferProgress.to_bytes`.
- :func:`action_for` is what each documented reason code asks of the sender.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum

from edge.mqtt.filetransfer import (
    Command,
    FinCommand,
    InitCommand,
    Mode,
    ReasonCode,
    SegmentCommand,
    check_checksum,
    check_file_id,
    publish_packet_bytes,
)

__all__ = [
    "Action",
    "PlanError",
    "Segment",
    "SegmentPlan",
    "TransferProgress",
    "action_for",
    "iter_segments",
    "plan_segments",
    "read_segment",
    "segment_bytes_for",
]

_PLACEHOLDER_SUM = "0" * 64


class PlanError(ValueError):
    """A transfer cannot be planned or read as planned; the message says why."""


def segment_bytes_for(
    file_id: str,
    file_size: int,
    max_packet_bytes: int,
    *,
    properties_bytes: int = 0,
    mode: Mode = Mode.ASYNC,
    mqtt5: bool = True,
    preferred_bytes: int | None = None,
) -> int:
    """The largest segment payload whose PUBLISH fits ``max_packet_bytes`` for every segment of the file.

    The topic is measured with the file's largest possible offset and a checksum level, so no segment's
    topic is longer; ``properties_bytes`` are the MQTT 5 properties the sender adds (response topic,
    correlation data, user properties). ``preferred_bytes`` caps the result (smaller segments lose less
    on a resend).
    """
    check_file_id(file_id)
    if file_size < 0:
        raise PlanError(f"file size must be >= 0, got {file_size}")
    if properties_bytes < 0:
        raise PlanError(f"properties_bytes must be >= 0, got {properties_bytes}")
    topic = SegmentCommand(file_id, max(file_size - 1, 0), _PLACEHOLDER_SUM, mode).topic
    overhead = publish_packet_bytes(topic, 0, properties_bytes=properties_bytes, mqtt5=mqtt5)
    # The remaining-length field grows with the payload: start from the naive bound and step down.
    payload = max_packet_bytes - overhead
    while payload > 0 and publish_packet_bytes(
        topic, payload, properties_bytes=properties_bytes, mqtt5=mqtt5
    ) > max_packet_bytes:
        payload -= 1
    if payload < 1:
        raise PlanError(
            f"a packet limit of {max_packet_bytes} bytes leaves no room for a payload: the segment topic and "
            f"properties alone take {overhead} bytes"
        )
    if preferred_bytes is not None:
        if preferred_bytes < 1:
            raise PlanError(f"preferred segment size must be >= 1, got {preferred_bytes}")
        payload = min(payload, preferred_bytes)
    return payload


@dataclass(frozen=True)
class SegmentPlan:
    """How one file is cut: fixed-size segments, the last one shorter."""

    file_id: str
    file_size: int
    segment_bytes: int
    mode: Mode = Mode.ASYNC

    def __post_init__(self) -> None:
        check_file_id(self.file_id)
        if type(self.file_size) is not int or self.file_size < 0:
            raise PlanError(f"file size must be a non-negative integer, got {self.file_size!r}")
        if type(self.segment_bytes) is not int or self.segment_bytes < 1:
            raise PlanError(f"segment size must be a positive integer, got {self.segment_bytes!r}")

    @property
    def count(self) -> int:
        """Number of segments; an empty file has none (its transfer is init then fin)."""
        return -(-self.file_size // self.segment_bytes)

    def bounds(self, index: int) -> tuple[int, int]:
        """(offset, length) of segment ``index``."""
        if not 0 <= index < self.count:
            raise PlanError(f"segment {index} is outside 0..{self.count - 1}")
        offset = index * self.segment_bytes
        return offset, min(self.segment_bytes, self.file_size - offset)

    def index_of(self, offset: int) -> int:
        """The segment that starts at ``offset``; raises :class:`PlanError` if none does."""
        index, rest = divmod(offset, self.segment_bytes)
        if rest or not 0 <= index < self.count:
            raise PlanError(
                f"offset {offset} is not the start of a segment of {self.file_id} "
                f"({self.count} segments of {self.segment_bytes} bytes)"
            )
        return index

    def init_command(self) -> InitCommand:
        return InitCommand(self.file_id, self.mode)

    def fin_command(self, sha256: str) -> FinCommand:
        return FinCommand(self.file_id, self.file_size, check_checksum(sha256, "file SHA-256"), self.mode)


def plan_segments(
    file_id: str,
    file_size: int,
    max_packet_bytes: int,
    *,
    properties_bytes: int = 0,
    mode: Mode = Mode.ASYNC,
    mqtt5: bool = True,
    preferred_bytes: int | None = None,
) -> SegmentPlan:
    size = segment_bytes_for(
        file_id, file_size, max_packet_bytes, properties_bytes=properties_bytes, mode=mode, mqtt5=mqtt5,
        preferred_bytes=preferred_bytes,
    )
    return SegmentPlan(file_id, file_size, size, mode)


@dataclass(frozen=True)
class Segment:
    """One segment read from the file: its command (offset and SHA-256 in the topic) and its bytes."""

    command: SegmentCommand
    data: bytes

    @property
    def offset(self) -> int:
        return self.command.offset


def read_segment(fd: int, plan: SegmentPlan, index: int) -> Segment:
    """Read and hash segment ``index`` of the file open at ``fd`` (positioned reads: no shared offset)."""
    offset, length = plan.bounds(index)
    parts: list[bytes] = []
    got = 0
    while got < length:
        block = os.pread(fd, length - got, offset + got)
        if not block:
            raise PlanError(
                f"{plan.file_id}: the file ends at {offset + got} bytes, the plan says {plan.file_size}: it "
                "changed after it was planned"
            )
        parts.append(block)
        got += len(block)
    data = parts[0] if len(parts) == 1 else b"".join(parts)
    # Hashed here, never taken from the prefix digests the offload recorded (edge.ingest.prefix_digests):
    # EMQX's segment checksum is the SHA-256 of this segment alone, and no prefix digest gives that (a
    # SHA-256 of bytes 0..k is no hasher state to continue from). The file's checksum (init, fin) is the
    # item's sealed hash, already known, not computed. The uplink's read of the whole copy before an MQTT
    # upload (edge.uplink.service, Link.checks_content_on_send) cannot be spared by them either: they say
    # what the copy held at offload, and over MQTT no one compares them with the bytes sent before the
    # receiver holds the copy whole (tus: the central checks each chunk's recorded digest against the
    # bytes it received).
    checksum = hashlib.sha256(data).hexdigest()
    return Segment(SegmentCommand(plan.file_id, offset, checksum, plan.mode), data)


def iter_segments(fd: int, plan: SegmentPlan, indices: Iterable[int]) -> Iterator[Segment]:
    """The segments ``indices`` in order, one in memory at a time."""
    for index in indices:
        yield read_segment(fd, plan, index)


class Action(StrEnum):
    """What a result asks of the sender."""

    DONE = "done"
    # Send this command again (a segment; an init or abort).
    RESEND_COMMAND = "resend_command"
    # Forget every acknowledgement and send every segment again, then fin.
    RESEND_ALL = "resend_all"
    # Give the transfer up (a new file id starts it over).
    CANCEL = "cancel"
    # Wait, then send this command again.
    PAUSE_AND_RESEND = "pause_and_resend"


def action_for(command: Command, code: ReasonCode) -> Action:
    """The documented meaning of ``code`` as the answer to ``command``."""
    if code is ReasonCode.SUCCESS:
        return Action.DONE
    if code is ReasonCode.RETRANSMIT_ALL:
        return Action.RESEND_ALL
    if code is ReasonCode.RESEND:
        # For fin the server lacks segments or found the file wrong: everything again.
        return Action.RESEND_ALL if isinstance(command, FinCommand) else Action.RESEND_COMMAND
    if code is ReasonCode.CANCEL:
        return Action.CANCEL
    return Action.PAUSE_AND_RESEND


class TransferProgress:
    """Which segments of a plan the receiver has reported stored: one bit each."""

    def __init__(self, plan: SegmentPlan, bitmap: bytes | None = None) -> None:
        self.plan = plan
        size = -(-plan.count // 8)
        if bitmap is None:
            self._bits = bytearray(size)
        else:
            if len(bitmap) != size:
                raise PlanError(
                    f"{plan.file_id}: saved progress has {len(bitmap)} bytes, the plan needs {size}"
                )
            self._bits = bytearray(bitmap)
            spare = plan.count % 8
            if spare and self._bits[-1] >> spare:
                raise PlanError(f"{plan.file_id}: saved progress marks segments beyond the plan")
        self._acknowledged = sum(bin(byte).count("1") for byte in self._bits)

    def to_bytes(self) -> bytes:
        return bytes(self._bits)

    @property
    def acknowledged(self) -> int:
        return self._acknowledged

    @property
    def complete(self) -> bool:
        """Every segment stored: time for ``fin``."""
        return self._acknowledged == self.plan.count

    def is_acknowledged(self, index: int) -> bool:
        return bool(self._bits[index >> 3] >> (index & 7) & 1)

    def acknowledge(self, offset: int) -> bool:
        """Mark the segment at ``offset`` stored; False when it already was."""
        index = self.plan.index_of(offset)
        if self.is_acknowledged(index):
            return False
        self._bits[index >> 3] |= 1 << (index & 7)
        self._acknowledged += 1
        return True

    def forget(self, offset: int) -> None:
        index = self.plan.index_of(offset)
        if self.is_acknowledged(index):
            self._bits[index >> 3] &= ~(1 << (index & 7)) & 0xFF
            self._acknowledged -= 1

    def reset(self) -> None:
        self._bits = bytearray(len(self._bits))
        self._acknowledged = 0

    def missing(self) -> Iterator[int]:
        """Indices of the segments not yet reported stored, ascending (whole stored bytes skipped)."""
        count = self.plan.count
        for byte_index, byte in enumerate(self._bits):
            if byte == 0xFF:
                continue
            for bit in range(8):
                index = (byte_index << 3) | bit
                if index >= count:
                    return
                if not byte >> bit & 1:
                    yield index

    def apply(self, command: Command, code: ReasonCode) -> Action:
        """Take the receiver's result for ``command`` into account; returns what the sender should do.

        Only results from the receiver (its response topic, or a PUBACK from a broker that implements file
        transfer itself) may come here: a plain broker's PUBACK says nothing about storage.
        """
        if command.file_id != self.plan.file_id:
            raise PlanError(
                f"a result for file {command.file_id} applied to the transfer of {self.plan.file_id}"
            )
        action = action_for(command, code)
        if isinstance(command, SegmentCommand):
            if action is Action.DONE:
                self.acknowledge(command.offset)
            else:
                self.forget(command.offset)
        elif isinstance(command, FinCommand) and command.size != self.plan.file_size:
            raise PlanError(
                f"a fin result for {command.size} bytes applied to a plan of {self.plan.file_size} bytes"
            )
        if action is Action.RESEND_ALL:
            self.reset()
        return action

