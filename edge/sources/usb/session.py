"""One docking of one recorder, from plug-in to LED done.

Control-mode recorders: USB serial pinned by the allow-list (else refused before the password, which
goes over USB in clear, is sent) → authenticate (allow-list, password) → identity → clock offset, 校时
when the station clock is trusted → mass-storage mode → wait for the volume → offload. Mass-storage-only
recorders, and recorders found already in mass-storage mode after a restart, start at the volume with
identity from the volume (or from the unfinished session they belong to), and the bay the station found
for the volume (:mod:`edge.sources.usb.bays`). Either way the volume comes bound to its mount
(:mod:`edge.sources.usb.mounted`), listed once per docking.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any, NamedTuple

from drivers.serial.dock import BayLed
from drivers.usb.mass_storage import MassStorageError, VolumeIdentity, read_volume_identity
from drivers.usb.recorder import (
    RecorderAuthError,
    RecorderDriver,
    RecorderError,
    RecorderGoneError,
    RecorderHandle,
    RecorderLockedError,
    RecorderRejectedError,
)
from edge.config.station import StationConfig
from edge.custody.ledger import EntryType, station_time_now
from edge.equipment.checkout import check_in_after_docking
from edge.ingest.pipeline import IngestPipeline
from edge.ingest.repository import IngestRepository
from edge.ingest.store import StationStore
from edge.observe.sink import NULL_SINK, BayChanged, BayPhase, Device, ErrorClass, Officer, StatusSink
from edge.runtime.clock import ClockTrust, measure_offset_ms, station_clock_trust
from edge.runtime.slots import ConcurrencySlot
from edge.sources.usb.bay_leds import NOT_ALLOWED, OUTCOME_LEDS, WRONG_PASSWORD, led_for_error
from edge.sources.usb.enumerate import Listing
from edge.sources.usb.identity import ClockFacts, RecorderIdentity, SessionInfo
from edge.sources.usb.mounted import VolumeRoot
from edge.sources.usb.offload import (
    BayProgress,
    OffloadOutcome,
    OffloadResult,
    ReceiptGate,
    VolumeOffload,
    list_recorder_volume,
)
from edge.sources.usb.volume_clock import DeviceClockEstimate, TimedFile, estimate_device_clock_offset
from edge.sources.usb.volumes import display_name, printable

log = logging.getLogger(__name__)

SetLed = Callable[[int | None, BayLed], Awaitable[None]]
ProgressSink = Callable[[str, int | None, BayProgress], None]
CLOCK_TOLERANCE_MS = 1000

# What the bay shows on the status board when a docking ends: its phase, and the error class.
OUTCOME_STATUS: dict[OffloadOutcome, tuple[BayPhase, ErrorClass | None]] = {
    OffloadOutcome.DONE: (BayPhase.DONE, None),
    OffloadOutcome.PARTIAL: (BayPhase.ERROR, ErrorClass.FILES_FAILED),
    OffloadOutcome.DEVICE_GONE: (BayPhase.ERROR, ErrorClass.PULLED_EARLY),
    OffloadOutcome.STORE_FULL: (BayPhase.ERROR, ErrorClass.DISK_FULL),
    OffloadOutcome.FAILED: (BayPhase.ERROR, ErrorClass.FAILED),
    OffloadOutcome.AWAITING_RECEIPT: (BayPhase.AWAITING_RECEIPT, None),
    OffloadOutcome.AWAITING_WITNESS: (BayPhase.AWAITING_RECEIPT, None),
}

JSON_SAFE_INT = (1 << 53) - 1


def device_number(value: int) -> int | str:
    """A number a device reported, as the ledger can hold it: beyond 2**53 it is kept as text."""
    return value if -JSON_SAFE_INT <= value <= JSON_SAFE_INT else str(value)


class SessionRefused(Exception):
    """The recorder may not be offloaded here; the message says why (already in the ledger), and
    `error_class` which kind of refusal it is (the bay's LED pattern follows from it)."""

    def __init__(self, reason: str, error_class: str | None = None) -> None:
        super().__init__(reason)
        self.error_class = error_class

    @property
    def led(self) -> BayLed:
        return led_for_error(self.error_class)


class UsbAttachment(NamedTuple):
    """One docked USB recorder as the station tells it apart: where it is attached (the port path, i.e.
    the bay) and the USB serial it claims there ("" for none). Never the serial alone: two recorders
    can claim the same serial (identical factory serials, a hostile copy) or none at all."""

    port: str
    usb_serial: str


def usb_attachment(handle: RecorderHandle) -> UsbAttachment:
    return UsbAttachment(handle.location.port_path, handle.usb_serial)


class VolumeClaim:
    """One control session's claim: the USB port it found its recorder on, the device serial the
    recorder gave after login, and the volume the session waits for. Returned by
    `VolumeClaims.expect`; the session that made it is the only one that forgets or releases it."""

    __slots__ = ("device_serial", "usb_port", "volume")

    def __init__(self, device_serial: str, usb_port: str, volume: asyncio.Future[VolumeRoot]) -> None:
        self.device_serial = device_serial
        self.usb_port = usb_port
        self.volume = volume

    def __repr__(self) -> str:
        return f"VolumeClaim({self.device_serial!r} at {self.usb_port})"


class VolumeClaims:
    """Control sessions announce the volume they expect before switching the recorder's mode, and
    keep the recorder marked busy until they end, so its volume never starts a second session.

    A claim names the USB port its control session found the recorder on and the serial the recorder
    gave after login. The serial a volume carries (PARAM.INI) is a claim any stick can make, and two
    recorders in two bays may give the same one, so the station offers a volume only to a claim of the
    port it is on (:func:`edge.sources.usb.bays.volume_on_port`); `usb_ports` says which ports wait for
    a serial.

    One port can hold two claims at once: recorder A's session still ends (waiting for the central
    after a pull, or unwinding a pull mid-copy) when recorder B is docked in the same bay and its own
    session starts. Each session holds its own claim (`VolumeClaim`) and forgets or releases only that
    one, so the end of A's session never takes B's claim away.

    The volume is handed over bound to its mount (:class:`VolumeRoot`): an accepted offer passes it
    to the control session, which closes it when its docking ends."""

    def __init__(self) -> None:
        self._claims: list[VolumeClaim] = []  # in the order they were made
        self._waiting: set[VolumeClaim] = set()  # the claims whose session still waits for its volume

    def expect(self, device_serial: str, usb_port: str) -> VolumeClaim:
        future: asyncio.Future[VolumeRoot] = asyncio.get_running_loop().create_future()
        claim = VolumeClaim(device_serial, usb_port, future)
        self._claims.append(claim)
        self._waiting.add(claim)
        return claim

    def usb_ports(self, device_serial: str) -> list[str]:
        """The USB ports of the control sessions that have (or wait for) this recorder serial."""
        return sorted({c.usb_port for c in self._claims if c.device_serial == device_serial})

    def offer(self, usb_port: str, device_serial: str, root: VolumeRoot) -> bool:
        """Hand the volume to the session on this port waiting for this recorder's volume (the caller
        has checked that the volume is on the port). Of two such sessions the newer one takes it: the
        older one's recorder left the port before its volume came."""
        for claim in reversed(self._claims):
            if claim.usb_port != usb_port or claim.device_serial != device_serial:
                continue
            if claim not in self._waiting or claim.volume.done():
                continue
            self._waiting.discard(claim)
            claim.volume.set_result(root)
            return True
        return False

    def forget(self, claim: VolumeClaim) -> None:
        """The claim's session no longer waits for its volume (it came, or the wait ended)."""
        self._waiting.discard(claim)

    def release(self, claim: VolumeClaim) -> None:
        """The claim's session has ended: its recorder is no longer busy through it."""
        self._waiting.discard(claim)
        with contextlib.suppress(ValueError):
            self._claims.remove(claim)

    def busy(self, device_serial: str) -> bool:
        return any(c.device_serial == device_serial for c in self._claims)


class DockingSession:
    """Shared machinery of both session kinds."""

    def __init__(
        self,
        store: StationStore,
        config: StationConfig,
        *,
        executor: Executor | None,
        set_led: SetLed,
        on_progress: ProgressSink | None = None,
        receipts: ReceiptGate | None = None,
        pipeline: IngestPipeline | None = None,
        slot: ConcurrencySlot | None = None,
        status: StatusSink = NULL_SINK,
    ) -> None:
        self.store = store
        self.status = status
        # The bay and the serial this docking is shown under on the status board (set as they are known).
        self._bay: int | None = None
        self._shown_as: str | None = None
        # The product serial the recorder gave after login (a control docking's; "" until then): which
        # recorder the station offloaded at this attachment, for the desk (edge.station).
        self.device_serial = ""
        # Docked when the agent started (its first USB poll found it): a check-in only if the station saw it
        # leave since its check-out (edge.equipment.checkout.check_in_after_docking).
        self.found_at_start = False
        self.pipeline = pipeline
        self.slot = slot  # the bay's offload slot, given back while the docking only waits for the central
        self.repository = IngestRepository(store)
        self.receipts = receipts
        self.config = config
        self.executor = executor
        self.set_led = set_led
        self.on_progress = on_progress

    async def _thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, lambda: fn(*args))

    def _show(
        self,
        phase: BayPhase,
        error_class: ErrorClass | None = None,
        *,
        officer: Officer | None = None,
        device: Device | None = None,
    ) -> None:
        self.status.publish(BayChanged(self._bay, self._shown_as, phase, error_class, officer, device))

    def _refuse(self, reason: str, data: dict[str, Any], error_class: str | None = None) -> SessionRefused:
        self.store.record(EntryType.REFUSED, None, {**data, "reason": reason})
        shown = ErrorClass.NOT_ALLOWED
        with contextlib.suppress(ValueError):  # a class the status model does not know: not_allowed
            shown = ErrorClass(error_class or shown)
        self._show(BayPhase.ERROR, shown)
        log.warning("refused recorder %s: %s", data.get("device_serial") or data.get("usb_serial"), reason)
        return SessionRefused(reason, error_class)

    async def _contained(
        self, work: Awaitable[OffloadResult | None], bay: int | None, where: dict[str, Any]
    ) -> OffloadResult | None:
        """Run one docking so that whatever it raises ends as a ledger error and a red LED, never as
        a dead task: the station and the other bays go on."""
        try:
            return await work
        except Exception as exc:
            log.exception("docking %s failed unexpectedly", where)
            try:
                self.store.record(
                    EntryType.ERROR,
                    None,
                    {
                        **where,
                        "bay": bay,
                        "stage": "docking",
                        "reason": f"unexpected {type(exc).__name__}: {str(exc)[:300]}",
                    },
                )
            except Exception:
                log.exception("could not record the failure in the ledger")
            self._show(BayPhase.ERROR, ErrorClass.FAILED)
            await self.set_led(bay, BayLed.ERROR)
            return None

    async def _clock_trust(self) -> ClockTrust:
        # Asking chronyc or timedated blocks for up to [time_sync] command_timeout_s: not on the loop.
        trust: ClockTrust = await self._thread(
            station_clock_trust, self.config.station.clock, self.config.time_sync
        )
        return trust

    def _allowed(self, device_serial: str, data: dict[str, Any]) -> None:
        recorders = self.config.recorders
        if recorders.entry(device_serial) is None and not recorders.allow_unknown:
            reason = f"recorder {device_serial} is not on the station's allow-list"
            raise self._refuse(reason, data, NOT_ALLOWED)

    async def offload(
        self, session: SessionInfo, root: VolumeRoot, listing: Listing | None = None
    ) -> OffloadResult:
        self.repository.start_session(
            session.session,
            device_serial=session.identity.device_serial,
            usb_serial=session.identity.usb_serial,
            bay=session.bay,
            started=station_time_now(),
            facts={"identity": session.identity.as_dict(), "clock": session.clock.as_dict()},
            entry={
                "session": session.session,
                "bay": session.bay,
                "identity": session.identity.as_dict(),
                "clock": session.clock.as_dict(),
            },
        )
        await self.set_led(session.bay, BayLed.COPYING)
        self._show(BayPhase.COPYING)

        def progress(p: BayProgress) -> None:
            if self.on_progress is not None:
                self.on_progress(session.identity.device_serial, session.bay, p)

        offload = VolumeOffload(
            self.store,
            self.config,
            session,
            root,
            executor=self.executor,
            on_progress=progress,
            receipts=self.receipts,
            pipeline=self.pipeline,
            listing=listing,
            slot=self.slot,
            status=self.status,
        )
        try:
            result = await offload.run()
        except Exception as exc:
            log.exception("recorder %s: offload failed unexpectedly", session.identity.device_serial)
            self.store.record(
                EntryType.ERROR,
                None,
                {
                    "session": session.session,
                    "device_serial": session.identity.device_serial,
                    "stage": "offload",
                    "reason": f"unexpected {type(exc).__name__}: {exc}",
                },
            )
            result = OffloadResult(
                OffloadOutcome.FAILED,
                offload.items,
                offload.progress.verified,
                offload.progress.wiped,
                offload.progress.bytes_done,
                [*offload.progress.errors, f"unexpected {type(exc).__name__}: {exc}"],
            )
        self.repository.end_session(
            session.session,
            ended=station_time_now(),
            outcome=result.outcome.value,
            entry={
                "session": session.session,
                "outcome": result.outcome.value,
                "items": len(result.items),
                "verified": result.verified,
                "wiped": result.wiped,
                "errors": len(result.errors),
                # Files that are not evidence (PARAM.INI, firmware): left alone, but on the record.
                "not_evidence": result.not_evidence[:100],
            },
        )
        if self.config.equipment.enabled:
            # A docking of the recorder itself that ended `done` (or `partial`: its unread files named) is
            # its check-in (归还); anything else (a touch and go, a failure, a volume naming it) leaves the
            # assignment open, on the record.
            check_in_after_docking(
                self.store, device_serial=session.identity.device_serial,
                usb_serial=session.identity.usb_serial, identity_source=session.identity.source,
                outcome=result.outcome.value, session=session.session, bay=session.bay,
                unread=result.unread, found_at_start=self.found_at_start)
        phase, error_class = OUTCOME_STATUS[result.outcome]
        if result.outcome is OffloadOutcome.STORE_FULL and result.kept_for_rooms:
            error_class = ErrorClass.ROOMS_RECORDING  # not full: kept for them (named on the ledger)
        self._show(phase, error_class)
        await self.set_led(session.bay, OUTCOME_LEDS[result.outcome])
        return result


