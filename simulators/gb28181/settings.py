"""What a simulated GB/T 28181 device is and how it misbehaves: `DeviceSettings` and its `Fault`s.

Settings are plain data (frozen), shared by the CLI and by tests that build a `SimulatedDevice` directly.
The password is read from a file by the CLI and never appears in a repr.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path


class Fault(StrEnum):
    """Field failures the simulator can show (shared/reference/gb28181.md section 12)."""

    WRONG_PASSWORD = "wrong-password"  # answers the digest challenge with another password
    NO_121 = "no-121"  # never sends MediaStatus 121 at the end of a Download or Playback
    DIFFERENT_Y = "different-y"  # answers the INVITE with another SSRC in y= (and streams with it)
    MISSING_Y = "missing-y"  # answers the INVITE without y= (streams with the offered SSRC)
    SSRC_MISMATCH = "ssrc-mismatch"  # answers y= as offered but the RTP carries another SSRC
    LOSS = "loss"  # drops RTP packets with probability P (their sequence numbers are skipped)
    REORDER = "reorder"  # sends a packet after the next one with probability P
    DUPLICATE = "duplicate"  # sends a packet twice with probability P
    NAT_REBIND = "nat-rebind"  # after its first keepalive, SIP comes from a new source port
    GB2312_NAME = "gb2312-name"  # Chinese channel and device names, bodies encoded in GB2312
    SPLIT_RECORDINFO = "split-recordinfo"  # RecordInfo one item per MESSAGE, parts out of order
    SLOW = "slow"  # history streams at a quarter of the asked speed (downloadspeed ignored)
    DIE_MID_STREAM = "die-mid-stream"  # stops a stream halfway: no more RTP, no 121, TCP dropped
    STALL = "stall"  # pauses a stream halfway for N seconds (`stall=2`), then goes on (an encoder hanging)
    AUDIO_DROP = "audio-drop"  # sends no audio for N seconds from halfway (`audio-drop=2`); video goes on
    # Pauses a stream for N seconds once, a whole file's length after halfway (`late-stall=3`): with
    # audio-drop, a stall while the sound is already missing.
    LATE_STALL = "late-stall"
    # As late-stall=N, but the pause sends RTP packets without payload (RFC 6263 keepalives, some all
    # padding): media stops, packets go on.
    KEEPALIVE_ONLY = "keepalive-only"


# Faults that take a probability (`loss=0.05`); the others are bare names.
PROBABILITY_FAULTS = frozenset({Fault.LOSS, Fault.REORDER, Fault.DUPLICATE})
# Faults that take seconds (`stall=2`).
SECONDS_FAULTS = frozenset({Fault.STALL, Fault.AUDIO_DROP, Fault.LATE_STALL, Fault.KEEPALIVE_ONLY})
MAX_FAULT_SECONDS = 3600.0


class SipTransportKind(StrEnum):
    UDP = "udp"
    TCP = "tcp"


class SettingsError(ValueError):
    """Settings that cannot describe a device; the message names the option."""


def parse_faults(specs: list[str]) -> dict[Fault, float]:
    """`["loss=0.1", "no-121"]` → {Fault.LOSS: 0.1, Fault.NO_121: 1.0}; unknown names are an error."""
    faults: dict[Fault, float] = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        try:
            fault = Fault(name.strip())
        except ValueError:
            known = ", ".join(f.value for f in Fault)
            raise SettingsError(f"unknown fault {name!r}; known: {known}") from None
        if fault in PROBABILITY_FAULTS:
            if not sep:
                raise SettingsError(f"fault {fault.value} needs a probability: {fault.value}=P")
            try:
                probability = float(value)
            except ValueError:
                raise SettingsError(f"fault {fault.value}: {value!r} is not a number") from None
            if not 0.0 <= probability <= 1.0:
                raise SettingsError(f"fault {fault.value}: probability {probability} is outside 0..1")
            faults[fault] = probability
        elif fault in SECONDS_FAULTS:
            try:
                seconds = float(value) if sep else -1.0
            except ValueError:
                raise SettingsError(f"fault {fault.value}: {value!r} is not a number") from None
            if not 0.0 < seconds <= MAX_FAULT_SECONDS:
                raise SettingsError(f"fault {fault.value} needs seconds, 0 < N <= {MAX_FAULT_SECONDS:g}: "
                                    f"{fault.value}=N")
            faults[fault] = seconds
        elif sep:
            raise SettingsError(f"fault {fault.value} takes no value")
        else:
            faults[fault] = 1.0
    return faults


def _is_gb_id(text: str) -> bool:
    return len(text) == 20 and text.isascii() and text.isdigit()


@dataclass(frozen=True)
class Channel:
    """One video channel of the device (what Catalog lists and INVITEs address)."""

    channel_id: str
    name: str


@dataclass(frozen=True)
class DeviceSettings:
    """One simulated device. Times are seconds; `clock_offset_s` is how far the device's clock is off
    UTC + `utc_offset_s` (Beijing time by default, GB/T 28181 section 9.10)."""

    platform_host: str
    platform_port: int
    platform_id: str
    device_id: str
    password: str = field(repr=False)
    media_dir: Path | None = None
    domain: str | None = None  # the SIP domain in URIs; default: the platform id's first 10 digits
    transport: SipTransportKind = SipTransportKind.UDP
    bind_host: str = "127.0.0.1"
    sip_port: int = 0  # 0: any free port
    media_host: str | None = None  # address put in SDP answers; default: the bind address
    # The address put in Via and Contact. A 4G device behind carrier NAT puts its private address there
    # (research notes section 2): a platform must answer to the source address, never to this.
    contact_host: str | None = None
    accept_date: bool = True  # set the clock from the REGISTER 200's Date header, as devices do
    register_expires_s: int = 3600
    register_retry_s: float = 60.0  # GB/T 28181 9.1.1: retries not more often than every 60 s
    keepalive_interval_s: float = 60.0
    channels: tuple[Channel, ...] = ()
    manufacturer: str = "evidence-edge"
    model: str = "SIM-4G-BWC"
    firmware: str = "sim-1.0"
    device_name: str = "simulated recorder"
    utc_offset_s: int = 8 * 3600
    clock_offset_s: float = 0.0
    records_per_message: int = 10
    faults: dict[Fault, float] = field(default_factory=dict)
    seed: int = 0
    live_file: Path | None = None  # Play loops this file; default: the first recording, else testsrc
    max_sessions: int = 4  # concurrent INVITE sessions; more get 486 Busy Here
    bye_wait_s: float = 60.0  # a stream that ended and got no BYE in this time is ended by the device
    rtp_payload_bytes: int = 1400

    def __post_init__(self) -> None:
        for name in ("platform_id", "device_id"):
            if not _is_gb_id(getattr(self, name)):
                raise SettingsError(f"{name} must be 20 digits, not {getattr(self, name)!r}")
        if not 0 < self.platform_port < 65536:
            raise SettingsError(f"platform port {self.platform_port} is outside 1..65535")
        if self.keepalive_interval_s <= 0 or self.register_expires_s <= 0:
            raise SettingsError("keepalive interval and register expiry must be positive")
        if self.records_per_message < 1:
            raise SettingsError("records_per_message must be at least 1")
        if not 188 <= self.rtp_payload_bytes <= 8000:
            raise SettingsError("rtp_payload_bytes must be 188..8000")
        for channel in self.channels:
            if not _is_gb_id(channel.channel_id):
                raise SettingsError(f"channel id must be 20 digits, not {channel.channel_id!r}")

    @property
    def sip_domain(self) -> str:
        return self.domain or self.platform_id[:10]

    @property
    def channel_list(self) -> tuple[Channel, ...]:
        """The channels; by default one, whose id is the device id with type code 131 (camera)."""
        if self.channels:
            return self.channels
        chinese = Fault.GB2312_NAME in self.faults
        return (Channel(self.device_id[:10] + "131" + self.device_id[13:],
                        "执法记录仪通道一" if chinese else "channel 1"),)

    def has(self, fault: Fault) -> bool:
        return fault in self.faults

    def probability(self, fault: Fault) -> float:
        return self.faults.get(fault, 0.0)

    def seconds(self, fault: Fault) -> float:
        """The seconds of a fault that takes them (`stall=2`); 0 when it is not set."""
        return self.faults.get(fault, 0.0)
