"""What the platform knows about each GB/T 28181 device: where it is, whether it is online, its channels,
its clock, and the media sessions in progress. Pure state, no I/O: the platform service changes it, the
operator view (`edge gb28181 devices`, the status board) reads `snapshot()`.

Online and offline are judged with a monotonic clock passed in (the seam tests drive): a device is online
from a successful REGISTER (or a keepalive while registered) until it unregisters (`Expires: 0`), its
registration expires, or `keepalive_interval_s * keepalive_timeout_count` pass without a keepalive
(GB/T 28181-2016 9.6.1; wvp takes the earlier of the two as well). Each transition is returned to the
caller, which writes the ledger entry: the registry itself records nothing.

Where a device is (`address`, where every request goes) is the source of its last authenticated REGISTER,
and nothing else moves it. A keepalive proves nothing (MANSCDP carries no authentication) and behind a
carrier NAT many subscribers share one host: a keepalive from another port of the device's host keeps it
online (a NAT that rebound the device's port is the common cause) but does not move it; it is counted and
shown (`keepalive_other_port`), and the registrar bounds how long a rebinding can leave requests going to
the old port (the registration's expiry: the device registers again from its new port).

The device's clock: `clock_offset_s` is the last measured offset (device minus station, from DeviceStatus),
measured while the station's clock was trusted: one measured against an untrusted station clock is kept
apart (`clock_measured_untrusted`) and wants a trusted one (`clock_remeasure`).
The station sets a device's clock (the Date of a REGISTER 200, GB/T 28181 9.10.3) only once that clock was
measured since it last set it (`clock_sync_due`), so the offset the device's recordings were made with is
always on the record first; `clock_epochs` keep, per setting, the offset that applied before it, so a
recording's time can be given the offset of the clock that stamped it (`clock_reading_at`). Each epoch
covers a stretch of device times: from the setting that began it (the station's time then, which the
device took) to the setting that ended it (the station's time then plus the epoch's offset). A clock that
was ahead and is set back stamps the times of the overlap twice; once the current clock has reached them
(its now, within `CLOCK_REACH_MARGIN_S`), a stamp there is ambiguous and given no offset
(`ClockUnknown.AMBIGUOUS`), never the wrong clock's. Boundaries are known to `CLOCK_EPOCH_MARGIN_S`
(DeviceTime has whole seconds), so stamps that close to a setting are ambiguous too. A stamp no known
clock can have made (between a clock set forward and its old end, or before the history kept) gets none
either, with why. A clock that stepped by itself (no setting by the station) closes its stretch too, the
step's window running from the last measurement that matched the stretch (`ClockEpoch.matched_at_s`,
kept across restarts) to the one that found the step; a stretch restored without a start and never
matched on record gives a step no window (when it came is not known, only that it came before now): the
new stretch has no start either, and a stamp both clocks may have made gets no offset
(`ClockUnknown.STEP_WINDOW_UNKNOWN`), never the old clock's.

Wall-clock times (`registered_at`, `last_keepalive_at`) are for people; every decision uses the
monotonic readings beside them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from drivers.gb28181.sip_transport import Peer

MAX_CLOCK_EPOCHS = 32
# A measured offset smaller than this is not worth setting the clock for (DeviceTime has whole seconds).
CLOCK_SYNC_MIN_OFFSET_S = 2.0
# How far a new measurement may differ from the open stretch's offset and still be the same clock (drift,
# DeviceTime's whole second; the measurement's own error, its round trip, is added): beyond, the device's
# clock stepped by itself (an RTC reset at a reboot, its menu, its own NTP) and the stretch is closed.
CLOCK_STEP_TOLERANCE_S = 5.0
# A crystal's drift (~23 ppm) allowed on top, per day since the last measurement that matched (the stretch's
# `matched_at_s`, kept across restarts: a week's ordinary drift after a restart is not a step).
CLOCK_DRIFT_S_PER_DAY = 2.0
# A measured offset beyond this is no clock to ask or stamp in (a DeviceTime of 9999-12-31 or year 1: a
# corrupt RTC, a hostile device): taken as unmeasurable (review 20), its recordings asked in station time.
MAX_CLOCK_OFFSET_S = 50 * 365.25 * 86400
# A device that ignored the Date of a REGISTER 200 (many do) is set again only this long after (monotonic
# seconds): each setting is a ledger entry, a measurement, a history write.
CLOCK_DATE_RETRY_S = 86400.0
# How well an epoch's boundaries are known (DeviceTime's whole second, the round trip, the Date's
# milliseconds a device may drop): a stamp this close to a boundary may be either side of it.
CLOCK_EPOCH_MARGIN_S = 2.0
# How far past its measured now the current clock may already have stamped (a recording listed as ending
# a little ahead, the clock's drift since it was measured): the scheduler allows a minute too.
CLOCK_REACH_MARGIN_S = 60.0


@dataclass(frozen=True)
class ClockEpoch:
    """A stretch of the device clock between two settings by the station (or steps of its own): its offset
    (device minus station, seconds; None: not measured), the device-clock time (Unix seconds read from the
    device's local time) at which it began (the station's time at the setting that began it; None: for the
    first, before anything known, the device's clock as the station first found it; for a later one, a
    step whose window could not be bounded, see the module docstring) and, once it ended, the one at which
    it ended (the station's time then plus this offset); and the station's Unix time of the last trusted
    measurement that matched its offset (None: not measured since it began, or read from a history that
    did not keep it), from which the drift allowed and a step's window are counted."""

    offset_s: float | None
    ended_at_device_s: float | None = None
    started_at_device_s: float | None = None
    matched_at_s: float | None = None


@dataclass(frozen=True)
class ClockStep:
    """The device's clock stepped by itself: its offset before and after (seconds), and the window, in
    station Unix seconds, in which it stepped: from the last measurement that matched (else the setting
    that began the stretch; None: neither is on record, `window_unknown`: a restored stretch without start
    or match, whose stamps both clocks may have made get no offset, `STEP_WINDOW_UNKNOWN`) to this one."""

    offset_from_s: float
    offset_to_s: float
    after_s: float | None
    before_s: float
    window_unknown: bool = False


@dataclass(frozen=True)
class DateIgnored:
    """The measurement after a setting shows the device's clock did not move (the same offset as before,
    within the tolerance): it ignores the REGISTER 200's Date. The setting's split is undone (the stretch
    continues) and the clock is not set again before `CLOCK_DATE_RETRY_S`."""

    offset_before_s: float
    offset_after_s: float


class ClockUnknown(StrEnum):
    """Why a recording's time is given no clock offset."""

    NOT_MEASURED = "not-measured"  # the clock that stamped it was never measured (against a trusted clock)
    AMBIGUOUS = "ambiguous"  # two clocks of the device stamped such times (a clock set back)
    BETWEEN_CLOCKS = "between-clocks"  # no known clock stamped such times (a clock set forward skips them)
    BEFORE_HISTORY = "before-history"  # before the history kept (bounded, or lost)
    ZONE_CHANGED = "zone-changed"  # the saved history was measured in another devices' zone: not applied
    # the device's clock stepped at a time not known (a restored stretch with neither start nor match):
    # a stamp the new clock or the old may have made
    STEP_WINDOW_UNKNOWN = "step-window-unknown"


@dataclass(frozen=True)
class ClockReading:
    """The offset of the device clock that stamped a time, or why it is not known."""

    offset_s: float | None
    unknown: ClockUnknown | None = None


class Transition(StrEnum):
    """A change of a device's online state, with why."""

    ONLINE = "online"
    OFFLINE_KEEPALIVE = "keepalive missed"
    OFFLINE_EXPIRED = "registration expired"
    OFFLINE_UNREGISTERED = "unregistered"


def wall_text(ts: float | None = None) -> str:
    moment = datetime.now(UTC) if ts is None else datetime.fromtimestamp(ts, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class ChannelView:
    """A channel as the device's Catalog described it (text as sent, shown escaped by the views)."""

    channel_id: str
    name: str = ""
    status: str = ""
    manufacturer: str = ""
    model: str = ""


@dataclass
class SessionView:
    """A media session in progress, for the operator view."""

    call_id: str
    channel_id: str
    kind: str  # Play, Playback, Download
    transport: str
    ssrc_offered: int
    ssrc_answered: int | None = None
    started_at: str = field(default_factory=wall_text)
    state: str = "inviting"


@dataclass
class DeviceState:
    """One device. `address` is where requests go: the source of its last authenticated REGISTER."""

    device_id: str
    address: Peer | None = None
    contact: str = ""
    user_agent: str = ""
    registered: bool = False
    online: bool = False
    registered_at: str | None = None
    expires_s: int = 0
    registration_deadline: float = 0.0  # monotonic
    last_keepalive_at: str | None = None
    last_seen: float = 0.0  # monotonic: the last REGISTER or keepalive
    channels: dict[str, ChannelView] = field(default_factory=dict)
    device_info: dict[str, str] = field(default_factory=dict)
    clock_offset_s: float | None = None
    clock_measured_at: str | None = None
    clock_sync_due: bool = False  # measured (or unmeasurable) since last set, and off: the next 200 sets it
    clock_set_at: str | None = None
    # The last time (wall text; monotonic beside it) the device was found to have ignored a Date it was sent.
    clock_ignores_date_at: str | None = None
    clock_ignores_date_mono: float | None = None
    clock_epochs: list[ClockEpoch] = field(default_factory=list)  # oldest first; the last one is current
    # The last measurement made while the station's own clock was untrusted: not the device's offset (it
    # measured the station's error too); a trusted one is wanted before the clock may be set.
    clock_untrusted_offset_s: float | None = None
    clock_untrusted_measured_at: str | None = None
    clock_remeasure: bool = False
    # The station's time before which the device's clock history is not known (its saved history was lost
    # or damaged): stamps of the clock before then get no offset. None: known from the start.
    clock_history_from_s: float | None = None
    clock_history_lost_why: ClockUnknown = ClockUnknown.BEFORE_HISTORY
    sessions: dict[str, SessionView] = field(default_factory=dict)
    charset: str = ""
    # keepalives from another port of its host since it registered (not followed: see the module docstring)
    keepalives_other_port: int = 0
    keepalive_other_port_from: str | None = None
    keepalive_other_port_at: str | None = None

    def view(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "address": None if self.address is None else str(self.address),
            "online": self.online,
            "registered": self.registered,
            "registered_at": self.registered_at,
            "expires_s": self.expires_s,
            "last_keepalive_at": self.last_keepalive_at,
            "user_agent": self.user_agent,
            "device_info": dict(self.device_info),
            "clock_offset_s": self.clock_offset_s,
            "clock_measured_at": self.clock_measured_at,
            "clock_set_at": self.clock_set_at,
            "clock_ignores_date": None if self.clock_ignores_date_at is None else {
                "at": self.clock_ignores_date_at, "set_again_after_s": CLOCK_DATE_RETRY_S},
            "clock_measured_untrusted": None if not self.clock_remeasure else {
                "offset_s": self.clock_untrusted_offset_s, "at": self.clock_untrusted_measured_at},
            "keepalive_other_port": None if not self.keepalives_other_port else {
                "count": self.keepalives_other_port, "last_from": self.keepalive_other_port_from,
                "last_at": self.keepalive_other_port_at},
            "channels": [
                {"channel_id": c.channel_id, "name": c.name, "status": c.status,
                 "manufacturer": c.manufacturer, "model": c.model}
                for c in sorted(self.channels.values(), key=lambda c: c.channel_id)
            ],
            "sessions": [
                {"call_id": s.call_id, "channel_id": s.channel_id, "kind": s.kind, "transport": s.transport,
                 "ssrc_offered": s.ssrc_offered, "ssrc_answered": s.ssrc_answered,
                 "started_at": s.started_at, "state": s.state}
                for s in self.sessions.values()
            ],
        }


class DeviceRegistry:
    """Every device that registered (or is configured), keyed by its 20-digit id."""

    def __init__(self, *, keepalive_interval_s: float, keepalive_timeout_count: int,
                 clock: Callable[[], float], configured: dict[str, str] | None = None) -> None:
        self._silence_limit_s = keepalive_interval_s * keepalive_timeout_count
        self._clock = clock
        self._devices: dict[str, DeviceState] = {}
        self._names = dict(configured or {})
        for device_id in self._names:
            self._devices[device_id] = DeviceState(device_id)

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._devices

    def __len__(self) -> int:
        return len(self._devices)

    def get(self, device_id: str) -> DeviceState | None:
        return self._devices.get(device_id)

    def devices(self) -> list[DeviceState]:
        return [self._devices[k] for k in sorted(self._devices)]

    def registered(self, device_id: str, address: Peer, *, expires_s: int, contact: str,
                   user_agent: str) -> Transition | None:
        """A REGISTER was accepted: remember where the device is; ONLINE if it was not."""
        device = self._devices.setdefault(device_id, DeviceState(device_id))
        now = self._clock()
        device.address = address
        device.contact = contact
        device.user_agent = user_agent
        device.registered = True
        device.registered_at = wall_text()
        device.expires_s = expires_s
        device.registration_deadline = now + expires_s
        device.last_seen = now
        device.keepalives_other_port = 0  # counted anew from where it registered now
        device.keepalive_other_port_from = device.keepalive_other_port_at = None
        return self._online(device)

    def unregistered(self, device_id: str) -> Transition | None:
        device = self._devices.get(device_id)
        if device is None:
            return None
        device.registered = False
        device.registration_deadline = 0.0
        return self._offline(device, Transition.OFFLINE_UNREGISTERED)

    def keepalive(self, device_id: str, address: Peer) -> Transition | None:
        """A keepalive from a registered device, from its host (the caller checked that). It keeps the
        device online; from another port than the registration's it is counted, and the address stays."""
        device = self._devices[device_id]
        if address != device.address:
            device.keepalives_other_port += 1
            device.keepalive_other_port_from = str(address)
            device.keepalive_other_port_at = wall_text()
        device.last_seen = self._clock()
        device.last_keepalive_at = wall_text()
        return self._online(device)

    def clock_measured(self, device_id: str, offset_s: float | None, measured_at: str, *,
                       station_now_s: float | None = None,
                       error_s: float = 0.0) -> ClockStep | DateIgnored | None:
        """A DeviceStatus answer: the device clock's offset (None: the answer had no DeviceTime, so the
        offset before a setting cannot be known whatever the station does; it may be set), measured at
        station Unix time `station_now_s` (default now) within `error_s`. Returns the step when the offset
        differs from the open stretch's by more than `CLOCK_STEP_TOLERANCE_S` + `error_s`: the stretch is
        closed and a new one begins (see the module docstring), never overwritten. Returns `DateIgnored`
        when it is the first measurement after a setting and the clock did not move: the setting's split
        is undone."""
        device = self._devices.get(device_id)
        if device is None:
            return None
        device.clock_remeasure = False
        device.clock_untrusted_offset_s = device.clock_untrusted_measured_at = None
        step: ClockStep | DateIgnored | None = None
        if offset_s is not None:
            now_s = datetime.now(UTC).timestamp() if station_now_s is None else station_now_s
            device.clock_offset_s = offset_s
            device.clock_measured_at = measured_at
            current = device.clock_epochs[-1] if device.clock_epochs else None
            tolerance_s = CLOCK_STEP_TOLERANCE_S + max(error_s, 0.0)
            before = device.clock_epochs[-2] if len(device.clock_epochs) > 1 else None
            if current is not None and current.offset_s is None and current.ended_at_device_s is None \
                    and current.started_at_device_s is not None and before is not None \
                    and before.offset_s is not None and abs(before.offset_s) > tolerance_s \
                    and abs(offset_s - before.offset_s) <= tolerance_s:
                # The first measurement after a setting, and the clock did not move: the Date was ignored.
                step = DateIgnored(before.offset_s, offset_s)
                device.clock_epochs[-2:] = [replace(before, offset_s=offset_s, ended_at_device_s=None,
                                                    matched_at_s=now_s)]
                device.clock_ignores_date_at = wall_text(now_s)
                device.clock_ignores_date_mono = self._clock()
            elif current is None or current.ended_at_device_s is not None:
                device.clock_epochs.append(ClockEpoch(offset_s, matched_at_s=now_s))
            elif current.offset_s is not None and abs(offset_s - current.offset_s) > tolerance_s + (
                    0.0 if current.matched_at_s is None
                    else CLOCK_DRIFT_S_PER_DAY * max(now_s - current.matched_at_s, 0.0) / 86400):
                step = self._stepped(device, current, offset_s, now_s)
            else:
                device.clock_epochs[-1] = replace(current, offset_s=offset_s, matched_at_s=now_s)
            del device.clock_epochs[:-MAX_CLOCK_EPOCHS]
        device.clock_sync_due = offset_s is None or abs(offset_s) >= CLOCK_SYNC_MIN_OFFSET_S
        return step

    @staticmethod
    def _stepped(device: DeviceState, current: ClockEpoch, offset_s: float, now_s: float) -> ClockStep:
        """The open stretch `current` is closed at `now_s` (its clock stepped to `offset_s`) and a new one
        begins where the step's window begins: the last measurement that matched it (kept across restarts),
        else its start (the setting that began it); neither (a restored stretch as first found, never
        matched on record): the window is unbounded and the new stretch has no start (STEP_WINDOW_UNKNOWN)."""
        assert current.offset_s is not None
        after_s = current.matched_at_s
        if after_s is None and current.started_at_device_s is not None:
            after_s = current.started_at_device_s - current.offset_s
        step = ClockStep(current.offset_s, offset_s, after_s, now_s, window_unknown=after_s is None)
        device.clock_epochs[-1] = replace(current, ended_at_device_s=now_s + current.offset_s)
        began_s = None if after_s is None else after_s + offset_s
        device.clock_epochs.append(ClockEpoch(offset_s, started_at_device_s=began_s, matched_at_s=now_s))
        return step

    def clock_date_backoff(self, device_id: str) -> bool:
        """Whether the device ignored a Date less than `CLOCK_DATE_RETRY_S` ago (not set again before)."""
        device = self._devices.get(device_id)
        return device is not None and device.clock_ignores_date_mono is not None \
            and self._clock() - device.clock_ignores_date_mono < CLOCK_DATE_RETRY_S

    def clock_measured_untrusted(self, device_id: str, offset_s: float | None, measured_at: str) -> None:
        """A DeviceStatus answered while the station's own clock was untrusted: the offset measured includes
        the station's error, so it is kept apart (for the operator view), changes neither the device's
        offset nor its epochs nor whether it is due to be set, and a trusted measurement is wanted."""
        device = self._devices.get(device_id)
        if device is None:
            return
        device.clock_untrusted_offset_s = offset_s
        device.clock_untrusted_measured_at = measured_at
        device.clock_remeasure = True

    def clock_history_restored(self, device_id: str, epochs: list[ClockEpoch],
                               history_from_s: float | None) -> None:
        """The history a previous run saved (edge.gb28181.clock_history), taken before anything is measured
        in this run: its open epoch is the clock the device still has, until measured again."""
        device = self._devices.get(device_id)
        if device is None or device.clock_epochs:
            return
        device.clock_epochs = list(epochs[-MAX_CLOCK_EPOCHS:])
        device.clock_history_from_s = history_from_s

    def clock_history_lost(self, device_id: str, station_now_s: float,
                           why: ClockUnknown = ClockUnknown.BEFORE_HISTORY) -> None:
        """The saved history could not be read (or was of another zone, `why`): nothing stamped before now
        is known (whatever this run measures is the clock of now, which a previous run may have set)."""
        device = self._devices.get(device_id)
        if device is not None:
            device.clock_history_from_s = station_now_s
            device.clock_history_lost_why = why

    def clock_set(self, device_id: str, station_now_s: float) -> ClockEpoch | None:
        """The station put its time in a REGISTER 200 (at Unix `station_now_s`): the current epoch ends
        where the device's clock stood then. Returns the epoch that ended (its offset: the one before)."""
        device = self._devices.get(device_id)
        if device is None:
            return None
        device.clock_sync_due = False
        device.clock_set_at = wall_text(station_now_s)
        # The last epoch is the open one (every change leaves one open at the end).
        before = device.clock_epochs.pop() if device.clock_epochs else ClockEpoch(None)
        ended = replace(before, ended_at_device_s=station_now_s + (before.offset_s or 0.0))
        device.clock_epochs += [ended, ClockEpoch(None, started_at_device_s=station_now_s)]
        del device.clock_epochs[:-MAX_CLOCK_EPOCHS]
        return ended

    def clock_offset_at(self, device_id: str, stamped_s: float, now_s: float | None = None) -> float | None:
        """`clock_reading_at(...).offset_s`."""
        return self.clock_reading_at(device_id, stamped_s, now_s).offset_s

    def clock_reading_at(self, device_id: str, stamped_s: float, now_s: float | None = None) -> ClockReading:
        """The offset of the device clock that stamped `stamped_s` (a device-local time as Unix seconds in
        the devices' zone), or why it is not known (see the module docstring). `now_s`: the station's
        time now (Unix seconds; default the wall clock): how far the current clock has stamped."""
        device = self._devices.get(device_id)
        if device is None or not device.clock_epochs:
            return ClockReading(None, ClockUnknown.NOT_MEASURED)
        epochs = device.clock_epochs
        margin = CLOCK_EPOCH_MARGIN_S
        first = epochs[0].started_at_device_s
        known_from: float | None = None
        if device.clock_history_from_s is not None:  # lost: known only from then (in the clock of then)
            known_from = device.clock_history_from_s + (epochs[0].offset_s or 0.0)
            first = known_from if first is None else max(first, known_from)
        if first is not None and stamped_s < first - margin:
            lost = known_from is not None and first == known_from
            return ClockReading(None, device.clock_history_lost_why if lost else ClockUnknown.BEFORE_HISTORY)

        def began(epoch: ClockEpoch) -> bool:
            return epoch.started_at_device_s is None or stamped_s >= epoch.started_at_device_s - margin

        holders = [e for e in epochs[:-1] if began(e) and e.ended_at_device_s is not None
                   and stamped_s < e.ended_at_device_s + margin]
        current = epochs[-1]
        if began(current):
            # The current clock has stamped times up to its now only: a stamp beyond is an older clock's.
            now = datetime.now(UTC).timestamp() if now_s is None else now_s
            reached = now + (current.offset_s or 0.0) + CLOCK_REACH_MARGIN_S
            if not holders or stamped_s <= reached:
                holders.append(current)
        if not holders:
            return ClockReading(None, ClockUnknown.BETWEEN_CLOCKS)
        offsets = [h.offset_s for h in holders]
        if len(holders) > 1:
            known = [o for o in offsets if o is not None]
            if len(known) < len(offsets) or max(known) - min(known) > margin:
                # A later stretch without a start began at a step of unknown time: that is why.
                unbounded = any(h.started_at_device_s is None for h in holders if h is not epochs[0])
                return ClockReading(None, ClockUnknown.STEP_WINDOW_UNKNOWN if unbounded
                                    else ClockUnknown.AMBIGUOUS)
        if offsets[-1] is None:
            return ClockReading(None, ClockUnknown.NOT_MEASURED)
        return ClockReading(offsets[-1])

    def _online(self, device: DeviceState) -> Transition | None:
        if device.online:
            return None
        device.online = True
        return Transition.ONLINE

    def _offline(self, device: DeviceState, why: Transition) -> Transition | None:
        if not device.online:
            return None
        device.online = False
        return why

    def check(self) -> list[tuple[str, Transition]]:
        """Devices that went offline since the last check: registration expired, or silent too long."""
        now = self._clock()
        changes: list[tuple[str, Transition]] = []
        for device in self._devices.values():
            if device.registered and now >= device.registration_deadline:
                device.registered = False
                change = self._offline(device, Transition.OFFLINE_EXPIRED)
            elif device.online and now - device.last_seen >= self._silence_limit_s:
                change = self._offline(device, Transition.OFFLINE_KEEPALIVE)
            else:
                change = None
            if change is not None:
                changes.append((device.device_id, change))
        return changes

    def snapshot(self) -> list[dict[str, Any]]:
        views = []
        for device in self.devices():
            view = device.view()
            view["name"] = self._names.get(device.device_id, "")
            views.append(view)
        return views