class ControlSession(DockingSession):
    """A recorder that docked in control mode."""

    async def run(self, handle: RecorderHandle, claims: VolumeClaims, backend: Any) -> OffloadResult | None:
        bay = self.config.bay_for_port(handle.location.port_path)
        return await self._contained(
            self._run(handle, claims, backend),
            bay,
            {"usb_serial": handle.usb_serial, "usb_port": handle.location.port_path},
        )

    async def _run(self, handle: RecorderHandle, claims: VolumeClaims, backend: Any) -> OffloadResult | None:
        bay = self.config.bay_for_port(handle.location.port_path)
        where: dict[str, Any] = {
            "usb_serial": handle.usb_serial,
            "usb_port": handle.location.port_path,
            "bay": bay,
        }
        self.store.record(
            EntryType.DEVICE_CONNECTED,
            None,
            {
                **where,
                "vendor_id": handle.vendor_id,
                "product_id": handle.product_id,
                "mode": handle.mode.value,
                # No usable USB serial: served by its port like any other, but it cannot be pinned.
                **({"usb_serial_problem": handle.serial_problem} if handle.serial_problem else {}),
            },
        )
        await self.set_led(bay, BayLed.COPYING)
        self._bay, self._shown_as = bay, handle.usb_serial or None
        self._show(BayPhase.AUTHENTICATING)
        try:
            session, device_serial = await self._authenticate(handle, backend, bay, where)
            self.device_serial = device_serial
        except SessionRefused as refused:
            await self.set_led(bay, refused.led)
            return None
        except RecorderError as exc:
            self.store.record(EntryType.ERROR, None, {**where, "stage": "control", "reason": str(exc)})
            self._show(BayPhase.ERROR, ErrorClass.DEVICE_ERROR)
            await self.set_led(bay, BayLed.ERROR)
            return None
        claim = claims.expect(device_serial, handle.location.port_path)
        try:
            try:
                await self._thread(self._switch, handle, backend)
                root = await asyncio.wait_for(claim.volume, self.config.usb.volume_timeout_s)
            except (RecorderError, TimeoutError) as exc:
                reason = (
                    f"volume of recorder {device_serial} did not appear within "
                    f"{self.config.usb.volume_timeout_s:.0f} s"
                    if isinstance(exc, TimeoutError)
                    else str(exc)
                )
                self.store.record(
                    EntryType.ERROR,
                    None,
                    {**where, "device_serial": device_serial, "stage": "mass-storage", "reason": reason},
                )
                missing = isinstance(exc, TimeoutError)
                self._show(BayPhase.ERROR, ErrorClass.NO_VOLUME if missing else ErrorClass.DEVICE_ERROR)
                await self.set_led(bay, BayLed.ERROR)
                return None
            finally:
                claims.forget(claim)
            try:
                return await self.offload(session, root)
            finally:
                root.close()
        finally:
            claims.release(claim)

    def _refusal(self, device_serial: str, usb_serial: str) -> str | None:
        """Why this recorder may not be served here (USB serial pin, allow-list), or None."""
        recorders = self.config.recorders
        entry = recorders.entry(device_serial)
        if entry is not None and entry.usb_serial and entry.usb_serial != usb_serial:
            return (
                f"recorder {device_serial} answers on USB serial {usb_serial}, "
                f"allow-list pins {entry.usb_serial}"
            )
        if entry is None and not recorders.allow_unknown:
            return f"recorder {device_serial} is not on the station's allow-list"
        return None

    def _refusal_before_login(self, usb_serial: str) -> str | None:
        """Why the password may not be sent to this device at all, or None.

        Anything with the recorders' USB vendor and product id gets this far; the recorder password
        (often the fleet-wide default) goes over USB in clear. So unless unknown recorders are
        allowed, it goes only to a device whose USB serial an allow-list entry pins: a device that
        is pinned by no entry learns nothing from the station (its product serial would only be
        readable after logging in)."""
        recorders = self.config.recorders
        if recorders.allow_unknown or recorders.entry_for_usb(usb_serial) is not None:
            return None
        if not usb_serial:
            return (
                "the device has no usable USB serial, so no allow-list entry can pin it, and unknown "
                "recorders are not allowed: the recorder password was not sent"
            )
        return (
            f"USB serial {printable(usb_serial)} is pinned by no allow-list entry and unknown "
            "recorders are not allowed: the recorder password was not sent (pin it with usb_serial "
            "in [[recorders.allow]])"
        )

    def _password_for(self, handle: RecorderHandle) -> str | None:
        recorders = self.config.recorders
        entry = recorders.entry_for_usb(handle.usb_serial)
        ref = (entry.password if entry and entry.password else None) or recorders.default_password
        return None if ref is None else ref.resolve()

    async def _authenticate(
        self, handle: RecorderHandle, backend: Any, bay: int | None, where: dict[str, Any]
    ) -> tuple[SessionInfo, str]:
        refusal = self._refusal_before_login(handle.usb_serial)
        if refusal is not None and handle.serial_problem is not None:
            refusal = f"USB serial {handle.serial_problem}: {refusal}"
        if refusal is not None:
            raise self._refuse(refusal, where, NOT_ALLOWED)
        password = self._password_for(handle)
        if password is None:
            raise self._refuse(
                "no recorder password configured (recorders.default_password)", where, ErrorClass.NO_PASSWORD
            )
        trust = await self._clock_trust()
        trusted = trust.trusted

        firmware: list[str | None] = [None, None]  # (version, why none): read in the thread below

        def work() -> tuple[Any, str, tuple[int, int, int], int, Any, ClockFacts | None]:
            with RecorderDriver(handle, backend) as driver:
                id_code = driver.id_code()
                driver.login(password)
                info = driver.info()
                if self._refusal(info.device_serial, handle.usb_serial) is not None:
                    # Refused below, with a ledger entry: nothing more is read from, and above all
                    # nothing is written to, a recorder that is not the one the allow-list names.
                    return info, id_code, (0, 0, 0), 0, None, None
                sample = driver.clock_sample()
                tz = driver.clock().tz_offset_min
                status = driver.status()
                firmware[:] = read_firmware_version(driver)
                after: ClockFacts | None = None
                offset = measure_offset_ms(*sample)
                if trusted and abs(offset) > CLOCK_TOLERANCE_MS:
                    driver.set_clock(int(time.time() * 1000), tz)
                    again = driver.clock_sample()
                    after = ClockFacts(
                        again[1],
                        (again[0] + again[2]) // 2,
                        offset,
                        tz,
                        trusted,
                        True,
                        measure_offset_ms(*again),
                        station_clock_source=trust.source,
                        station_clock_reason=trust.reason,
                    )
                return info, id_code, sample, tz, status, after

        try:
            info, id_code, sample, tz, status, after = await self._thread(work)
        except RecorderLockedError as exc:
            reason = f"recorder locked after wrong passwords: {exc}"
            raise self._refuse(reason, where, WRONG_PASSWORD) from exc
        except RecorderAuthError as exc:
            raise self._refuse(
                f"recorder rejected the station's password: {exc}", where, WRONG_PASSWORD
            ) from exc
        device_serial = info.device_serial
        data = {**where, "device_serial": device_serial}
        refusal = self._refusal(device_serial, handle.usb_serial)
        if refusal is not None:
            raise self._refuse(refusal, data, NOT_ALLOWED)
        identity = RecorderIdentity(
            device_serial=device_serial,
            officer_no=info.officer_no,
            officer_name=info.officer_name,
            unit_code=info.unit_code,
            unit_name=info.unit_name,
            source="usb-control",
            usb_serial=handle.usb_serial,
            id_code=id_code,
            usb_port=handle.location.port_path,
        )
        offset = measure_offset_ms(*sample)
        clock = after or ClockFacts(
            sample[1],
            (sample[0] + sample[2]) // 2,
            offset,
            tz,
            trusted,
            station_clock_source=trust.source,
            station_clock_reason=trust.reason,
        )
        self.store.record(
            EntryType.DEVICE_AUTHENTICATED,
            None,
            {
                **data,
                "identity": identity.as_dict(),
                "status": {
                    "battery_percent": device_number(status.battery_percent),
                    "storage_free_bytes": device_number(status.storage_free_bytes),
                    "storage_total_bytes": device_number(status.storage_total_bytes),
                    "file_count": device_number(status.file_count),
                    "firmware": firmware[0],
                },
            },
        )
        if firmware[1] is not None:
            # The docking goes on: a version is for the fleet's records, not for the evidence.
            self.store.record(EntryType.ERROR, None,
                              {**data, "stage": "firmware-version", "reason": firmware[1]})
        self.store.record(
            EntryType.CLOCK_MEASURED,
            None,
            {**data, "offset_ms": offset, "station_synchronised": trusted, "station_clock": trust.as_dict()},
        )
        if clock.clock_set:
            self.store.record(
                EntryType.CLOCK_SET,
                None,
                {**data, "offset_before_ms": offset, "offset_after_ms": clock.offset_after_set_ms},
            )
        battery = status.battery_percent
        self._show(
            BayPhase.AUTHENTICATING,
            officer=Officer(info.officer_name, info.officer_no),
            device=Device(device_serial, id_code, battery if 0 <= battery <= 100 else None),
        )
        session = SessionInfo(str(uuid.uuid4()), self.config.station.id, bay, identity, clock)
        return session, device_serial

    @staticmethod
    def _switch(handle: RecorderHandle, backend: Any) -> None:
        # Re-enumerating in the new mode can look like the old device going away.
        with RecorderDriver(handle, backend) as driver, contextlib.suppress(RecorderGoneError):
            driver.switch_to_mass_storage()


