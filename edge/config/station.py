"""Station configuration: the TOML file of a docking station or room PC, validated by pydantic models.

`load_config` turns validation errors into `ConfigError` whose message names the file, the key path and
what was expected (see `edge.config.base`).
"""

from __future__ import annotations

import ipaddress
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from edge.config.base import (
    HTTP_URL_OR_EMPTY,
    IDENTIFIER,
    SecretRef,
    StrictModel,
    parse_toml_model,
    read_config_text,
)
from edge.config.rooms import RoomsSection, serial_port_value
from edge.config.serial_lines import check_serial_lines_apart


class StationSection(StrictModel):
    id: Annotated[str, Field(pattern=IDENTIFIER, description="Station id, unique in the agency")]
    name: str = Field("", description="Human name shown in reports")
    unit_code: str = Field("", max_length=32, description="Unit (单位) code of the station's owner")
    unit_name: str = Field("", max_length=64, description="Unit (单位) name")
    store_dir: Path = Field(description="Evidence store: state DB, ledger, keys, items")
    clock: Literal["auto", "trusted", "untrusted"] = Field(
        "auto",
        description="Whether the station clock may set recorder clocks: auto asks the time-sync "
        "sources of [time_sync] in order (chrony, systemd-timesyncd, systemd-timedated, adjtimex)",
    )
    checkpoint_every: int = Field(
        1, ge=1, le=100_000,
        description="The ledger signs a checkpoint at least every this many entries; declared in each "
        "station_started entry, so that `edge verify` names a longer run without one (deleted checkpoints). "
        "1 (the default) signs each entry, dating each by the station's signature; disclosure packages bind "
        "their entries through other cases' (format 2) entries at any cadence",
    )


TimeSyncSource = Literal["chrony", "timesyncd", "timedated", "adjtimex"]
# A command name looked up on PATH, or an absolute path; never arguments.
COMMAND = r"^(/[^\x00-\x1f]{1,255}|[A-Za-z0-9._+-]{1,64})$"


class TimeSyncSection(StrictModel):
    """How `station.clock = "auto"` reads whether the station clock is synchronised."""

    sources: tuple[TimeSyncSource, ...] = Field(
        ("chrony", "timesyncd", "timedated", "adjtimex"),
        min_length=1,
        description="Sources asked in this order; the first that can tell decides",
    )
    chronyc: str = Field("chronyc", pattern=COMMAND, description="chronyc command (name or absolute path)")
    chrony_max_error_ms: float = Field(
        250.0, gt=0, le=1000, description="Largest clock error chrony may report for the clock to be trusted"
    )
    timesyncd_flag: Path = Field(
        Path("/run/systemd/timesync/synchronized"),
        description="File systemd-timesyncd touches at every synchronisation",
    )
    timesyncd_max_age_s: float = Field(
        7200.0, gt=0, le=7 * 86400, description="Oldest last synchronisation that still counts"
    )
    busctl: str = Field("busctl", pattern=COMMAND, description="busctl command, to ask systemd-timedated")
    command_timeout_s: float = Field(2.0, gt=0, le=30, description="Time limit for chronyc or busctl")

    @model_validator(mode="after")
    def _valid(self) -> TimeSyncSection:
        if len(set(self.sources)) != len(self.sources):
            raise ValueError("time_sync.sources lists a source twice")
        if not self.timesyncd_flag.is_absolute():
            raise ValueError("time_sync.timesyncd_flag must be an absolute path")
        return self


class UsbSection(StrictModel):
    backend: Literal["libusb", "simulator"] = Field("libusb", description="pyusb backend")
    simulator_socket: Path | None = Field(None, description="Socket of `python -m simulators recorder serve`")
    poll_interval_s: float = Field(1.0, gt=0, le=60)
    mount_root: Path = Field(
        description="Where recorder volumes are mounted, one directory per bay (the udev rule's "
        "systemd-mount); a new mount directly under it is a docking"
    )
    volume_timeout_s: float = Field(30.0, gt=0, le=600, description="Wait for a volume after mode switch")
    mass_storage_tz_offset_min: int | None = Field(
        None,
        ge=-720,
        le=840,
        description="UTC offset of the wall clock mass-storage-only recorders write into file names and "
        "FAT times (they cannot say); unset: the station's own time zone",
    )
    vfat_codepage: Literal[437, 737, 775, 850, 852, 855, 857, 860, 861, 862, 863, 864, 865, 866, 869, 874,
                           932, 936, 949, 950] | None = Field(
        None,
        description="Code page of FAT 8.3 short names (936: GBK, as most recorders here write them); the "
        "udev rule must mount vfat with this codepage= and the kernel needs nls_cp<N> (edge check-config "
        "says both); unset: the kernel's default (437)",
    )
    volume_rescan_interval_s: float = Field(
        5.0,
        ge=0.1,
        le=3600,
        description="Re-read the mount table at least this often, in case a change notification was "
        "missed; mounts are normally noticed at once",
    )

    @model_validator(mode="after")
    def _socket_for_simulator(self) -> UsbSection:
        if self.backend == "simulator" and self.simulator_socket is None:
            raise ValueError("backend 'simulator' needs simulator_socket")
        return self


# How long a bay's presence must hold before it stands (edge.sources.usb.bay_presence): fixed, a property
# of bay switches. The bouncing settings below are checked against it.
BAY_SETTLE_S = 0.25


class BouncingSection(StrictModel):
    """When a bay counts as bouncing (its presence toggling just slower than the settle time, or for
    ever: a worn switch, a faulty or hostile board) and how its raw events are recorded then
    (edge.sources.usb.bay_presence). The defaults suit a person docking by hand."""

    changes_max: int = Field(
        4, ge=3, le=100,
        description="More settled presence changes of one bay than this within window_s make it bouncing "
        "(a person docking, pulling out and docking again makes 3, so at least 3)",
    )
    window_s: float = Field(20.0, gt=0, le=3600, description="The window changes_max is counted in, seconds")
    report_first_s: float = Field(
        60.0, ge=10, le=86400,
        description="A bouncing bay's counted raw events are first recorded this long after it started, "
        "then with the interval doubling up to report_max_s, seconds",
    )
    report_max_s: float = Field(
        3600.0, ge=300, le=86400,
        description="The longest interval between two records of a bouncing bay, seconds (bounds the "
        "ledger entries a bouncing bay makes a day)",
    )
    calm_s: float = Field(
        30.0, gt=BAY_SETTLE_S, le=3600,
        description="A bouncing bay is a bay again once its presence held still this long, seconds",
    )

    @model_validator(mode="after")
    def _coherent(self) -> BouncingSection:
        # Each settled change needs the bay to hold still for the settle time: a window shorter than
        # changes_max of them can never see one change too many, and no bay would ever be called bouncing.
        shortest = self.changes_max * BAY_SETTLE_S
        if self.window_s <= shortest:
            raise ValueError(
                f"window_s = {self.window_s:g} is too short for changes_max = {self.changes_max}: "
                f"{self.changes_max + 1} settled changes take more than {shortest:g} s (each holds "
                f"{BAY_SETTLE_S:g} s), so no bay could ever be found bouncing; make window_s longer than "
                f"{shortest:g} s"
            )
        if self.report_max_s < self.report_first_s:
            raise ValueError(
                f"report_max_s = {self.report_max_s:g} is shorter than report_first_s = "
                f"{self.report_first_s:g}: the interval between records of a bouncing bay only grows"
            )
        return self


