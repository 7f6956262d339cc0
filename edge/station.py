"""The docking-station agent: finds recorders, runs one docking session per recorder, drives the bays.

Three sources of events feed it: USB polling (recorders in control mode), the mount-table watcher
(volumes mounted under the mount root: mass-storage recorders, and recorders switched by a session;
see `edge.sources.usb.volumes`) and the dock controller (bays inserted/removed, debounced by
`edge.sources.usb.bay_presence`, a bouncing bay recorded with back-off and flagged; charge). Sessions run
concurrently up to `offload.concurrency`; one bay's failure never touches another's session.

SIGHUP rereads the configuration file (`edge.config.reload`): each docking keeps the configuration it
started with, the next one uses the new one.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import itertools
import logging
import signal
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivers.serial.dock import BayEvent, BayEventKind, BayLed, DockDriver, DockError
from drivers.usb.mass_storage import MassStorageError, read_volume_identity
from drivers.usb.recorder import RecorderError, RecorderHandle, RecorderMode, UsbSerialsRead, find_recorders
from edge.config.base import ConfigError
from edge.config.reload import ConfigReloader
from edge.config.station import StationConfig
from edge.custody.errors import CustodyError
from edge.custody.keys import load_public_key
from edge.custody.ledger import EntryType
from edge.custody.text import hide_station_paths
from edge.equipment.checkout import CheckoutDesk
from edge.equipment.fleet import Fleet, LiveBay
from edge.equipment.fleet_monitor import FleetMonitor
from edge.equipment.policy import checkout_policy
from edge.equipment.station_desk import StationDesk
from edge.equipment.usb_recorders import RecorderAccess, UsbRecorderBench, recorder_access_from_config
from edge.gb28181.clock_history import CLOCK_HISTORY_DIR
from edge.gb28181.live import LiveError, LiveSettings, LiveStreams
from edge.gb28181.media import receiver_keeping_free
from edge.gb28181.platform import GbPlatform, PlatformSettings
from edge.gb28181.policy import DownloadPolicy
from edge.ingest.kept_space import NOTHING_HELD_OR_BOOKED, HeldOrBooked
from edge.ingest.pipeline import IngestPipeline, IngestSettings
from edge.ingest.store import StationStore
from edge.mqtt.client import MqttClient
from edge.mqtt.command_handler import CommandHandler, CommandSettings
from edge.mqtt.station_settings import station_mqtt_settings, telemetry_device_salt, telemetry_salt_path
from edge.mqtt.telemetry import TelemetryPublisher, TelemetrySettings, will_message
from edge.observe.api import LocalApi
from edge.observe.board import CentralFacts, ClockFacts, StatusBoard, TaskFacts
from edge.observe.desk_api import desk_routes
from edge.observe.facts import StoreFactsReader
from edge.observe.room_api import room_routes
from edge.observe.sink import (
    BayBouncing,
    BayUsbSerialClaim,
    BayVacated,
    RefusalClass,
    Refused,
    UsbSerialProblem,
)
from edge.pki.names import IdentityError
from edge.rooms.hardware import RoomHardware
from edge.rooms.service import RoomService
from edge.runtime.clock import station_clock_trust
from edge.runtime.collector import freeze_start_up_objects
from edge.runtime.sdnotify import SystemdNotifier
from edge.runtime.slots import ConcurrencySlot
from edge.runtime.supervise import Supervisor, SupervisorGaveUp, TaskSpec, wait_event
from edge.sources.gb28181.scheduler import GB28181_SPOOL_DIR, GbDownloadScheduler, case_block_for_downloads
from edge.sources.usb.bay_leds import led_after_presence, led_after_removal
from edge.sources.usb.bay_presence import BayPresenceDebounce, Settled
from edge.sources.usb.bays import bay_of_volume, volume_on_port
from edge.sources.usb.mounted import BoundVolumes, VolumeRoot
from edge.sources.usb.offload import BayProgress, OffloadOutcome, OffloadResult
from edge.sources.usb.session import (
    ControlSession,
    UsbAttachment,
    VolumeClaims,
    VolumeSession,
    usb_attachment,
)
from edge.sources.usb.vfat import codepage_problem, nls_problem
from edge.sources.usb.volumes import (
    VolumeEvent,
    VolumeEventKind,
    VolumeMount,
    VolumeWatcher,
    display_name,
    printable,
    wait_until_readable,
)
from edge.uplink.policy import Backoff
from edge.uplink.service import UplinkService

log = logging.getLogger(__name__)


@dataclass
class BayView:
    """What the agent knows of one recorder's docking, for progress displays and the demo."""

    device_serial: str
    bay: int | None
    progress: BayProgress = field(default_factory=BayProgress)
    result: OffloadResult | None = None
    charge_percent: int | None = None


def usb_backend(config: StationConfig) -> Any:
    if config.usb.backend == "simulator":
        from simulators.recorder.backend import get_backend  # only for simulated stations

        assert config.usb.simulator_socket is not None
        return get_backend(config.usb.simulator_socket)
    return None  # pyusb picks libusb