def read_firmware_version(driver: RecorderDriver) -> tuple[str | None, str | None]:
    """(version, None), or (None, why there is none) when the recorder's GET_VERSION is refused
    (firmware older than the request) or says something that is no version (control characters,
    undecodable bytes, a reply longer than the field). A recorder gone raises as for any request."""
    try:
        return driver.firmware_version(), None
    except RecorderGoneError:
        raise
    except RecorderRejectedError as exc:
        return None, f"the recorder does not report its firmware version: {printable(str(exc))[:300]}"
    except RecorderError as exc:
        log.warning("recorder firmware version refused: %s", printable(str(exc))[:300])
        return None, f"firmware version refused: {printable(str(exc))[:300]}"


class VolumeSession(DockingSession):
    """A volume that appeared with no control session expecting it."""

    async def run(self, root: VolumeRoot, bay: int | None = None) -> OffloadResult | None:
        """Offload the volume bound to `root` (the caller keeps it and closes it after)."""
        return await self._contained(self._run(root, bay), bay, {"volume": display_name(root.path)})

    async def _run(self, root: VolumeRoot, bay: int | None) -> OffloadResult | None:
        volume = display_name(root.path)
        self._bay, self._shown_as = bay, None
        self._show(BayPhase.AUTHENTICATING)
        try:
            found: VolumeIdentity = await self._thread(read_volume_identity, root.fd)
        except (MassStorageError, OSError) as exc:
            self.store.record(EntryType.REFUSED, None, {"volume": volume, "reason": f"no identity: {exc}"})
            self._show(BayPhase.ERROR, ErrorClass.NO_IDENTITY)
            await self.set_led(bay, BayLed.ERROR)
            return None
        self._shown_as = found.device_serial
        self._show(
            BayPhase.AUTHENTICATING,
            officer=Officer(found.officer_name, found.officer_no),
            device=Device(found.device_serial),
        )
        data = {"device_serial": found.device_serial, "volume": volume}
        try:
            self._allowed(found.device_serial, data)
        except SessionRefused as refused:
            await self.set_led(bay, refused.led)
            return None
        resumed = self._unfinished_session(found.device_serial)
        listing: Listing | None = None
        if resumed is not None:
            identity = RecorderIdentity(**{**resumed["identity"], "source": "resumed session"})
            clock = ClockFacts.from_dict(resumed["clock"])
            bay = resumed["bay"] if bay is None else bay
            self._bay = bay
        else:
            identity = RecorderIdentity(
                device_serial=found.device_serial,
                officer_no=found.officer_no,
                officer_name=found.officer_name,
                unit_code=found.unit_code,
                unit_name=found.unit_name,
                source=found.source,
            )
            docked_ms = int(time.time() * 1000)
            trust = await self._clock_trust()
            try:
                # Listed once for this docking: the clock estimate and the offload share it.
                listing = await self._thread(list_recorder_volume, root.fd, self.config.offload)
            except OSError as exc:
                unlisted = f"no estimate: cannot list the volume: {exc.strerror or exc}"
                estimate = DeviceClockEstimate(None, unlisted, {})
            else:
                estimate = self._estimate_device_clock(listing, docked_ms)
            clock = ClockFacts(
                None,
                docked_ms,
                None,
                None,
                trust.trusted,
                station_clock_source=trust.source,
                station_clock_reason=trust.reason,
                estimate=estimate,
            )
        session = SessionInfo(str(uuid.uuid4()), self.config.station.id, bay, identity, clock)
        return await self.offload(session, root, listing)

    def _estimate_device_clock(self, listing: Listing, docked_ms: int) -> DeviceClockEstimate:
        """This recorder cannot be asked its time: estimate its offset from the times on its volume."""
        tz = self.config.usb.mass_storage_tz_offset_min
        if tz is None:
            tz = (time.localtime(docked_ms / 1000).tm_gmtoff or 0) // 60
        files = (TimedFile(f.name, f.display_path, f.mtime_ns) for f in listing.files)
        return estimate_device_clock_offset(files, docked_utc_ms=docked_ms, tz_offset_min=tz)

    def _unfinished_session(self, device_serial: str) -> dict[str, Any] | None:
        """Identity and clock facts of this recorder's interrupted USB-authenticated session, if any.

        A recorder found in mass-storage mode after a restart was authenticated before the switch;
        its files keep the identity read over the control protocol rather than the volume's claims.
        """
        found = self.repository.unfinished_session(device_serial)
        if found is None:
            return None
        facts, bay = found
        if facts["identity"].get("source") not in ("usb-control", "resumed session"):
            return None
        return {"identity": facts["identity"], "clock": facts["clock"], "bay": bay}