class DockSection(StrictModel):
    port: str = Field("", description="pyserial URL of the bay controller; empty: no controller")
    baudrate: int = Field(115200, gt=0)
    bouncing: BouncingSection = Field(
        default_factory=BouncingSection, description="When a bay is bouncing, and how it is recorded then"
    )


class BayConfig(StrictModel):
    number: int = Field(ge=1, le=64)
    usb_port: str = Field(pattern=r"^\d+-\d+(\.\d+)*$", description="USB port path, e.g. 1-1.3")


class RecorderEntry(StrictModel):
    device_serial: str = Field(pattern=r"^[A-Za-z0-9-]{1,32}$", description="Product serial (产品序号)")
    usb_serial: str = Field("", pattern=r"^[A-Za-z0-9-]{0,64}$", description="USB iSerialNumber, if pinned")
    password: SecretRef | None = Field(None, description="Overrides recorders.default_password")
    note: str = ""


class RecordersSection(StrictModel):
    allow_unknown: bool = Field(False, description="Accept recorders not on the allow-list (not advised)")
    default_password: SecretRef | None = Field(None, description="Reference to the usual device password")
    allow: list[RecorderEntry] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> RecordersSection:
        seen: set[str] = set()
        for entry in self.allow:
            if entry.device_serial in seen:
                raise ValueError(f"recorder {entry.device_serial} is listed twice")
            seen.add(entry.device_serial)
        return self

    def entry(self, device_serial: str) -> RecorderEntry | None:
        return next((e for e in self.allow if e.device_serial == device_serial), None)

    def entry_for_usb(self, usb_serial: str) -> RecorderEntry | None:
        return next((e for e in self.allow if e.usb_serial and e.usb_serial == usb_serial), None)


class WipePolicy(StrEnum):
    NEVER = "never"
    # Erase once the stored copy and the recorder's file were re-read and matched. Nobody outside the
    # station has seen the acquisition yet: whoever can rewrite the store (the station key lies beside
    # it) can then remove the item and re-sign the chain, and the recorder's copy is gone too.
    AFTER_VERIFY = "after-verify"
    # Erase only once a head of the station ledger signed by the central (a witnessed head) covers the
    # item's `sealed` entry: the central then holds the record of the acquisition and seal, so no
    # rewrite of the store can remove it unseen. Without [uplink], nothing is erased (the default).
    AFTER_WITNESS = "after-witness"
    # Erase only once the central's receipt for the file verified locally (needs [uplink]).
    AFTER_RECEIPT = "after-receipt"


EVIDENCE_EXTENSIONS = [
    "mp4",
    "mov",
    "avi",
    "mkv",
    "ts",
    "ps",
    "dav",
    "h264",
    "h265",
    "wav",
    "mp3",
    "aac",
    "m4a",
    "amr",
    "jpg",
    "jpeg",
    "png",
    "bmp",
    "gps",
    "nmea",
]


class OffloadSection(StrictModel):
    extensions: list[Annotated[str, Field(pattern=r"^[a-z0-9]{1,8}$")]] = Field(
        default_factory=lambda: list(EVIDENCE_EXTENSIONS),
        description="File extensions (lower case) that are evidence; other files (PARAM.INI, "
        "firmware, logs) are listed in the session record and never copied or erased",
    )
    concurrency: int = Field(4, ge=1, le=64, description="Bays offloaded at once")
    verify_reread: bool = Field(
        True,
        description="Re-read each stored copy from disk (not the page cache) and match it with the "
        "acquisition hash; recorders are only erased when this is on",
    )
    reread_original: bool = Field(
        False,
        description="Also read every original a second time from its device and compare it with the stored "
        "copy byte for byte: catches a device or cable that returns different bytes on two reads without an "
        "I/O error, at the cost of reading every recorder twice (over USB 2.0 as long as the copy itself). "
        "Whatever this says, a recorder file is read again (proven to reach the device) and matched with "
        "the acquisition hash just before it is erased; only such a proven read made here spares that one",
    )
    chunk_bytes: int = Field(1 << 20, ge=4096, le=64 << 20, multiple_of=4096, description="Copy buffer size")
    max_file_bytes: int = Field(256 << 30, gt=0, description="Refuse larger files as implausible")
    max_files: int = Field(100_000, gt=0, description="Refuse volumes with more files")
    max_depth: int = Field(8, ge=1, le=64)
    max_dir_entries: int = Field(
        20_000, gt=0, le=1_000_000,
        description="Entries looked at in one volume directory; the rest is refused unlisted (memory bound)",
    )
    max_entries: int = Field(
        250_000, gt=0, le=10_000_000,
        description="Entries looked at on one volume; the rest is refused unlisted (memory bound)",
    )
    min_free_bytes: int = Field(1 << 30, ge=0, description="Keep this much free on the store disk")


class WipeSection(StrictModel):
    policy: WipePolicy = WipePolicy.AFTER_WITNESS
    witness_wait_s: float = Field(
        20.0, ge=0, le=600,
        description="after-witness: how long a docked recorder waits (without holding an offload slot) "
        "for the central to witness its sealed items; the wait ends early when a ledger push fails, and "
        "files not witnessed by then stay on the recorder and are erased at a later docking",
    )
    receipt_wait_s: float = Field(
        900.0, ge=0, le=86400,
        description="after-receipt: how long a docked recorder waits for receipts; files whose receipt "
        "has not verified by then stay on the recorder and are erased at a later docking",
    )


_WINDOW = r"^\d{2}:\d{2}-\d{2}:\d{2}$"


class TransportName(StrEnum):
    """The wire protocols the uplink can speak (``edge.uplink.transports`` maps each to its module)."""

    TUS = "tus"  # tus 1.0 resumable uploads and the central's JSON API over HTTPS with mutual TLS
    MQTT = "mqtt"  # EMQX-compatible file transfer and the central's API over the [mqtt] broker