class StationAgent:
    def __init__(
        self,
        config: StationConfig,
        *,
        backend: Any = None,
        on_progress: Callable[[BayView], None] | None = None,
    ) -> None:
        self.config = config
        self._own_backend = backend is None
        self.backend = backend if backend is not None else usb_backend(config)
        self.on_progress = on_progress
        self.views: dict[str, BayView] = {}
        self.results: list[OffloadResult] = []
        self.claims = VolumeClaims()
        # Every session's volume, bound to its mount: a mount's UNMOUNTED event unbinds its session.
        self.bound = BoundVolumes()
        self.dock: DockDriver | None = None
        # What each bay's LED should show. Shown again whenever the bay board (re)connects, so a docking
        # decided before the board answered (at start, or while it was lost) still shows on its bay.
        self._bay_leds: dict[int, BayLed] = {}
        # Bay presence is debounced (edge.sources.usb.bay_presence): a settled state stands as of its last
        # raw event, so raw events and LED decisions share one order: `_bay_stamps`. Per bay, the stamp of
        # the last LED decision (a refresh to a reconnected board is none), and of the station's own
        # at-once PULLED with what the bay showed before it.
        self.bay_presence = BayPresenceDebounce(bouncing=config.dock.bouncing)
        self._bay_stamps = itertools.count(1)
        self._led_decided: dict[int, int] = {}
        self._pulled_at_once: dict[int, tuple[int, BayLed | None]] = {}
        # The bays the debounce calls bouncing, with the stamp of the BOUNCING the station decided for
        # them (None: a docking's or an error's LED stood and was left).
        self._bouncing: dict[int, int | None] = {}
        # Each busy bay holds a copy thread and a verify thread; ffprobe and USB calls need a few more.
        self.executor = ThreadPoolExecutor(
            max_workers=4 + 3 * config.offload.concurrency, thread_name_prefix="offload"
        )
        self.limit = asyncio.Semaphore(config.offload.concurrency)
        # Docked USB recorders are told apart by where they are attached (`UsbAttachment`: the port,
        # i.e. the bay, with the serial the device claims there), never by their serial alone: two
        # recorders may claim the same serial, or none, and each gets its own docking.
        self._active_usb: set[UsbAttachment] = set()
        # Recorders whose control session ended while still in control mode (refused, failed): never
        # retried until unplugged, so a wrong password is tried once per docking, not until lockout.
        self._done_usb: set[UsbAttachment] = set()
        # Recorders ready for the desk: their own docking ended `done` and they came back in control mode
        # from their bay's power cycle (`_back_in_control`), each with the device serial that docking had: the
        # desk issues only that recorder from the attachment (another one answering there was swapped in
        # under the same USB serial). A docking refused or failed before its offload leaves the recorder done
        # (not retried) but not ready: its files may be unread.
        self._ready_usb: dict[UsbAttachment, str] = {}
        # What the last USB poll saw: a session that ends after its recorder was pulled out (mid-copy)
        # must not mark the recorder done, or docking it again would be ignored.
        self._present_usb: set[UsbAttachment] = set()
        # The recorders docked when the agent started (`_look_at_bays`; until seen gone or docked once): the
        # station cannot tell whether one left its bay while the agent was down, so its docking returns an
        # assignment only if the ledger saw it leave since the check-out
        # (edge.equipment.checkout.check_in_after_docking).
        self._found_at_start: set[UsbAttachment] | None = None
        # Which docking of each attachment the USB poll sees: a new one each time it comes back in
        # control mode after a poll saw it gone (pulled and docked again; a switch to mass storage comes
        # back in mass-storage mode). A session that ends after its recorder was pulled and docked again
        # (or another with the same serial, or none, in the same bay) leaves that docking its own session.
        self._usb_dockings: dict[UsbAttachment, int] = {}
        self._usb_docking_numbers = itertools.count(1)
        # Per USB serial claimed at more than one port, the ports last recorded as sharing it.
        self._shared_usb_serials: dict[str, tuple[str, ...]] = {}
        # The USB serial warning each bay's tile shows (`_record_shared_usb_serials`).
        self._usb_serial_warnings: dict[int, BayUsbSerialClaim] = {}
        self._active_devices: set[str] = set()
        # Notified whenever a volume session ends: a re-mount of a recorder whose previous session is
        # still winding down on the old, gone mount waits for it instead of being dropped.
        self._volume_session_ended = asyncio.Condition()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.store: StationStore | None = None
        self.uplink: UplinkService | None = None
        self.mqtt: MqttClient | None = None
        self.telemetry: TelemetryPublisher | None = None
        self.commands: CommandHandler | None = None
        # One ingest pipeline for every bay (and, later, every source) of this store.
        self.pipeline: IngestPipeline | None = None
        self.supervisor: Supervisor | None = None
        self.gb28181: GbPlatform | None = None
        self.gb28181_downloads: GbDownloadScheduler | None = None
        self.rooms: RoomService | None = None
        self.gb28181_live: LiveStreams | None = None
        self.fleet: FleetMonitor | None = None
        self.ready = asyncio.Event()
        # Whether [logging] level sets the log level (not when the command line chose one, with -v).
        self.log_level_from_config = False
        # The status board every layer reports to (edge.observe), and the local API that shows it.
        self._store_facts = StoreFactsReader(config.station.store_dir, spooling=config.uplink.enabled)
        self.status = StatusBoard(
            identity=station_identity(config),
            bays=[b.number for b in config.bays],
            read_store=self._store_facts.read,
            read_clock=lambda: clock_facts(config),
            tasks=self._task_facts,
            central=self._central_facts,
        )
        self.api: LocalApi | None = None
        # Where each docked recorder is, so that the bay shows empty once it has left.
        self._usb_bays: dict[UsbAttachment, int | None] = {}
        self._volume_bays: dict[str, tuple[int | None, str]] = {}
        # The check-out desk ([equipment] enabled), and the recorders whose bay was power-cycled after their
        # docking ended `done` so that they come back in control mode for it: each attachment with the loop
        # time by which it must be back. Back in control mode in time, it is left for the desk, not docked.
        self.desk: StationDesk | None = None
        self._awaiting_control: dict[UsbAttachment, float] = {}
        # When each of those power cycles was asked for: the recorder was in mass-storage mode then, so an
        # enumeration begun after it that finds the attachment in control mode finds it back from the cycle.
        self._power_cycled_at: dict[UsbAttachment, float] = {}
        # The device serial each of those recorders' docking ended `done` with.
        self._offloaded_device: dict[UsbAttachment, str] = {}

    # -- lifecycle ----------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, *, notifier: SystemdNotifier | None = None) -> None:
        """Run until `stop` is set. Raises SupervisorGaveUp when a loop keeps failing (systemd restarts)."""
        self.store = StationStore(
            self.config.station.store_dir, self.config.station.id, purpose="station agent"
        )
        # The cadence of self-signed checkpoints is declared in the ledger, where `edge verify` finds it.
        self.store.ledger.checkpoint_every = self.config.station.checkpoint_every
        self.store.record(
            EntryType.STATION_STARTED, None,
            {"station": self.config.station.id, "checkpoint_every": self.config.station.checkpoint_every},
        )
        self.status.identity["key_id"] = self.store.key.key_id
        self.status.attach()
        self.store.ledger.add_listener(self.status.ledger_entry)
        watcher = VolumeWatcher(
            self.config.usb.mount_root, rescan_interval_s=self.config.usb.volume_rescan_interval_s
        )
        supervisor = Supervisor(notifier=notifier, status=self.status)
        self.supervisor = supervisor
        poll_s = self.config.usb.poll_interval_s
        supervisor.add(
            TaskSpec("usb-poll", lambda: self._poll_usb(stop), liveness_timeout_s=10 * poll_s + 30)
        )
        supervisor.add(TaskSpec("volumes", lambda: self._watch_volumes(watcher)))
        # Losing the status board costs the displays, never evidence.
        supervisor.add(TaskSpec("status", self.status.run, critical=False))
        if self.config.dock.port:
            # Offloads go on without the bay board: losing it costs the LEDs, never evidence.
            supervisor.add(TaskSpec("dock", self._dock_loop, critical=False))
        if self.config.uplink.enabled:
            # Offloads go on without the central too: evidence waits in the spool (and with
            # after-receipt nothing is erased until the uplink works again).
            try:
                self.uplink = UplinkService(self.config, self.store, status=self.status)
            except (OSError, ValueError, CustodyError) as exc:
                log.error("uplink disabled: %s", exc)
                self.store.record(
                    EntryType.ERROR, None, {"stage": "uplink", "reason": f"uplink disabled: {exc}"}
                )
            else:
                supervisor.add(TaskSpec("uplink", self.uplink.run, critical=False))
        if self.config.mqtt.enabled:
            # The broker connection (telemetry, commands): losing it costs those, never evidence. It
            # reconnects by itself with back-off; the supervisor restarts it only if it crashes.
            try:
                self.mqtt = MqttClient(
                    station_mqtt_settings(
                        self.config, will=will_message(self.config.mqtt.topic_prefix, self.config.station.id)
                    ),
                    backoff=Backoff(self.config.mqtt.backoff_base_s, self.config.mqtt.backoff_max_s),
                )
            except (OSError, ValueError, IdentityError) as exc:
                log.error("mqtt disabled: %s", exc)
                self.store.record(EntryType.ERROR, None, {"stage": "mqtt", "reason": f"mqtt disabled: {exc}"})
            else:
                supervisor.add(TaskSpec("mqtt", self.mqtt.run, critical=False))
                # Added after the client, so stopped before it: telemetry still says "offline" on the way out.
                self._add_mqtt_services(supervisor, self.mqtt)
        if self.config.gb28181.enabled:
            self._add_gb28181(supervisor)
        self.pipeline = IngestPipeline(
            self.store,
            IngestSettings.from_config(self.config.offload, self.config.uplink),
            executor=self.executor,
            uploads=self.uplink,
            status=self.status,
        )
        # Temp copies of re-acquisitions a crash interrupted (the ledger names them) go before any docking.
        self.pipeline.discard_interrupted_rebuilds()
        if self.gb28181 is not None:
            self._add_gb28181_downloads(supervisor, self.gb28181)
        if self.config.rooms.room:
            self._add_rooms(supervisor)
        if self.config.equipment.enabled:
            self._add_desk(supervisor)
        self._add_fleet(supervisor)
        await self._start_api()
        watcher.start()
        if self.config.equipment.enabled:
            await self._look_at_bays()
        self.ready.set()
        try:
            await supervisor.run(stop)
        finally:
            if self.api is not None:
                await self.api.stop()
                self.api = None
            self._store_facts.close()
            if self.fleet is not None:
                self.fleet.close()
            if self._tasks:
                # Sessions stop at their last committed state; whatever was in flight resumes next start.
                for task in list(self._tasks):
                    task.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)
            watcher.stop()
            if self.dock is not None:
                await self.dock.close()
                self.dock = None
            with self.store.transaction():
                self.store.ledger.append(EntryType.STATION_STOPPED, None, {"station": self.config.station.id})
                self.store.ledger.checkpoint()
            if self.uplink is not None:
                # The central witnesses the ledger up to the stop (bounded: a central that is down
                # cannot hold up the shutdown).
                await self.uplink.flush_ledger()
            self.store.close()
            self.executor.shutdown(wait=True, cancel_futures=True)
            close = getattr(self.backend, "close", None)
            if self._own_backend and close is not None:
                close()

    def _held_or_booked(self) -> HeldOrBooked:
        """What the rooms recording hold on the store's disk beyond its reserve, and what docking copies,
        disc exports, documents and other downloads' copies booked and have still to write (the pipeline is
        made after the GB/T 28181 platform: read as a download's receiver writes)."""
        return NOTHING_HELD_OR_BOOKED if self.pipeline is None else self.pipeline.kept_space.held_or_booked()

    def _add_gb28181(self, supervisor: Supervisor) -> None:
        """The GB/T 28181 platform (edge.gb28181): devices register, keep alive, answer queries. Losing it
        costs those devices' downloads until it is back, never evidence already stored."""
        assert self.store is not None
        store = self.store
        try:
            settings = PlatformSettings.from_config(self.config.gb28181)
        except ConfigError as exc:
            log.error("gb28181 disabled: %s", exc)
            store.record(EntryType.ERROR, None, {"stage": "gb28181", "reason": f"gb28181 disabled: {exc}"})
            return
        self.gb28181 = GbPlatform(
            settings,
            record=lambda entry_type, data: store.record(entry_type, None, data),
            clock_trusted=lambda: self.status.clock_trusted,
            # The download spool is on the store's disk: a transfer stops before it eats into the reserve.
            # ... nor into what the rooms recording hold beyond it (edge.ingest.kept_space, issue 11), nor
            # into what other writers booked: a docking copy that passed its check and is still writing.
            open_receiver=receiver_keeping_free(self.config.offload.min_free_bytes,
                                                kept_free=self._held_or_booked),
            clock_history_dir=store.layout.root / CLOCK_HISTORY_DIR,
        )
        self.status.sections["gb28181"] = self.gb28181.snapshot
        supervisor.add(TaskSpec("gb28181", self.gb28181.run, critical=False))
        try:
            self.gb28181_live = LiveStreams(
                self.gb28181, LiveSettings.from_config(self.config.gb28181.live),
                record=lambda entry_type, data: store.record(entry_type, None, data))
        except LiveError as exc:
            log.error("gb28181 live streams disabled: %s", exc)
            store.record(EntryType.ERROR, None,
                         {"stage": "gb28181", "reason": f"live streams disabled: {exc}"})
        else:
            # Added after the platform, so stopped before it: each live Play ends with its BYE.
            supervisor.add(TaskSpec("gb28181-live", self.gb28181_live.run, critical=False))

    def _add_gb28181_downloads(self, supervisor: Supervisor, platform: GbPlatform) -> None:
        """The download scheduler (edge.sources.gb28181.scheduler): devices the policy wants get their
        recordings listed and downloaded through the one pipeline when they come online (or the schedule
        window opens); its progress joins the platform's status section."""
        assert self.store is not None
        section = self.config.gb28181
        self.gb28181_downloads = GbDownloadScheduler(
            platform, DownloadPolicy.from_config(section), lambda: self.pipeline,
            spool=self.store.layout.root / GB28181_SPOOL_DIR, station_id=self.config.station.id,
            case=case_block_for_downloads(self.config.case_defaults),
            concurrency=section.download.concurrency, clock_trusted=lambda: self.status.clock_trusted,
        )
        downloads = self.gb28181_downloads
        live = self.gb28181_live
        self.status.sections["gb28181"] = lambda: {**platform.snapshot(), "downloads": downloads.snapshot(),
                                                   **({"live": live.snapshot()} if live is not None else {})}
        supervisor.add(TaskSpec("gb28181-downloads", downloads.run, critical=False))

    def _add_rooms(self, supervisor: Supervisor) -> None:
        """Interview and hearing rooms (edge.rooms): sessions kept on disk are resumed; operators start,
        stop and mark them over the local API. Losing the task costs recording until it is restarted
        (every interruption a gap on the ledger), never what was sealed."""
        assert self.store is not None and self.pipeline is not None
        self.rooms = RoomService(self.config.rooms, self.store, self.pipeline,
                                 station_id=self.config.station.id,
                                 clock_synchronised=lambda: self.status.clock_trusted,
                                 live=self.gb28181_live)
        self.rooms.load()
        # Only whether rooms record and their sources' health: the status reaches the kiosk channel.
        self.status.sections["rooms"] = self.rooms.board_status
        # Time to stop every ffmpeg (each closes its segment) and seal what they wrote.
        stop_s = self.config.rooms.stop_timeout_s + 30.0
        supervisor.add(TaskSpec("rooms", self.rooms.run, critical=False, stop_timeout_s=stop_s))
        supervisor.add(TaskSpec("rooms-space", self.rooms.space.run, critical=False))
        supervisor.add(TaskSpec("rooms-reserve", self.rooms.reserve.run, critical=False))
        # Each room's lamp panel and PTZ camera (edge.rooms.hardware): a panel unplugged costs the buttons
        # and the lamp, never recording; the task reconnects by itself.
        for room in self.config.rooms.room:
            if room.panel is not None or room.ptz is not None:
                hardware = RoomHardware(self.rooms, room)
                self.rooms.hardware_status[room.id] = hardware.status
                supervisor.add(TaskSpec(f"room-hardware-{room.id}", hardware.run, critical=False))

    def _add_desk(self, supervisor: Supervisor) -> None:
        """The check-out desk (edge.equipment): the recorders docked in control mode, reached through the USB
        control protocol; its card reader as a supervised task (a reader unplugged costs card check-outs
        until it is back, never anything else); 警号 + PIN through the local API (edge.observe.desk_api)."""
        assert self.store is not None
        equipment = self.config.equipment
        bench = UsbRecorderBench(self.backend, self._live_recorder_access(), set_led=self.set_led,
                                 idle=self._idle_for_desk, swapped_in=self._swapped_in)

        async def clock_trusted() -> bool:
            return self.status.clock_trusted

        desk = CheckoutDesk(self.store, bench, checkout_policy(equipment), clock_trusted=clock_trusted)
        self.desk = StationDesk(desk, pin_attempts_per_minute=equipment.pin_attempts_per_minute,
                                card_max_age_s=equipment.card_max_age_s)
        reader = equipment.card_reader
        if reader is not None:
            station_desk = self.desk
            supervisor.add(TaskSpec("card-reader", lambda: station_desk.run_card_reader(reader),
                                    critical=False))

    def _live_recorder_access(self) -> RecorderAccess:
        """The desk's rules for the recorders (allow-list, passwords) from the configuration as it is now:
        `[recorders]` is reloaded live (SIGHUP), and a recorder taken off the allow-list is not issued."""

        def now() -> RecorderAccess:
            return recorder_access_from_config(self.config)

        return RecorderAccess(
            refusal_before_login=lambda usb_serial: now().refusal_before_login(usb_serial),
            password_for=lambda usb_serial: now().password_for(usb_serial),
            refusal_after_login=lambda device_serial, usb_serial: now().refusal_after_login(device_serial,
                                                                                          usb_serial),
            bay_for_port=lambda port: self.config.bay_for_port(port),
        )

    def _idle_for_desk(self, port: str, usb_serial: str) -> str | None:
        """Whether the desk may use the recorder at this attachment: the USB poll has seen it, no docking
        session of it runs, and it came back in control mode from the bay power cycle that follows a docking
        of its own that ended `done`. A recorder docked a moment ago is in control mode too until its session
        switches it to mass storage, and one whose docking was refused or failed before the offload stays in
        control mode with its files unread: the desk must issue neither. (Called from the desk's worker
        thread: reads of sets the event loop replaces or grows, never iterated there.) The device serial of
        the recorder offloaded there when idle, else None."""
        key = UsbAttachment(port, usb_serial)
        if key not in self._present_usb or key in self._active_usb:
            return None
        return self._ready_usb.get(key)

    async def _look_at_bays(self) -> None:
        """The recorders docked as the agent starts, before anything can be docked to it (`_found_at_start`).
        A failed enumeration finds none: their dockings are then check-ins as any other."""
        try:
            handles = await asyncio.get_running_loop().run_in_executor(
                self.executor, lambda: find_recorders(self.backend))
        except (RecorderError, OSError) as exc:
            log.warning("USB enumeration at start failed: %s", exc)
            handles = []
        self._found_at_start = {usb_attachment(h) for h in handles}

    def _swapped_in(self, port: str, usb_serial: str) -> None:
        """The desk found another recorder than the one offloaded at this attachment (swapped in under the
        same USB serial, between two polls): it is no longer ready nor done, so the next poll docks it (its
        files are offloaded like any docking's) and the record says what happened."""
        key = UsbAttachment(port, usb_serial)
        expected = self._ready_usb.pop(key, None)
        if expected is None:
            return
        if self._found_at_start is not None:
            self._found_at_start.discard(key)
        self._done_usb.discard(key)
        assert self.store is not None
        bay = self.config.bay_for_port(port)
        reason = (f"another recorder than {expected}, offloaded here, answers at this attachment (swapped in "
                  "under the same USB serial): not issued; docked to be offloaded")
        log.warning("bay %s: %s", bay, reason)
        self.store.record(EntryType.ERROR, None, {
            "usb_serial": usb_serial, "usb_port": port, "bay": bay, "stage": "equipment",
            "expected_device_serial": expected, "reason": reason})

    async def _return_to_control(self, key: UsbAttachment, result: OffloadResult | None,
                                 device_serial: str) -> None:
        """After a docking that ended `done`, power-cycle the recorder's bay through the dock controller: the
        recorder leaves mass-storage mode and enumerates in control mode, where it waits for the desk."""
        equipment = self.config.equipment
        if not (equipment.enabled and equipment.return_to_control) or result is None \
                or result.outcome is not OffloadOutcome.DONE:
            return
        assert self.store is not None
        bay = self.config.bay_for_port(key.port)
        where = {"usb_serial": key.usb_serial, "usb_port": key.port, "bay": bay, "stage": "equipment"}
        dock = self.dock
        if bay is None or dock is None or not dock.connected:
            why = "no bay for its USB port" if bay is None else "the dock controller is not connected"
            self.store.record(EntryType.ERROR, None, {**where, "reason": "the recorder stays in mass-storage "
                                                      f"mode, not ready for check-out: {why}"})
            return
        loop = asyncio.get_running_loop()
        self._offloaded_device[key] = device_serial
        self._power_cycled_at[key] = loop.time()
        self._awaiting_control[key] = self._power_cycled_at[key] + equipment.control_return_timeout_s
        try:
            await dock.power_cycle(bay, equipment.power_off_ms)
        except DockError as exc:
            self._awaiting_control.pop(key, None)
            self._power_cycled_at.pop(key, None)
            self._offloaded_device.pop(key, None)
            self.store.record(EntryType.ERROR, None, {
                **where, "reason": f"the recorder stays in mass-storage mode, not ready for check-out: bay "
                f"power cycle: {exc}"})
            return
        log.info("bay %s: power-cycled so that recorder %s comes back in control mode", bay, key.usb_serial)

    def _not_back_in_control(self, key: UsbAttachment) -> None:
        """The recorder did not come back in control mode from its bay's power cycle in time: it is not ready
        for check-out, and the record says why (the desk would otherwise only say "no recorder ready")."""
        assert self.store is not None
        bay = self.config.bay_for_port(key.port)
        reason = (f"the recorder did not come back in control mode within "
                  f"{self.config.equipment.control_return_timeout_s:g} s of its bay's power cycle: not ready "
                  "for check-out (seen back later, it is a new docking)")
        log.warning("bay %s: recorder %s: %s", bay, key.usb_serial, reason)
        self.store.record(EntryType.ERROR, None, {
            "usb_serial": key.usb_serial, "usb_port": key.port, "bay": bay, "stage": "equipment",
            "reason": reason})

    def _back_in_control(self, key: UsbAttachment, now: float) -> bool:
        """Whether this control-mode attachment is a recorder coming back from its bay's power cycle (then it
        waits for the desk: no docking session)."""
        deadline = self._awaiting_control.pop(key, None)
        self._power_cycled_at.pop(key, None)
        device_serial = self._offloaded_device.pop(key, "")
        if deadline is None or now > deadline or not device_serial:
            return False
        assert self.store is not None
        bay = self.config.bay_for_port(key.port)
        self._done_usb.add(key)
        self._ready_usb[key] = device_serial
        self.store.record(EntryType.DEVICE_CONNECTED, None, {
            "usb_serial": key.usb_serial, "usb_port": key.port, "bay": bay, "source": "usb",
            "mode": "control", "after": "bay power cycle",
            "reason": "offloaded: waiting in control mode for check-out"})
        log.info("bay %s: recorder %s back in control mode, ready for check-out", bay, key.usb_serial)
        return True
    def _add_fleet(self, supervisor: Supervisor) -> None:
        """The fleet view (edge.equipment.fleet): every recorder known here, where and how it is, and the
        overdue alerts. Losing it costs the view and the alerts until it is back, never evidence."""
        assert self.store is not None
        metrics = self.status.metrics

        def publish(fleet: Fleet) -> None:
            for state, count in fleet.counts().items():
                metrics.recorders.labels(state).set(count)
            metrics.recorders_overdue.set(len(fleet.overdue))
            if self.uplink is not None:
                self.uplink.fleet_changed(fleet)  # the central's fleet report (version 2)

        if self.uplink is not None:
            self.uplink.follow_fleet()
        self.fleet = FleetMonitor(self.store, config=lambda: self.config, live=self._recorders_in_bays,
                                  on_fleet=publish, alive=lambda: self.supervisor_alive("fleet"))
        self.status.sections["fleet"] = self.fleet.summary
        self.store.ledger.add_listener(self.fleet.ledger_entry)
        check_s = self.config.equipment.overdue_check_s
        supervisor.add(TaskSpec("fleet", self.fleet.run, critical=False, liveness_timeout_s=2 * check_s + 60))

    def _recorders_in_bays(self) -> dict[str, LiveBay]:
        """The recorders the status board shows in a bay now, with the bay board's charge reading."""
        found: dict[str, LiveBay] = {}
        for bay in self.status.bays():
            serial = (bay.get("device") or {}).get("serial")
            # A tile that says "pulled out early" stays until the next docking there: its recorder left.
            if bay.get("state") == "empty" or bay.get("error_class") == "pulled_early" or not serial:
                continue
            view = self.views.get(serial)
            number = int(bay["bay"]) if str(bay["bay"]).isdigit() else None
            found[serial] = LiveBay(number, view.charge_percent if view is not None else None)
        return found

    def _add_mqtt_services(self, supervisor: Supervisor, client: MqttClient) -> None:
        """Telemetry from the status board (which needs the telemetry salt: a salt file that cannot be
        used turns off telemetry alone, and the ledger says why), and the central's commands (which need
        the central key pinned at enrollment: without one, commands are off and the ledger says why)."""
        self._add_telemetry(supervisor, client)
        self._add_commands(supervisor, client)

    def _add_telemetry(self, supervisor: Supervisor, client: MqttClient) -> None:
        assert self.store is not None
        mqtt, station_id = self.config.mqtt, self.config.station.id
        try:
            # A random salt kept beside the client secret (not derived from the station key, which
            # rotates): published device ids tell recorders apart without naming them, and stay put.
            device_salt = telemetry_device_salt(self.config)
        except (OSError, ValueError, IdentityError) as exc:
            # Never a made-up salt in its place: the ids would change, and then change back once fixed.
            salt_path = telemetry_salt_path(self.config)
            log.error("mqtt telemetry disabled: the telemetry salt %s cannot be used: %s; commands and "
                      "evidence over MQTT go on", salt_path, exc)
            # The ledger shows store paths as "<station path>": the file's name says which one.
            reason = (f"the telemetry salt {salt_path.name} in the store directory cannot be used: "
                      f"{hide_station_paths(str(exc))}")
            self.store.record(EntryType.ERROR, None, {"stage": "mqtt",
                                                      "reason": f"mqtt telemetry disabled: {reason}"})
            # And the status model (edge status, the central's `status` command) says it is off, and why.
            off = {"enabled": False, "reason": reason}
            self.status.sections["mqtt_telemetry"] = lambda: dict(off)
            return
        self.telemetry = TelemetryPublisher(
            TelemetrySettings(
                station_id, mqtt.topic_prefix, mqtt.telemetry_interval_s, mqtt.telemetry_event_queue,
                device_salt=device_salt,
            ),
            client=client,
            subscribe=self.status.subscribe,
        )
        self.store.ledger.add_listener(self.telemetry.ledger_entry)
        supervisor.add(TaskSpec("telemetry", self.telemetry.run, critical=False))

    def _add_commands(self, supervisor: Supervisor, client: MqttClient) -> None:
        assert self.store is not None
        mqtt, station_id = self.config.mqtt, self.config.station.id
        key_path = self.config.uplink.pinned_key_path if self.config.uplink.enabled else None
        try:
            if key_path is None:
                raise ValueError("no central key is pinned ([uplink] identity_dir or central_signing_key)")
            self.commands = CommandHandler(
                CommandSettings(station_id, mqtt.topic_prefix, mqtt.command_window_s),
                store=self.store,
                central_key=load_public_key(key_path),
                client=client,
                status=self.status.snapshot,
                officers_sync=self.uplink.fetch_officer_list_now if self.uplink is not None else None,
            )
        except (OSError, ValueError, CustodyError, sqlite3.Error) as exc:
            log.error("mqtt commands disabled: %s", exc)
            self.store.record(
                EntryType.ERROR, None, {"stage": "mqtt", "reason": f"mqtt commands disabled: {exc}"}
            )
            return
        supervisor.add(TaskSpec("mqtt-commands", self.commands.run, critical=False))

    def apply_config(self, config: StationConfig) -> None:
        """A reloaded configuration (only its live sections differ: edge.config.reload): dockings that
        start from now on use it; those under way keep the one they started with."""
        self.config = config
        if self.uplink is not None:
            self.uplink.reconfigure(config)
        if self.log_level_from_config:
            apply_log_level(config)

    def record_event(self, type_: str, data: dict[str, Any]) -> None:
        if self.store is not None:
            self.store.record(type_, None, data)

    async def _start_api(self) -> None:
        """The local API; a socket that cannot be bound costs the status surfaces, never an offload."""
        assert self.store is not None
        if not self.config.api.enabled:
            return
        extensions = [room_routes(self.rooms)] if self.rooms is not None else []
        if self.desk is not None:
            extensions.append(desk_routes(self.desk, over_tcp=self.config.equipment.screen_checkout))
        api = LocalApi(self.status, self.store, self.config.api, extensions)
        try:
            await api.start()
        except OSError as exc:
            # In the log, not the ledger: the API shows the custody record, it is no part of it.
            log.error("local API not started: %s", exc)
            return
        self.api = api
        log.info("local API on %s%s", self.config.api.socket_path,
                 f" and {api.tcp_url} (dock screen, read-only)" if api.tcp_url else "")

    def _task_facts(self) -> list[TaskFacts]:
        if self.supervisor is None:
            return []
        return [
            TaskFacts(name, TASK_STATES.get(h["state"], h["state"]), h["restarts"], h["last_alive_age_s"],
                      h["last_error"])
            for name, h in self.supervisor.health().items()
        ]

    def _central_facts(self) -> CentralFacts:
        if self.uplink is None:
            return CentralFacts(configured=self.config.uplink.enabled)
        return CentralFacts(configured=True, breaker=self.uplink.breaker.state.value.replace("-", "_"))

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def idle(self) -> None:
        """Wait until no docking session is running (tests and the demo)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- bays ---------------------------------------------------------------------------------------------

    async def set_led(self, bay: int | None, led: BayLed) -> None:
        if bay is None:
            return
        self._decide_led(bay, led)
        await self._show_led(bay, led)

    def _decide_led(self, bay: int, led: BayLed) -> None:
        self._bay_leds[bay] = led
        self._led_decided[bay] = next(self._bay_stamps)

    async def _show_led(self, bay: int, led: BayLed) -> None:
        if self.dock is None:
            return
        try:
            await self.dock.set_led(bay, led)
        except DockError as exc:
            log.warning("bay %d: LED %s not set: %s", bay, led, exc)

    async def _dock_loop(self) -> None:
        assert self.store is not None
        try:
            self.dock = await DockDriver.open(self.config.dock.port, baudrate=self.config.dock.baudrate)
        except (DockError, OSError) as exc:
            self.store.record(EntryType.ERROR, None, {"stage": "dock", "reason": f"dock unavailable: {exc}"})
            raise
        loop = asyncio.get_running_loop()
        cut_by = "board lost"
        try:
            for bay in list(self._bay_leds):
                await self._show_led(bay, self._bay_leds[bay])
            events = self.dock.events()
            while True:
                # The next event, or the moment the next bay's presence settles, whichever comes first
                # (the driver's iterator loses nothing to a cancelled wait).
                try:
                    async with asyncio.timeout(self.bay_presence.wait_s(loop.time())):
                        event = await anext(events)
                except TimeoutError:
                    pass
                except StopAsyncIteration:
                    break
                else:
                    self.supervisor_alive("dock")
                    await self._bay_event(event)
                for settled in self.bay_presence.due(loop.time()):
                    led = self._presence_settled(settled)
                    if led is not None:
                        await self._show_led(settled.bay, led)
        except DockError as exc:
            self.store.record(EntryType.ERROR, None, {"stage": "dock", "reason": f"dock lost: {exc}"})
            raise
        except asyncio.CancelledError:
            cut_by = "station stopped"
            raise
        finally:
            dock, self.dock = self.dock, None
            # Events still settling when the dock goes (lost, or the station stops) are recorded now, as
            # not settled (nobody saw them settle, review R12): they decide no LED, the status of the
            # board that answers next does (its present bays come as insertions).
            for settled in self.bay_presence.drain():
                self._presence_settled(settled, cut_by=cut_by)
            for bay in list(self._bouncing):
                self._bouncing_ended(bay)
            await dock.close()

    async def _bay_event(self, event: BayEvent) -> None:
        """One raw event of the bay board. Presence waits to settle (`bay_presence`), except a pull in
        the middle of a docking: the bay shows PULLED and the pull is on the record at once, whatever the
        bay does next."""
        if event.kind is BayEventKind.CHARGE:
            for view in self.views.values():
                if view.bay == event.bay:
                    view.charge_percent = event.charge_percent
            return
        present = event.kind is BayEventKind.INSERTED
        # A bouncing bay's presence is only counted: whether its recorder left, the USB side tells.
        pulled_mid_docking = (
            not present and self._bay_leds.get(event.bay) is BayLed.COPYING
            and not self.bay_presence.bouncing(event.bay)
        )
        if pulled_mid_docking:
            # What the bay did before the pull (its docking, still settling) stands as it was: the pull
            # is recorded on its own, never merged into the docking it ends.
            earlier = self.bay_presence.take(event.bay)
            if earlier is not None:
                self._presence_settled(earlier)
        self.bay_presence.add(event.bay, present, event.charge_percent, stamp=next(self._bay_stamps),
                              now=asyncio.get_running_loop().time())
        if pulled_mid_docking:
            pulled = self.bay_presence.take(event.bay)
            assert pulled is not None
            led = self._presence_settled(pulled, mid_docking=True)
            if led is not None:
                await self._show_led(event.bay, led)

    def _presence_settled(
        self, settled: Settled, *, mid_docking: bool = False, cut_by: str | None = None
    ) -> BayLed | None:
        """Record a bay's settled presence (one entry, `bay_events` counting the raw events it stands
        for when more than one) and decide its LED; returns the LED to show, if it decided one.
        `cut_by`: why a burst was handed over before it settled (the board lost, the station stopping)."""
        assert self.store is not None
        bay = settled.bay
        if settled.bouncing == "started":
            return self._bouncing_started(settled)
        data: dict[str, Any] = {"bay": bay, "source": "dock", "charge_percent": settled.charge_percent}
        if settled.raw_events > 1 or settled.bouncing is not None:
            data["bay_events"] = settled.raw_events
        if not settled.settled:
            data["settled"] = False  # still bouncing: on the record, the LED waits for it to settle
        if cut_by is not None:
            data["cut_by"] = cut_by
        if settled.bouncing is not None:
            data["bouncing"] = settled.bouncing  # "ongoing": a back-off report; "ended": it held still
        self.store.record(
            EntryType.DEVICE_CONNECTED if settled.present else EntryType.DEVICE_REMOVED, None, data
        )
        if not settled.settled:
            return None
        if settled.bouncing == "ended" and self._bouncing_ended(bay):
            # Nothing decided since the bay went bouncing: it is ready again (a recorder in it is told by
            # the USB side).
            if not settled.present:
                self.status.publish(BayVacated(bay, None))
            return BayLed.IDLE
        if not settled.present:
            self.status.publish(BayVacated(bay, None))
        shown = self._bay_leds.get(bay)
        if mid_docking:
            self._decide_led(bay, led_after_removal(shown))
            self._pulled_at_once[bay] = (self._led_decided[bay], shown)
            return self._bay_leds[bay]
        decided = self._led_decided.get(bay, 0)
        pull = self._pulled_at_once.get(bay)
        led = led_after_presence(
            settled.present, shown,
            decided_since=decided > settled.last_stamp,
            before_pull=pull[1] if pull is not None and pull[0] == decided else None,
        )
        if led is not None:
            self._decide_led(bay, led)
        return led

    def _bouncing_started(self, settled: Settled) -> BayLed | None:
        """The bay's presence changes too often to act on: one error entry, the bay's status flag, and
        `BOUNCING` on a bay that showed nothing of a docking (a board older than dock protocol 3 shows
        `ATTENTION`; a docking's or an error's pattern stands: it says more, and the dock screen tells of
        the bouncing in words)."""
        assert self.store is not None
        bay = settled.bay
        self.store.record(EntryType.ERROR, None, {
            "stage": "dock", "bay": bay, "changes": settled.changes,
            "window_s": self.bay_presence.changes_window_s,
            "reason": (
                f"bay {bay} bouncing: its presence changed {settled.changes} times within "
                f"{self.bay_presence.changes_window_s:g} s; recorded with back-off until it holds still for "
                f"{self.bay_presence.calm_s:g} s"
            ),
        })
        self.status.publish(BayBouncing(bay, True))
        if self._bay_leds.get(bay) in (None, BayLed.OFF, BayLed.IDLE):
            self._decide_led(bay, BayLed.BOUNCING)
            self._bouncing[bay] = self._led_decided[bay]
            return BayLed.BOUNCING
        self._bouncing[bay] = None
        return None

    def _bouncing_ended(self, bay: int) -> bool:
        """The bay is not bouncing any more (it held still, or its board went): flag down; a BOUNCING
        of the bouncing that nothing replaced gives way to IDLE (True; the next board's status decides
        the rest)."""
        if bay not in self._bouncing:
            return False
        attention = self._bouncing.pop(bay)
        self.status.publish(BayBouncing(bay, False))
        if attention is not None and self._led_decided.get(bay) == attention:
            self._decide_led(bay, BayLed.IDLE)
            return True
        return False

    def supervisor_alive(self, name: str) -> None:
        if self.supervisor is not None:
            self.supervisor.alive(name)

    def _progress(self, device_serial: str, bay: int | None, progress: BayProgress) -> None:
        view = self.views.setdefault(device_serial, BayView(device_serial, bay))
        view.bay = bay
        view.progress = progress
        self.status.progress(device_serial, bay, progress)
        if self.on_progress is not None:
            self.on_progress(view)

    # -- USB --------------------------------------------------------------------------------------

    async def _poll_usb(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        seen: dict[UsbAttachment, RecorderHandle] = {}
        # Each device's serial is read once per enumeration, as the kernel reads it: a device answering
        # a new serial at every read (or slowly) costs one read per attachment, not one per poll.
        serials = UsbSerialsRead()
        while not stop.is_set():
            enumerated_from = loop.time()
            try:
                handles: list[RecorderHandle] = await loop.run_in_executor(
                    self.executor, lambda: find_recorders(self.backend, serials=serials)
                )
            except (RecorderError, OSError) as exc:
                log.warning("USB enumeration failed: %s", exc)
                handles = []
            self.supervisor_alive("usb-poll")
            assert self.store is not None
            present = {usb_attachment(h): h for h in handles}
            now = loop.time()
            for gone in seen.keys() - present.keys():
                if self._found_at_start is not None:
                    self._found_at_start.discard(gone)
                self._done_usb.discard(gone)
                self._ready_usb.pop(gone, None)
                bay = self._usb_bays.pop(gone, None)
                cycled = gone in self._awaiting_control
                if not cycled:  # (off for its bay's power cycle: the recorder is still in the bay)
                    self.status.publish(BayVacated(bay, gone.usb_serial or None))
                self.store.record(EntryType.DEVICE_REMOVED, None, {
                    "usb_serial": gone.usb_serial, "usb_port": gone.port, "bay": bay, "source": "usb",
                    **({"reason": "bay power cycle"} if cycled else {}),
                })
            for key in [k for k, deadline in self._awaiting_control.items() if now > deadline]:
                del self._awaiting_control[key]
                self._power_cycled_at.pop(key, None)
                self._offloaded_device.pop(key, None)
                self._not_back_in_control(key)
            # Back from its bay's power cycle: in control mode in an enumeration begun after the cycle was
            # asked for. A poll that missed the power-off window sees the same attachment before and after (it
            # never left `_done_usb`; the last poll may even have seen it in control mode, before its session
            # switched it), so this is decided before the `_done_usb` skip below.
            cycled_back = {key for key, handle in present.items()
                           if key in self._awaiting_control and handle.mode is RecorderMode.CONTROL
                           and enumerated_from >= self._power_cycled_at.get(key, now)}
            for key, handle in present.items():
                if key not in seen and (handle.mode is RecorderMode.CONTROL or key not in self._usb_dockings):
                    self._usb_dockings[key] = next(self._usb_docking_numbers)
            for key in self._usb_dockings.keys() - present.keys() - self._active_usb:
                del self._usb_dockings[key]
            seen = present
            self._present_usb = set(present)
            self._record_shared_usb_serials(handles)
            for key, handle in present.items():
                self._usb_bays[key] = self.config.bay_for_port(handle.location.port_path)
                if key in cycled_back and self._back_in_control(key, now):
                    continue
                if handle.mode is RecorderMode.CONTROL and key not in self._active_usb | self._done_usb:
                    if self._back_in_control(key, now):
                        continue
                    self._active_usb.add(key)
                    docking = self._usb_dockings[key]
                    self._spawn(self._control_session(handle, docking), f"recorder-{key.port}")
            await wait_event(stop, self.config.usb.poll_interval_s)

    def _record_shared_usb_serials(self, handles: list[RecorderHandle]) -> None:
        """A USB serial claimed at more than one port at once (identical factory serials, or a device
        copying another's) is a claim the station cannot believe: each recorder is served by its port as
        always, and the shared claim goes on the record (one entry each time the set of ports sharing it
        grows) and on the bays' tiles. A missing serial is shown on its bay too (a control-mode recorder's:
        the allow-list cannot pin it)."""
        assert self.store is not None
        ports_by_serial: dict[str, list[str]] = {}
        for handle in handles:
            if handle.usb_serial:
                ports_by_serial.setdefault(handle.usb_serial, []).append(handle.location.port_path)
        shared = {serial: tuple(sorted(ports)) for serial, ports in ports_by_serial.items() if len(ports) > 1}
        for serial, ports in shared.items():
            if set(ports) <= set(self._shared_usb_serials.get(serial, ())):
                continue
            bays = [self.config.bay_for_port(port) for port in ports]
            where = ", ".join(f"{port} (bay {bay})" for port, bay in zip(ports, bays, strict=True))
            reason = (f"USB serial {serial} is claimed by {len(ports)} devices at once, at USB ports "
                      f"{where}: a serial is a claim, not an identity; each is served as the recorder in "
                      "its own bay")
            log.warning("%s", reason)
            self.store.record(EntryType.ERROR, None, {
                "stage": "usb-identity", "usb_serial": serial, "usb_ports": list(ports), "bays": bays,
                "reason": reason,
            })
        self._shared_usb_serials = shared
        warnings: dict[int, BayUsbSerialClaim] = {}
        for handle in handles:
            bay = self.config.bay_for_port(handle.location.port_path)
            if bay is None:
                continue
            if handle.serial_problem is not None and not handle.mass_storage_only:
                # (A mass-storage-only recorder is known by its volume: its USB serial is pinned by nothing.)
                warnings[bay] = BayUsbSerialClaim(bay, UsbSerialProblem.MISSING)
            elif handle.usb_serial in shared:
                others = [self.config.bay_for_port(port) for port in shared[handle.usb_serial]
                          if port != handle.location.port_path]
                warnings[bay] = BayUsbSerialClaim(bay, UsbSerialProblem.SHARED, others)
        # Only changes go to the board: a warning appears, changes, or goes (its recorder left).
        for bay in self._usb_serial_warnings.keys() - warnings.keys():
            self.status.publish(BayUsbSerialClaim(bay, None))
        for bay, warning in warnings.items():
            if self._usb_serial_warnings.get(bay) != warning:
                self.status.publish(warning)
        self._usb_serial_warnings = warnings

    def _session_kwargs(self) -> dict[str, Any]:
        return {
            "executor": self.executor,
            "set_led": self.set_led,
            "on_progress": self._progress,
            "receipts": self.uplink,
            "pipeline": self.pipeline,
            "status": self.status,
        }

    async def _control_session(self, handle: RecorderHandle, docking: int) -> None:
        assert self.store is not None
        try:
            async with ConcurrencySlot(self.limit) as slot:
                session = ControlSession(self.store, self.config, **self._session_kwargs(), slot=slot)
                key = usb_attachment(handle)
                if self._found_at_start is not None and key in self._found_at_start:
                    session.found_at_start = True
                    self._found_at_start.discard(key)  # its first docking only
                result = await session.run(handle, self.claims, self.backend)
            self._finished(result)
            await self._return_to_control(usb_attachment(handle), result, session.device_serial)
        finally:
            key = usb_attachment(handle)
            self._active_usb.discard(key)
            if key in self._present_usb and self._usb_dockings.get(key) == docking:
                self._done_usb.add(key)

    # -- volumes ------------------------------------------------------------------------------------------

    async def _watch_volumes(self, watcher: VolumeWatcher) -> None:
        assert self.store is not None
        while True:
            event = await watcher.queue.get()
            if event.kind is VolumeEventKind.REFUSED:
                # A symlink posing as a volume: never followed, on the record at once.
                self.store.record(
                    EntryType.REFUSED, None, {"volume": display_name(event.path), "reason": event.reason}
                )
                self.status.publish(Refused(RefusalClass.VOLUME))
                continue
            assert event.mount is not None
            self._record_mount(event)
            if event.kind is VolumeEventKind.UNMOUNTED:
                # The session working on it stops at once (ending as device-gone, resumable), even
                # if another recorder is already mounted at the same bay directory.
                self.bound.unmounted(event.mount)
                left = self._volume_bays.pop(str(event.mount.path), None)
                if left is not None:
                    self.status.publish(BayVacated(*left))
            if event.kind is VolumeEventKind.MOUNTED:
                self._spawn(
                    self._volume_appeared(watcher, event.mount), f"volume-{display_name(event.path)}"
                )

    def _record_mount(self, event: VolumeEvent) -> None:
        assert self.store is not None and event.mount is not None
        mounted = event.kind is VolumeEventKind.MOUNTED
        self.store.record(
            EntryType.DEVICE_CONNECTED if mounted else EntryType.DEVICE_REMOVED,
            None,
            {**event.mount.as_record(), "source": "volume"},
        )
        mount = event.mount
        misread = codepage_problem(mount.fs_type, mount.super_options, self.config.usb.vfat_codepage)
        if mounted and misread is not None:
            # Offloaded all the same (names are kept as their bytes too), but an admin must fix the rule.
            log.warning("volume %s: %s", display_name(event.path), misread)
            self.store.record(EntryType.ERROR, None, {**event.mount.as_record(), "stage": "mount",
                                                      "reason": misread})

    async def _volume_appeared(self, watcher: VolumeWatcher, mount: VolumeMount) -> None:
        assert self.store is not None
        path = mount.path

        def still_mounted() -> bool:
            return watcher.current(path) == mount

        if not await wait_until_readable(
            path, self.config.usb.volume_timeout_s, executor=self.executor, still_mounted=still_mounted
        ):
            if still_mounted():
                self.store.record(
                    EntryType.ERROR,
                    None,
                    {
                        **mount.as_record(),
                        "stage": "volume",
                        "reason": f"mounted but not readable within {self.config.usb.volume_timeout_s:.0f} s",
                    },
                )
            return
        loop = asyncio.get_running_loop()
        try:
            # Bound to this mount from here on: nothing below looks the bay directory up again.
            root = await loop.run_in_executor(self.executor, self.bound.open, path, mount)
        except OSError as exc:
            log.info("volume %s left before it was opened: %s", display_name(path), exc)
            return
        if not still_mounted():
            self.bound.unmounted(mount)  # the UNMOUNTED event may have come before it was bound
        ended: tuple[int | None, OffloadResult | None] | None = None
        try:
            ended = await self._offload_volume(root, still_mounted)
        finally:
            if root.owner is None:
                self.bound.close(root)
        if ended is not None:
            await self._volume_docking_ended(*ended)

    async def _offload_volume(self, root: VolumeRoot, still_mounted: Callable[[], bool]
                              ) -> tuple[int | None, OffloadResult | None] | None:
        """The volume's own docking (no control session brought it): its bay and result, once it has ended;
        None when it was not docked here (no identity, a control session's volume, refused, gone)."""
        assert self.store is not None
        loop = asyncio.get_running_loop()
        path = root.path
        try:
            identity = await loop.run_in_executor(self.executor, read_volume_identity, root.fd)
        except (MassStorageError, OSError) as exc:
            self.store.record(
                EntryType.REFUSED, None, {"volume": display_name(path), "reason": f"no identity: {exc}"}
            )
            return None
        serial = identity.device_serial
        assert root.mount is not None
        claimed_ports = self.claims.usb_ports(serial)
        if claimed_ports:
            # A control session has this recorder: only a volume on its USB port is its volume (two
            # sessions may wait for the same serial, one per port: the volume's port picks one).
            found_at = ""
            for claimed_port in claimed_ports:
                on_port, found_at = await loop.run_in_executor(
                    self.executor, volume_on_port, root.mount.device, path, claimed_port
                )
                if on_port:
                    if self.claims.offer(claimed_port, serial, root):
                        root.owner = "control session"  # it closes the volume when its docking ends
                    return None
            await self._refuse_misplaced_volume(root, serial, claimed_ports, found_at)
            return None
        # No control session brought this volume: its bay comes from the kernel's topology or the
        # per-bay mount directory, so that its LED shows the docking too.
        bay, found_by = await loop.run_in_executor(
            self.executor, bay_of_volume, root.mount.device, path, self.config.bays
        )
        if bay is None:
            log.warning("volume %s: no bay for its LED: %s", display_name(path), found_by)
        self._volume_bays[str(path)] = (bay, serial)
        async with self._volume_session_ended:
            # The same recorder, re-mounted while its previous session still ends on the old mount:
            # this docking starts when that one has ended, if the mount is still there by then.
            await self._volume_session_ended.wait_for(lambda: serial not in self._active_devices)
        if not still_mounted():
            return None
        self._active_devices.add(serial)
        try:
            # The slot is given back while the docking only waits for the central (after-witness,
            # after-receipt), so a recorder waiting for its receipts never holds up another bay.
            async with ConcurrencySlot(self.limit) as slot:
                result = await VolumeSession(
                    self.store, self.config, **self._session_kwargs(), slot=slot
                ).run(root, bay)
            self._finished(result)
        finally:
            self._active_devices.discard(serial)
            async with self._volume_session_ended:
                self._volume_session_ended.notify_all()
        return bay, result

    async def _volume_docking_ended(self, bay: int | None, result: OffloadResult | None) -> None:
        """A volume docking no control session began ended (its volume closed). When it is a recorder with a
        control mode, left in mass-storage mode (an agent stopped after switching it: mid-offload, or before
        its bay's power cycle), and the docking ended `done`, the bay is power-cycled: the recorder comes
        back in control mode as a docking of its own (logged in, identified by its control protocol, nothing
        left to copy, its check-in if it was out), after which it is ready like any other. Without the power
        cycle an `error` entry says why it is not ready for check-out."""
        equipment = self.config.equipment
        if not equipment.enabled or bay is None or result is None \
                or result.outcome is not OffloadOutcome.DONE:
            return
        port = next((b.usb_port for b in self.config.bays if b.number == bay), None)
        loop = asyncio.get_running_loop()
        try:
            handles: list[RecorderHandle] = await loop.run_in_executor(
                self.executor, lambda: find_recorders(self.backend))
        except (RecorderError, OSError) as exc:
            log.warning("bay %s: USB enumeration after a volume docking failed: %s", bay, exc)
            return
        found = next((h for h in handles if h.location.port_path == port
                      and h.mode is RecorderMode.MASS_STORAGE and not h.mass_storage_only), None)
        if found is None:  # a mass-storage-only model, a plain stick, or already gone
            return
        assert self.store is not None
        key = usb_attachment(found)
        where = {"usb_serial": key.usb_serial, "usb_port": key.port, "bay": bay, "stage": "equipment"}
        dock = self.dock
        why = ("return_to_control is off" if not equipment.return_to_control
               else "the dock controller is not connected" if dock is None or not dock.connected else None)
        if why is None and dock is not None:
            try:
                await dock.power_cycle(bay, equipment.power_off_ms)
            except DockError as exc:
                why = f"bay power cycle: {exc}"
            else:
                log.info("bay %s: recorder %s left in mass-storage mode (no control session docked it): "
                         "power-cycled to dock it again in control mode", bay, key.usb_serial)
                return
        reason = (f"the recorder was left in mass-storage mode (docked without a control session, as after "
                  f"an agent restart) and stays so, not ready for check-out until it is pulled out and "
                  f"docked again: {why}")
        log.warning("bay %s: %s", bay, reason)
        self.store.record(EntryType.ERROR, None, {**where, "reason": reason})

    async def _refuse_misplaced_volume(
        self, root: VolumeRoot, serial: str, claimed_ports: list[str], found_at: str
    ) -> None:
        """A volume claiming (PARAM.INI) a recorder that a control session holds on another USB port:
        a spoofed stick, never read as evidence, on the record with the bay it is in."""
        assert self.store is not None and root.mount is not None
        bay, _ = await asyncio.get_running_loop().run_in_executor(
            self.executor, bay_of_volume, root.mount.device, root.path, self.config.bays
        )
        expected_bays = [self.config.bay_for_port(port) for port in claimed_ports]
        held_at = ", ".join(f"{port} (bay {b})" for port, b in zip(claimed_ports, expected_bays, strict=True))
        reason = (
            f"volume claims recorder {printable(serial)}, which a control session holds on USB port "
            f"{held_at}; this volume is in bay {bay}, on {found_at}"
        )
        # One port (the usual case) keeps the entry's shape; a serial held at several lists them all.
        expected: dict[str, Any] = (
            {"expected_bay": expected_bays[0], "expected_usb_port": claimed_ports[0]}
            if len(claimed_ports) == 1
            else {"expected_bays": expected_bays, "expected_usb_ports": claimed_ports}
        )
        log.warning("volume %s refused: %s", display_name(root.path), reason)
        self.store.record(
            EntryType.REFUSED,
            None,
            {
                **root.mount.as_record(),
                "device_serial": printable(serial),
                "bay": bay,
                **expected,
                "reason": reason,
            },
        )
        await self.set_led(bay, BayLed.ERROR)

    def _finished(self, result: OffloadResult | None) -> None:
        if result is not None:
            self.results.append(result)


# The supervisor's task states as the status board words them (failed and stopped are their own).
TASK_STATES = {
    "pending": "running", "running": "running", "backoff": "restarting", "cancelling": "restarting"
}


def station_identity(config: StationConfig) -> dict[str, Any]:
    """The fixed part of the status board's station JSON (the key id is added once the store is open)."""
    try:
        version = importlib.metadata.version("evidence-edge")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return {
        "id": config.station.id,
        "name": config.station.name,
        "unit": {"code": config.station.unit_code, "name": config.station.unit_name},
        "version": version,
        "key_id": None,
    }


def clock_facts(config: StationConfig) -> ClockFacts:
    trust = station_clock_trust(config.station.clock, config.time_sync)
    return ClockFacts(trust.trusted, trust.source, trust.reason)


async def log_clock_verdict(config: StationConfig) -> None:
    """One line at start: whether the station clock is trusted to set recorder clocks (校时), the source
    that decided and why, so that an administrator sees a clock the sandbox keeps from being trusted
    before the first docking. The decision is taken again, and recorded on the ledger, at each docking."""
    trust = await asyncio.to_thread(station_clock_trust, config.station.clock, config.time_sync)
    if trust.trusted:
        log.info("station clock trusted (source %s): %s; recorder clocks are set at docking", trust.source,
                 trust.reason)
    else:
        log.warning("station clock NOT trusted (source %s): %s; recorder clocks are not set at docking, "
                    "only their offsets recorded", trust.source, trust.reason)


def apply_log_level(config: StationConfig) -> None:
    """The root log level from ``[logging] level`` (the command line's -v, when given, wins: see
    `run_station`)."""
    logging.getLogger().setLevel(config.logging.level.upper())


async def run_station(config: StationConfig, config_path: Path | None = None) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    notifier = SystemdNotifier()
    agent = StationAgent(config)
    # `edge run` logs at INFO unless -v (DEBUG) was given: only then does the command line decide.
    agent.log_level_from_config = logging.getLogger().level == logging.INFO
    if agent.log_level_from_config:
        apply_log_level(config)
    reloads: asyncio.Task[None] | None = None
    if config_path is not None:
        reloader = ConfigReloader(config_path, config, apply=agent.apply_config, record=agent.record_event,
                                  notifier=notifier)
        loop.add_signal_handler(signal.SIGHUP, reloader.request)
        reloads = asyncio.create_task(_serve_reloads(reloader, agent), name="config-reload")
    log.info(
        "station %s starting: store %s, recorder volumes under %s",
        config.station.id,
        config.station.store_dir,
        config.usb.mount_root,
    )
    await log_clock_verdict(config)
    nls = await asyncio.to_thread(nls_problem, config.usb.vfat_codepage)
    if nls is not None:
        log.warning("%s", nls)
    started = asyncio.create_task(_freeze_when_started(agent), name="collector-freeze")
    try:
        await agent.run(stop, notifier=notifier)
    except SupervisorGaveUp as exc:
        log.error("%s; exiting so that systemd restarts the station", exc)
        return 1
    finally:
        started.cancel()
        if reloads is not None:
            loop.remove_signal_handler(signal.SIGHUP)
            reloads.cancel()
            await asyncio.gather(reloads, return_exceptions=True)
        notifier.stopping()
    log.info("station %s stopped", config.station.id)
    return 0


async def _freeze_when_started(agent: StationAgent) -> None:
    """The agent's start-up objects out of the cyclic collector's reach once it is ready
    (:mod:`edge.runtime.collector`: this is the process's own entry point, `edge run`)."""
    await agent.ready.wait()
    freeze_start_up_objects("station agent")


async def _serve_reloads(reloader: ConfigReloader, agent: StationAgent) -> None:
    """Reloads wait until the store is open (a SIGHUP during start-up is served right after it)."""
    await agent.ready.wait()
    await reloader.run()