class UplinkSection(StrictModel):
    """How the station sends sealed evidence to the central receiver (tus over HTTPS with mutual TLS, or
    file transfer over the [mqtt] broker, or both with failover)."""

    transport: TransportName = Field(
        TransportName.TUS,
        description="Wire protocol to the central: 'tus' (tus 1.0 over HTTPS with mutual TLS) or 'mqtt' "
        "(EMQX-compatible file transfer and the central's API over the [mqtt] broker). Spool, retry, "
        "breaker, receipts and purge are the same whatever it is",
    )
    transports: list[TransportName] = Field(
        default_factory=list, max_length=2,
        description="Instead of transport: the transports in order of preference, e.g. ['mqtt', 'tus']. The "
        "first is used; after its outage persists (failover_after_failures attempts over at least "
        "failover_after_s) the next one is; the first is tried again every failback_after_s and used as "
        "soon as it answers",
    )
    failover_after_failures: int = Field(
        3, ge=1, le=1000, description="transports: consecutive unanswered calls before failing over"
    )
    failover_after_s: float = Field(
        30.0, ge=0, le=86400,
        description="transports: and the failures span at least this long (a blip does not fail over)",
    )
    failback_after_s: float = Field(
        60.0, gt=0, le=86400,
        description="transports: while failed over, the preferred transport is tried again this often",
    )
    failover_after_busy_s: float = Field(
        600.0, ge=0, le=7 * 86400,
        description="transports: the central's busy answers (503 with Retry-After and its own error "
        "document, 429, a quota pause) are answers, not silence, until they have been all a transport "
        "answered for this long; then each further one counts as unanswered",
    )
    mqtt_max_packet_kb: int = Field(
        1024, ge=4, le=256 * 1024,
        description="mqtt: the broker's largest packet (EMQX mqtt.max_packet_size, Mosquitto max_packet_size)"
        ", in KiB; segments and API requests are cut to fit it",
    )
    mqtt_segment_kb: int = Field(
        1024, ge=1, le=256 * 1024,
        description="mqtt: largest file-transfer segment in KiB (smaller if the packet limit demands)",
    )
    mqtt_segments_in_flight: int = Field(
        8, ge=1, le=256,
        description="mqtt: segments sent and not yet confirmed by the receiver, per station; memory is this "
        "many segments whatever the file size",
    )
    mqtt_result_timeout_s: float = Field(
        30.0, gt=0, le=3600,
        description="mqtt: a segment the receiver has not confirmed this long after the broker took it is "
        "sent again (a result may be lost); a request unanswered after request_timeout_s is retried later",
    )
    central_url: str = Field(
        "", pattern=HTTP_URL_OR_EMPTY,
        description="Base URL of the central receiver, e.g. https://evidence.example:8443; empty: no uplink",
    )
    identity_dir: Path | None = Field(
        None, description="Enrollment bundle from `edge central enroll` (client.crt, client.key, ca.crt, "
        "central-signing.pub)",
    )
    insecure_plain_http: bool = Field(
        False, description="Development only: plain HTTP, station named by a header; never in production"
    )
    central_signing_key: Path | None = Field(
        None, description="Pinned central signing key; default: central-signing.pub in identity_dir"
    )
    chunk_mb: int = Field(8, ge=1, le=256, description="tus PATCH size; each chunk carries a SHA-256")
    concurrency: int = Field(2, ge=1, le=32, description="Uploads in flight at once")
    bandwidth_mbit_s: float = Field(0, ge=0, description="Aggregate upload limit; 0: unlimited")
    windows: list[Annotated[str, Field(pattern=_WINDOW)]] = Field(
        default_factory=list, description="Local times uploads may run, e.g. ['22:00-06:00']; empty: always"
    )
    request_timeout_s: float = Field(120.0, gt=0, le=3600)
    backoff_base_s: float = Field(1.0, gt=0, le=3600)
    backoff_max_s: float = Field(300.0, gt=0, le=86400)
    breaker_failures: int = Field(5, ge=1, le=1000, description="Consecutive failures that open the circuit")
    breaker_open_s: float = Field(60.0, gt=0, le=86400, description="Pause before probing the central again")
    retry_after_max_s: float = Field(
        900.0, ge=0, le=86400,
        description="A Retry-After from the central (503 busy, 507 quota) holds the item and the breaker's "
        "next probe that long, but never longer than this (anyone in between can send the header)",
    )
    retention_days: float | None = Field(
        30.0, ge=0,
        description="Purge the local copy this long after its receipt verified; unset: keep for ever",
    )
    purge_max_per_hour: int = Field(
        600, ge=1, le=1_000_000,
        description="At most this many local copies are purged an hour (on the boot clock): a clock fault "
        "that makes receipts look old cannot purge everything in one pass",
    )
    purge_max_downtime_h: float = Field(
        168.0, gt=0, le=87_600,
        description="The purge believes the wall clock only up to the newest ledger entry of the previous "
        "run plus the time since boot plus this much downtime: a clock reset to the future cannot purge "
        "(see edge.uplink.retention)",
    )
    ledger_push_delay_s: float = Field(
        2.0, ge=0, le=300,
        description="New ledger entries go to the central this long after the first of them (erasures at "
        "once), so that the tail the central has not witnessed stays short",
    )
    ledger_push_shutdown_s: float = Field(
        5.0, ge=0, le=60, description="At shutdown, how long the last ledger push may take"
    )
    tree_head_interval_s: float = Field(
        300.0, gt=0, le=86400,
        description="How often the station fetches the central's signed tree head and checks that the log "
        "only grew (a consistency proof from the newest head it holds)",
    )
    officers_interval_s: float = Field(
        300.0, gt=0, le=86400,
        description="How often the station asks the central for a newer officer list (the agency's, signed "
        "by the central; also at every uplink start, so a station offline for days catches up at once)",
    )
    fleet_report_interval_s: float = Field(
        300.0, gt=0, le=86400,
        description="How often the station reports its recorders (out with whom since when, in which bay) "
        "to the central (also at every uplink start)",
    )

    @property
    def transport_order(self) -> list[TransportName]:
        """The transports to use, preferred first: ``transports``, or the one ``transport`` names."""
        return list(self.transports) if self.transports else [self.transport]

    @property
    def enabled(self) -> bool:
        return bool(self.central_url) or TransportName.MQTT in self.transport_order

    @model_validator(mode="after")
    def _transport_consistent(self) -> UplinkSection:
        order = self.transport_order
        if self.transports:
            if len(set(self.transports)) != len(self.transports):
                raise ValueError("transports names a transport twice")
            if "transport" in self.model_fields_set and self.transport is not self.transports[0]:
                raise ValueError("set transport or transports, not both")
        if TransportName.MQTT in order and self.identity_dir is None and self.central_signing_key is None:
            raise ValueError(
                "transport 'mqtt' needs identity_dir (the enrollment bundle with the central's signing "
                "key) or central_signing_key"
            )
        if TransportName.TUS in order and len(order) > 1 and not self.central_url:
            raise ValueError("transports names 'tus', which needs central_url")
        if not self.central_url:
            return self
        if self.insecure_plain_http:
            if not self.central_url.startswith("http://"):
                raise ValueError("insecure_plain_http needs an http:// central_url")
            if self.central_signing_key is None and self.identity_dir is None:
                raise ValueError("insecure_plain_http needs central_signing_key (the pinned central key)")
        else:
            if not self.central_url.startswith("https://"):
                raise ValueError("central_url must be https:// (plain HTTP only with insecure_plain_http)")
            if self.identity_dir is None:
                raise ValueError("central_url needs identity_dir (the bundle from `edge central enroll`)")
        return self

    @property
    def pinned_key_path(self) -> Path | None:
        if self.central_signing_key is not None:
            return self.central_signing_key
        return None if self.identity_dir is None else self.identity_dir / "central-signing.pub"


# mqtts://host or mqtts://host:port: MQTT over TLS only (the station authenticates with its certificate
# or a password, and neither crosses a network in clear).
MQTT_BROKER_URL_OR_EMPTY = r"^(mqtts://[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?|mqtts://\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?)?$"
# Topic levels without wildcards, without a leading `$` (reserved for the broker) and without empty levels.
MQTT_TOPIC_PREFIX = r"^[A-Za-z0-9_.-]{1,64}(/[A-Za-z0-9_.-]{1,64}){0,7}$"
MQTT_DEFAULT_PORT = 8883


class MqttProtocolVersion(StrEnum):
    V5 = "5"
    V311 = "3.1.1"


class MqttSection(StrictModel):
    """The station's MQTT connection (edge.mqtt): telemetry, commands and evidence over a broker."""

    broker_url: str = Field(
        "", pattern=MQTT_BROKER_URL_OR_EMPTY,
        description="mqtts://host[:port] of the agency's broker (port 8883 when omitted); empty: no MQTT",
    )
    client_id: str = Field(
        "", pattern=r"^([A-Za-z0-9][A-Za-z0-9._-]{0,63})?$",
        description="MQTT client id; empty: '<station id>-<secret>' (edge.mqtt.client_ids, the secret kept "
        "in <store_dir>/mqtt-client.secret). The broker keys the persistent session by it, so it must stay "
        "the same across restarts, and be secret: Mosquitto lets any client it accepts take a session over "
        "by naming its id",
    )
    protocol: MqttProtocolVersion = Field(
        MqttProtocolVersion.V5,
        description="'5' (reason codes on every acknowledgement) or '3.1.1' (a refused publish is dropped "
        "by the broker without a word)",
    )
    keepalive_s: int = Field(
        60, ge=5, le=3600,
        description="MQTT keep-alive: after 1.5 times this of silence either side drops the connection",
    )
    session_expiry_s: int = Field(
        7 * 86400, ge=60, le=0xFFFFFFFE,
        description="How long the broker keeps the station's session (subscriptions, queued QoS 1 messages) "
        "while it is offline (MQTT 5; a 3.1.1 broker keeps it as its own configuration says)",
    )
    topic_prefix: str = Field(
        "evidence", pattern=MQTT_TOPIC_PREFIX,
        description="First levels of every topic; the station's own are <prefix>/stations/<station id>/...",
    )
    identity_dir: Path | None = Field(
        None, description="Enrollment bundle whose client certificate the station presents to the broker; "
        "unset: [uplink] identity_dir",
    )
    ca_file: Path | None = Field(
        None, description="CA certificate that issued the broker's certificate; unset: ca.crt of the bundle",
    )
    username: str = Field(
        "", max_length=128,
        description="Password login instead of a client certificate (brokers that cannot map certificates "
        "to identities); empty: the certificate is the identity",
    )
    password: SecretRef | None = Field(
        None, description="Reference to the broker password (env:, file:, credential:), with username",
    )
    connect_timeout_s: float = Field(10.0, gt=0, le=300, description="TCP connect and TLS handshake limit")
    publish_timeout_s: float = Field(
        60.0, gt=0, le=3600,
        description="A QoS 1 publish not acknowledged by the broker this long after it was handed over "
        "fails (it may still be delivered later: QoS 1 is at least once)",
    )
    backoff_base_s: float = Field(1.0, gt=0, le=3600, description="First reconnect delay (full jitter)")
    backoff_max_s: float = Field(120.0, gt=0, le=86400, description="Longest reconnect delay")
    telemetry_interval_s: float = Field(
        2.0, ge=0, le=3600,
        description="Shortest time between two publishes of one retained status topic (a burst of changes "
        "goes out as its last state; an unchanged document is never sent again)",
    )
    telemetry_event_queue: int = Field(
        1000, ge=1, le=1_000_000,
        description="Events (item-sealed, receipt, error) held while the broker is away; beyond it the "
        "oldest are dropped and counted",
    )
    command_window_s: float = Field(
        300.0, ge=10, le=86400,
        description="A command from the central is executed only when its issued_at is this close to the "
        "station clock (request ids are kept well beyond it, so a replay is refused)",
    )

    @property
    def enabled(self) -> bool:
        return bool(self.broker_url)

    @property
    def host_port(self) -> tuple[str, int]:
        """Host and port of `broker_url` (an IPv6 address without its brackets)."""
        rest = self.broker_url.removeprefix("mqtts://")
        if rest.startswith("["):
            host, _, port = rest[1:].partition("]")
            port = port.removeprefix(":")
        else:
            host, _, port = rest.partition(":")
        return host, int(port) if port else MQTT_DEFAULT_PORT

    @model_validator(mode="after")
    def _consistent(self) -> MqttSection:
        if self.broker_url:
            port = self.host_port[1]
            if not 1 <= port <= 65535:
                raise ValueError(f"broker_url port must be within 1-65535, got {port}")
        if bool(self.username) != (self.password is not None):
            raise ValueError("username and password go together (neither: the certificate is the identity)")
        if self.backoff_max_s < self.backoff_base_s:
            raise ValueError("backoff_max_s must be >= backoff_base_s")
        return self


GB_SIP_ID = r"^[0-9]{20}$"  # GB/T 28181-2016 Annex D: 20 digits
GB_DOMAIN = r"^[0-9]{10}$"  # the SIP domain (realm): the first 10 digits of the platform's id, by convention
GbDeviceId = Annotated[str, Field(pattern=GB_SIP_ID)]
_CLOCK_TIME = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"


class GbMediaTransport(StrEnum):
    """How a device sends media to the station (GB/T 28181 Annex L): RTP over UDP, over TCP to the station's
    listening port (tcp-passive, the standard's default), or over TCP from the device's (tcp-active)."""

    UDP = "udp"
    TCP_PASSIVE = "tcp-passive"
    TCP_ACTIVE = "tcp-active"


class Gb28181DeviceEntry(StrictModel):
    """One device allowed to register, keyed by its 20-digit id in [gb28181.devices]."""

    password: SecretRef = Field(
        description="Reference to the device's SIP password (env:, file:, credential:); device passwords are "
        "weak, so they are never logged or shown",
    )
    name: str = Field("", max_length=64, description="Human name shown by `edge gb28181 devices`")
    download: bool = Field(True, description="Download this device's recordings per [gb28181.download]")
    channels: list[GbDeviceId] = Field(
        default_factory=list, description="Channels whose recordings are downloaded; empty: every channel "
        "the device's Catalog lists",
    )
    media_transport: GbMediaTransport | None = Field(
        None, description="Overrides [gb28181.download] media_transport for this device",
    )


class Gb28181DownloadSection(StrictModel):
    """Which recordings of which devices the station downloads, when, and how the media comes."""

    enabled: bool = Field(True, description="Download recordings at all (live Play works either way)")
    when: Literal["on-registration", "schedule"] = Field(
        "on-registration",
        description="'on-registration': query and download whenever a device (re)registers; 'schedule': only "
        "inside window",
    )
    window: str = Field(
        "", pattern=rf"^({_CLOCK_TIME[1:-1]}-{_CLOCK_TIME[1:-1]})?$",
        description="Time window HH:MM-HH:MM for when = 'schedule', in the devices' zone "
        "(device_utc_offset_minutes); may wrap midnight",
    )
    lookback_days: int = Field(7, ge=1, le=366, description="How far back RecordInfo asks for recordings")
    speed: int = Field(
        4, ge=1, le=32, description="a=downloadspeed asked of the device (a hint: devices may ignore it)",
    )
    media_transport: GbMediaTransport = Field(
        GbMediaTransport.TCP_PASSIVE,
        description="udp, tcp-passive (the device connects to us) or tcp-active (we connect to it)",
    )
    media_host: str = Field("0.0.0.0", description="Address the media receivers bind")
    media_port_min: int = Field(30000, ge=1024, le=65535, description="Lowest media port (one per session)")
    media_port_max: int = Field(30999, ge=1024, le=65535, description="Highest media port")
    idle_timeout_s: float = Field(
        15.0, gt=0, le=600, description="A session whose media stops this long ends (devices that never send "
        "MediaStatus 121)",
    )
    max_recording_mb: int = Field(
        8192, ge=1, le=1_048_576, description="A recording larger than this is cut off and reported",
    )
    unlisted_recording_mb: int = Field(
        256, ge=1, le=1_048_576, description="What a download books on the spool's disk for a recording its "
        "device listed no FileSize for (max_recording_mb when larger): two downloads at once never count on "
        "the same free bytes",
    )
    concurrency: int = Field(2, ge=1, le=64, description="Downloads at once over the whole station")

    @model_validator(mode="after")
    def _consistent(self) -> Gb28181DownloadSection:
        if self.media_port_max < self.media_port_min:
            raise ValueError("media_port_max must be >= media_port_min")
        if self.media_port_max - self.media_port_min + 1 < self.concurrency:
            raise ValueError("the media port range must hold at least one port per concurrent download")
        if self.when == "schedule" and not self.window:
            raise ValueError("when = 'schedule' needs window = 'HH:MM-HH:MM'")
        if self.when != "schedule" and self.window:
            raise ValueError("window is only used with when = 'schedule'")
        return self


def default_live_socket_dir() -> Path:
    """Where the live channels' sockets go by default (edge.gb28181.live): beside the API socket, in the
    unit's runtime directory ($RUNTIME_DIRECTORY, else /run/evidence-edge), `gb28181-live`."""
    return default_api_socket().parent / "gb28181-live"


# A live socket is named <device id>-<channel id>.sock (46 bytes); sun_path holds 107 with the slash.
MAX_LIVE_SOCKET_DIR_BYTES = 107 - 1 - 46


class Gb28181LiveSection(StrictModel):
    """Live Play of channels as a stream the agent records (edge.gb28181.live): one Play per channel shared
    by its consumers, a Unix socket per channel that ffmpeg reads (`-f mpeg -i unix:PATH`)."""

    socket_dir: Path = Field(
        default_factory=default_live_socket_dir,
        description="Directory of the live channels' Unix sockets (made 0700; sockets 0600, for the agent's "
        "own user); default: gb28181-live in the runtime directory",
    )
    media_transport: GbMediaTransport = Field(
        GbMediaTransport.TCP_PASSIVE, description="How devices send live media: udp, tcp-passive, tcp-active",
    )
    linger_s: float = Field(
        5.0, ge=0, le=300, description="How long a Play goes on after its last consumer left (a recorder "
        "restarting its ffmpeg keeps it)",
    )
    consumer_buffer_kb: int = Field(
        8192, ge=64, le=262144, description="How far one consumer may fall behind before it is cut off",
    )
    retry_min_s: float = Field(
        1.0, gt=0, le=60, description="First wait before an interrupted Play is INVITEd again (doubling to "
        "retry_max_s; at once when the device comes back)",
    )
    retry_max_s: float = Field(30.0, gt=0, le=600, description="Longest wait between INVITEs of a Play")
    max_channels: int = Field(64, ge=1, le=1024, description="Live channels open at once")
    stall_s: float = Field(
        2.0, gt=0, le=600, description="Media stopping this long in a Play that then goes on is a recorded "
        "stall (an event to the holders, a gap entry); stopping for the platform's idle timeout is an "
        "interruption",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Gb28181LiveSection:
        if self.retry_max_s < self.retry_min_s:
            raise ValueError("retry_max_s must be >= retry_min_s")
        if not self.socket_dir.is_absolute():
            raise ValueError("socket_dir must be an absolute path")
        # Its length is checked with [gb28181] enabled (Gb28181Section) and when the live service starts:
        # the default follows $RUNTIME_DIRECTORY, and a station without GB/T 28181 must not fail on it.
        return self


class Gb28181Section(StrictModel):
    """The station as a GB/T 28181 platform (edge.gb28181): devices register to it over SIP, it queries
    them and pulls recordings and live video."""

    enabled: bool = Field(False, description="Run the GB/T 28181 platform service")
    sip_id: str = Field(
        "34020000002000000001", pattern=GB_SIP_ID,
        description="The station's own 20-digit SIP id (type code 200: SIP server)",
    )
    domain: str = Field(
        "3402000000", pattern=GB_DOMAIN,
        description="SIP domain, also the digest realm (devices echo the realm they are challenged with)",
    )
    listen_host: str = Field("0.0.0.0", description="Address the SIP service binds (UDP and TCP)")
    listen_port: int = Field(
        5060, ge=0, le=65535,
        description="SIP port, UDP and TCP, 1024 or above (the service has no CAP_NET_BIND_SERVICE); 0 picks "
        "a free one",
    )
    advertised_host: str = Field(
        "", max_length=253,
        description="Address devices reach the station at, for Via, Contact and SDP (behind NAT); empty: the "
        "address the route to each device leaves from",
    )
    devices: dict[GbDeviceId, Gb28181DeviceEntry] = Field(
        default_factory=dict, description="Devices allowed to register, by 20-digit id",
    )
    allow_unknown_devices: bool = Field(
        False, description="Let devices not in [gb28181.devices] register with unknown_device_password (not "
        "advised); otherwise they are refused with 403 and a ledger event",
    )
    unknown_device_password: SecretRef | None = Field(
        None, description="Reference to the password unknown devices must know, with allow_unknown_devices",
    )
    register_expires_min_s: int = Field(
        3600, ge=60, le=86400,
        description="Shortest registration a device may ask for; shorter requests get 423 (standard: not "
        "under 3600 s)",
    )
    register_expires_max_s: int = Field(
        3600, ge=60, le=7 * 86400,
        description="Longest registration granted; longer requests get this (RFC 3261 10.3). Requests go to "
        "where a device last registered, so this bounds how long a NAT rebinding of its port leaves them "
        "going to the old one; may be set below register_expires_min_s (below 3600 s departs from GB/T "
        "28181 9.1.1, for carrier NATs that rebind often)",
    )
    keepalive_interval_s: int = Field(
        60, ge=5, le=3600, description="Devices' keepalive interval (standard 60)",
    )
    keepalive_timeout_count: int = Field(
        3, ge=1, le=100, description="Missed keepalives after which a device is offline (standard 3)",
    )
    time_sync: bool = Field(
        True, description="Put the station time in the Date header of a registration's 200 OK (devices set "
        "their clocks from it), only while the station clock is trusted ([station] clock) and only once the "
        "device's clock was measured (DeviceStatus): the Date goes in its next registration's 200 OK",
    )
    device_utc_offset_minutes: int = Field(
        480, ge=-720, le=840,
        description="The time zone devices keep their clocks in (GB/T 28181 9.10: Beijing time, +480): for "
        "Date, DeviceTime and RecordInfo times",
    )
    query_timeout_s: float = Field(
        30.0, gt=0, le=600, description="How long a query's answer (every part of it) may take",
    )
    describe_devices: bool = Field(
        True, description="Ask each device that comes online for DeviceInfo, Catalog and DeviceStatus (its "
        "channels and clock offset, for `edge gb28181 devices` and the ledger)",
    )
    download: Gb28181DownloadSection = Gb28181DownloadSection()
    # A factory: its default socket_dir follows $RUNTIME_DIRECTORY when the configuration is read.
    live: Gb28181LiveSection = Field(default_factory=lambda: Gb28181LiveSection())

    @field_validator("listen_port")
    @classmethod
    def _unprivileged_port(cls, port: int) -> int:
        # systemd/edge-station.service runs the agent without any capability (CapabilityBoundingSet= empty):
        # a port below 1024 would pass here and then fail to bind at every start. Granting
        # CAP_NET_BIND_SERVICE would give the whole agent every low port; a port of 1024 or above (with a
        # firewall redirect where devices must reach a low one) gives it nothing more.
        if 0 < port < 1024:
            raise ValueError(
                f"listen_port {port} is below 1024: the agent runs without CAP_NET_BIND_SERVICE "
                "(systemd/edge-station.service) and cannot bind it; use 5060 (the standard's) or another "
                "port from 1024 on, and redirect a low port to it in the firewall if devices must use one")
        return port

    @model_validator(mode="after")
    def _consistent(self) -> Gb28181Section:
        if self.sip_id in self.devices:
            raise ValueError(f"device {self.sip_id} is the platform's own sip_id")
        if self.allow_unknown_devices != (self.unknown_device_password is not None):
            raise ValueError("allow_unknown_devices and unknown_device_password go together")
        if self.enabled and not self.devices and not self.allow_unknown_devices:
            raise ValueError(
                "enabled with no [gb28181.devices] and allow_unknown_devices false: nothing could register"
            )
        if self.enabled and len(str(self.live.socket_dir).encode()) > MAX_LIVE_SOCKET_DIR_BYTES:
            raise ValueError(
                f"live.socket_dir {self.live.socket_dir} is longer than the {MAX_LIVE_SOCKET_DIR_BYTES} "
                "bytes a Unix socket path leaves for it (the default is under $RUNTIME_DIRECTORY)")
        hosts = (("listen_host", self.listen_host), ("download.media_host", self.download.media_host))
        for what, host in hosts:
            try:
                ipaddress.ip_address(host)
            except ValueError:
                raise ValueError(f"{what} must be an IP address to bind, not {host!r}") from None
        return self


class CaseDefaults(StrictModel):
    case_number: str = ""
    location: str = ""
    collector: str = ""
    subject: str = ""
    category: str = ""
    retention: str = Field("6-months", description="Retention class: 6-months, permanent, ...")


class LoggingSection(StrictModel):
    level: Literal["debug", "info", "warning", "error"] = Field(
        "info",
        description="Log level of `edge run` (unless started with -v); changes at once on reload (SIGHUP)",
    )


def default_api_socket() -> Path:
    """Where the local API listens by default: the unit's runtime directory (systemd passes
    RuntimeDirectory=evidence-edge as $RUNTIME_DIRECTORY), else /run/evidence-edge. An agent started
    outside the unit with its own $RUNTIME_DIRECTORY (a test, a second store on a bench) therefore
    never takes the production agent's socket."""
    runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return Path(runtime if runtime.startswith("/") else "/run/evidence-edge") / "station.sock"
Uid = Annotated[str, Field(pattern=r"^[0-9]{1,10}$")]
AccountName = Annotated[str, Field(pattern=r"^[A-Za-z0-9._@-]{1,64}$")]
MAX_UNIX_SOCKET_PATH_BYTES = 107  # sun_path holds 108 bytes with its terminating NUL


class ApiSection(StrictModel):
    """The station's local API (edge.observe.api): status, bays, items, tagging, metrics."""

    enabled: bool = Field(True, description="Serve the local API (edge status and the dock screen need it)")
    socket_path: Path = Field(
        default_factory=default_api_socket,
        description="Unix socket of the full API (edge status, tagging, metrics); made 0660, owned by the "
        "store's owner and operators_group; its directory is made if missing",
    )
    operators_group: str = Field(
        "",
        pattern=r"^([a-z_][a-z0-9_-]{0,31})?$",
        description="Group whose members may use the Unix socket besides root and the store's owner; "
        "empty: nobody else",
    )
    accounts: dict[Uid, AccountName] = Field(
        default_factory=dict,
        description="uid -> account name recorded as the tagger, over the uid's login name (for "
        "uids without a passwd entry, or shared service accounts)",
    )
    tcp_host: str = Field("127.0.0.1", description="Address of the dock screen's read-only TCP listener")
    tcp_port: int | None = Field(
        None, ge=0, le=65535,
        description="Port of the dock screen's read-only listener (config/station.toml uses 8470); 0 picks "
        "a free one; absent: no TCP listener",
    )
    allow_non_loopback: bool = Field(
        False,
        description="Allow tcp_host to be an address other hosts can reach (the kiosk's read-only routes "
        "only, without authentication): leave false unless the dock screen is another machine",
    )
    metrics_over_tcp: bool = Field(
        False,
        description="Also serve /metrics on the TCP listener (for a Prometheus that cannot read a socket)",
    )
    room_page_over_tcp: bool = Field(
        False,
        description="Also serve the room routes (GET /api/v1/rooms, POST /api/v1/rooms/ROOM/start|mark|"
        "change|stop) on the TCP listener, for the room page (/rooms/) in a browser on this PC: authorised "
        "by the uid owning the loopback peer's socket like the Unix socket (root, the store's owner, "
        "operators_group), state changes only with this listener's own Origin and a JSON body; every other "
        "operator route stays on the socket",
    )

    @model_validator(mode="after")
    def _loopback_unless_allowed(self) -> ApiSection:
        if self.tcp_port is not None and not self.allow_non_loopback and not is_loopback_host(self.tcp_host):
            raise ValueError(
                f"tcp_host {self.tcp_host!r} is not a loopback address: the dock screen's listener has no "
                "authentication; set allow_non_loopback = true to serve it to other hosts on purpose"
            )
        if len(str(self.socket_path).encode()) > MAX_UNIX_SOCKET_PATH_BYTES:
            raise ValueError(
                f"socket_path is longer than the {MAX_UNIX_SOCKET_PATH_BYTES} bytes a Unix socket path holds"
            )
        return self


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RecorderSettingsSection(StrictModel):
    """The agency's recorder settings, pushed to every recorder the station issues and read back."""

    width: int = Field(1920, ge=1, le=8192, description="Recording width, pixels")
    height: int = Field(1080, ge=1, le=8192, description="Recording height, pixels")
    pre_record_s: int = Field(10, ge=0, le=60, description="Pre-record (预录), seconds")
    post_record_s: int = Field(10, ge=0, le=60, description="Post-record (延录), seconds")
    split_min: int = Field(30, ge=1, le=60, description="Minutes per file (分段)")


class CardReaderSection(StrictModel):
    """The check-out desk's card reader on a serial line (drivers/serial/CARD_READER_PROTOCOL.md)."""

    port: str = Field(
        pattern=r"^(/dev/[A-Za-z0-9._:+/-]{1,200}|(socket|rfc2217)://[A-Za-z0-9.:\[\]-]{1,200}(/[A-Za-z0-9._=&?-]{0,100})?)$",
        description="pyserial URL of the reader: a device node (better /dev/serial/by-id/...) or socket://",
    )
    baudrate: int = Field(9600, gt=0, description="The reader's line speed (RDM6300-style readers: 9600)")
    framing: Literal["stx", "hex-line", "any"] = Field(
        "any", description="What the reader sends: `stx` (125 kHz STX frames), `hex-line` (13.56 MHz UIDs + "
        "CR LF), or `any` (either); a read in another framing is dropped and counted")
    repeat_hold_s: float = Field(1.0, ge=0, le=10, description="A card read again within this long of its "
                                 "previous read is the same presentation (readers repeat while it is held)")

    @field_validator("port")
    @classmethod
    def _port(cls, value: str) -> str:
        return serial_port_value(value)


class EquipmentSection(StrictModel):
    """Issue and return of recorders at this station (领用/归还; edge.equipment, README "Equipment issue and
    return")."""

    enabled: bool = Field(
        False,
        description="Keep the station's record of who holds which recorder: a docking closes the recorder's "
        "open assignment (check-in), and each offloaded item's manifest gets an `assignment` block",
    )
    min_battery_percent: int = Field(80, ge=0, le=100, description="A recorder is issued with at least this "
                                     "battery, as it reports it")
    pin_failures_max: int = Field(5, ge=1, le=20, description="Wrong PINs in a row before the 警号 is locked")
    pin_lockout_s: float = Field(900.0, gt=0, description="How long a locked 警号 stays locked, seconds "
                                 "(each further lockout before a right PIN twice as long, up to a day)")
    card_max_age_s: float = Field(10.0, gt=0, description="A card presentation older than this when served "
                                  "is dropped, never honoured late, seconds")
    settings: RecorderSettingsSection | None = Field(
        None, description="Recorder settings pushed at check-out and read back; unset: left as they are"
    )
    card_reader: CardReaderSection | None = Field(
        None, description="The card reader of the check-out desk; unset: check-out by 警号 + PIN only")
    return_to_control: bool = Field(
        True, description="After a docking that ended `done`, power-cycle the bay through the dock "
        "controller (dock protocol 4 `PWR`) so the recorder leaves mass-storage mode and waits in control "
        "mode, where the desk can issue it")
    power_off_ms: int = Field(1500, ge=100, le=10000, description="How long the bay's power is cut for that")
    control_return_timeout_s: float = Field(
        30.0, gt=0, le=600, description="How long after the power cycle the recorder must be back in control "
        "mode; later it is a new docking")
    screen_checkout: bool = Field(
        True, description="The dock screen's check-out page (警号 + PIN) over the loopback TCP listener; "
        "off: over the Unix socket only")
    pin_attempts_per_minute: int = Field(
        12, ge=1, le=600, description="PIN check-outs the local API takes per minute, over every 警号 "
        "together (the per-警号 lockout does not stop one PIN tried against many 警号); more: 429")
    clock_margin_s: float = Field(
        60.0, ge=0, le=3600,
        description="How far a recording's times (device clock corrected by the offset measured at docking) "
        "may lie outside an assignment and still be bound to it, seconds",
    )
    overdue_after_h: float = Field(
        14.0, gt=0, le=24 * 30,
        description="A recorder checked out longer than this is overdue (a shift plus a margin): one "
        "`overdue` ledger entry per assignment, the fleet view, the dock screen, `edge status` and the "
        "edge_station_recorders_overdue metric say so until it is returned, hours",
    )
    overdue_check_s: float = Field(
        60.0, ge=1, le=3600,
        description="How often the fleet is read and overdue recorders looked for, seconds",
    )


class StationConfig(StrictModel):
    station: StationSection
    usb: UsbSection
    dock: DockSection = DockSection()
    bays: list[BayConfig] = Field(default_factory=list)
    recorders: RecordersSection = RecordersSection()
    time_sync: TimeSyncSection = TimeSyncSection()
    offload: OffloadSection = OffloadSection()
    wipe: WipeSection = WipeSection()
    uplink: UplinkSection = UplinkSection()
    mqtt: MqttSection = MqttSection()
    gb28181: Gb28181Section = Gb28181Section()
    case_defaults: CaseDefaults = CaseDefaults()
    api: ApiSection = ApiSection()
    officers: dict[str, CaseDefaults] = Field(
        default_factory=dict, description="Per-officer (警号) case defaults, over the station defaults"
    )
    logging: LoggingSection = LoggingSection()
    rooms: RoomsSection = RoomsSection()
    equipment: EquipmentSection = EquipmentSection()

    @model_validator(mode="after")
    def _receipt_needs_uplink(self) -> StationConfig:
        if self.wipe.policy is WipePolicy.AFTER_RECEIPT and not self.uplink.enabled:
            raise ValueError("wipe policy 'after-receipt' needs [uplink] central_url")
        return self

    @model_validator(mode="after")
    def _bays_unique(self) -> StationConfig:
        numbers = [b.number for b in self.bays]
        ports = [b.usb_port for b in self.bays]
        if len(set(numbers)) != len(numbers):
            raise ValueError("bay numbers must be unique")
        if len(set(ports)) != len(ports):
            raise ValueError("bay usb_port values must be unique")
        return self

    @model_validator(mode="after")
    def _serial_lines_apart(self) -> StationConfig:
        # The dock controller and the rooms' panels and PTZ buses on one PC: one driver per line.
        dock = [("dock controller ([dock] port)", self.dock.port)] if self.dock.port else []
        reader = self.equipment.card_reader
        cards = [("card reader ([equipment.card_reader] port)", reader.port)] if reader is not None else []
        check_serial_lines_apart(dock + cards + self.rooms.serial_ports())
        return self

    @model_validator(mode="after")
    def _live_sockets_apart_from_the_api(self) -> StationConfig:
        # The live socket directory is made 0700 (the agent's user alone): the runtime directory holding
        # the API socket (0755, for the operators group), or a directory above it, must not be it.
        live_dir = self.gb28181.live.socket_dir
        api_dir = self.api.socket_path.parent
        if self.gb28181.enabled and (live_dir == api_dir or live_dir in api_dir.parents):
            raise ValueError(f"gb28181.live.socket_dir {live_dir} is the API socket's directory or above it "
                             "(the live sockets need a directory of their own, e.g. gb28181-live in it)")
        return self

    @model_validator(mode="after")
    def _room_gb_sources_need_the_platform(self) -> StationConfig:
        # A gb28181 room source records a channel's live Play (edge.rooms.gb_source): the device registers
        # to this station's platform, which must run and let it in.
        gb = self.gb28181
        for room in self.rooms.room:
            for source in room.source:
                if source.gb28181 is None:
                    continue
                where = f"rooms.room {room.id} source {source.id}"
                if not gb.enabled:
                    raise ValueError(f"{where} is a GB/T 28181 channel: it needs [gb28181] enabled = true")
                if source.gb28181.device_id not in gb.devices and not gb.allow_unknown_devices:
                    raise ValueError(f"{where}: device {source.gb28181.device_id} is not in "
                                     "[gb28181.devices] (it could never register)")
        return self

    @model_validator(mode="after")
    def _mqtt_transport_needs_a_broker(self) -> StationConfig:
        if TransportName.MQTT in self.uplink.transport_order and not self.mqtt.enabled:
            raise ValueError("uplink transport 'mqtt' needs [mqtt] broker_url (the broker it goes through)")
        return self

    @model_validator(mode="after")
    def _mqtt_identity(self) -> StationConfig:
        mqtt = self.mqtt
        if mqtt.enabled and not mqtt.username and self.mqtt_identity_dir is None:
            raise ValueError(
                "mqtt.broker_url needs a client certificate (mqtt.identity_dir or uplink.identity_dir) or "
                "mqtt.username with mqtt.password"
            )
        if mqtt.enabled and mqtt.username and mqtt.ca_file is None and self.mqtt_identity_dir is None:
            raise ValueError("mqtt.username needs mqtt.ca_file (the CA that issued the broker's certificate)")
        return self

    @property
    def mqtt_identity_dir(self) -> Path | None:
        """The bundle the station presents to the broker: [mqtt] identity_dir, else [uplink]'s."""
        return self.mqtt.identity_dir if self.mqtt.identity_dir is not None else self.uplink.identity_dir

    def bay_for_port(self, usb_port: str) -> int | None:
        return next((b.number for b in self.bays if b.usb_port == usb_port), None)

    def case_defaults_for(self, officer_no: str) -> CaseDefaults:
        override = self.officers.get(officer_no)
        if override is None:
            return self.case_defaults
        merged = self.case_defaults.model_dump()
        merged.update({k: v for k, v in override.model_dump(exclude_unset=True).items() if v != ""})
        return CaseDefaults(**merged)


def parse_config(text: str, source: str = "<string>") -> StationConfig:
    return parse_toml_model(text, source, StationConfig, role="station")


def load_config(path: Path) -> StationConfig:
    config = parse_config(read_config_text(path), str(path))
    base = path.parent
    # Relative paths in a config file are relative to the file, not to wherever the agent was started.
    return config.model_copy(
        update={
            "station": config.station.model_copy(
                update={"store_dir": _rooted(base, config.station.store_dir)}
            ),
            "usb": config.usb.model_copy(
                update={
                    "mount_root": _rooted(base, config.usb.mount_root),
                    "simulator_socket": None
                    if config.usb.simulator_socket is None
                    else _rooted(base, config.usb.simulator_socket),
                }
            ),
            "api": config.api.model_copy(update={"socket_path": _rooted(base, config.api.socket_path)}),
            "mqtt": config.mqtt.model_copy(
                update={
                    "identity_dir": None if config.mqtt.identity_dir is None
                    else _rooted(base, config.mqtt.identity_dir),
                    "ca_file": None if config.mqtt.ca_file is None else _rooted(base, config.mqtt.ca_file),
                }
            ),
            "uplink": config.uplink.model_copy(
                update={
                    "identity_dir": None
                    if config.uplink.identity_dir is None
                    else _rooted(base, config.uplink.identity_dir),
                    "central_signing_key": None
                    if config.uplink.central_signing_key is None
                    else _rooted(base, config.uplink.central_signing_key),
                }
            ),
        }
    )


def _rooted(base: Path, path: Path) -> Path:
    return path if path.is_absolute() else (base / path).resolve()
