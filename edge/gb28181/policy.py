"""The download policy of [gb28181.download] and [gb28181.devices] as plain decisions: which devices and
channels are downloaded, when, how the media comes, and which time range RecordInfo asks for. Pure: the
caller passes the time. The ingest source (edge.sources.gb28181) asks it; the platform only signals.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any


def _minutes(text: str) -> int:
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


@dataclass(frozen=True)
class DevicePolicy:
    download: bool = True
    channels: tuple[str, ...] = ()  # empty: every channel of the Catalog
    media_transport: str | None = None


@dataclass(frozen=True)
class DownloadPolicy:
    enabled: bool
    when: str  # on-registration | schedule
    window: tuple[int, int] | None  # minutes after local midnight, start and end (may wrap midnight)
    lookback_days: int
    speed: int
    media_transport: str
    utc_offset_minutes: int
    devices: Mapping[str, DevicePolicy] = field(default_factory=dict)
    allow_unknown_devices: bool = False

    @classmethod
    def from_config(cls, section: Any) -> DownloadPolicy:
        """From a validated `Gb28181Section`."""
        download = section.download
        window = None
        if download.window:
            start, end = download.window.split("-")
            window = (_minutes(start), _minutes(end))
        devices = {
            device_id: DevicePolicy(
                entry.download, tuple(entry.channels),
                None if entry.media_transport is None else str(entry.media_transport.value),
            )
            for device_id, entry in section.devices.items()
        }
        return cls(enabled=download.enabled, when=download.when, window=window,
                   lookback_days=download.lookback_days, speed=download.speed,
                   media_transport=str(download.media_transport.value),
                   utc_offset_minutes=section.device_utc_offset_minutes, devices=devices,
                   allow_unknown_devices=section.allow_unknown_devices)

    def wants_device(self, device_id: str) -> bool:
        if not self.enabled:
            return False
        entry = self.devices.get(device_id)
        if entry is None:
            return self.allow_unknown_devices  # unknown devices that were let in: everything they hold
        return entry.download

    def channels_for(self, device_id: str, catalog: Iterable[str]) -> list[str]:
        """The channels to download from, among those the device's Catalog listed (a configured channel the
        Catalog does not list is not asked for: the device would refuse it)."""
        listed = list(dict.fromkeys(catalog))
        entry = self.devices.get(device_id)
        if entry is None or not entry.channels:
            return listed
        return [c for c in listed if c in entry.channels]

    def transport_for(self, device_id: str) -> str:
        entry = self.devices.get(device_id)
        return entry.media_transport if entry is not None and entry.media_transport else self.media_transport

    def may_download_now(self, now_utc: datetime) -> bool:
        """Whether downloads may run at `now_utc`: always with on-registration, inside the window (in the
        devices' local time) with schedule."""
        if not self.enabled:
            return False
        if self.when != "schedule" or self.window is None:
            return True
        local = now_utc.astimezone(UTC) + timedelta(minutes=self.utc_offset_minutes)
        minute = local.hour * 60 + local.minute
        start, end = self.window
        if start <= end:
            return start <= minute < end
        return minute >= start or minute < end  # the window wraps midnight

    def query_range(self, now_utc: datetime) -> tuple[datetime, datetime]:
        """The RecordInfo range by the station's clock: lookback_days back from now. The scheduler asks the
        device over this range in the device's own time (`device_ranges`)."""
        return now_utc - timedelta(days=self.lookback_days), now_utc


# RecordInfo ranges are kept a day inside the calendar's ends: the platform still adds the devices' zone.
_EARLIEST = datetime.min.replace(tzinfo=UTC) + timedelta(days=1)
_LATEST = datetime.max.replace(tzinfo=UTC) - timedelta(days=1)


def _shifted(moment: datetime, seconds: float) -> datetime | None:
    """`moment` + `seconds`, or None past the calendar's ends (an absurd offset: review 20)."""
    try:
        shifted = moment + timedelta(seconds=seconds)
    except (OverflowError, ValueError):
        return None
    return shifted if _EARLIEST <= shifted <= _LATEST else None


def device_ranges(start: datetime, end: datetime, current_offset_s: float | None,
                  earlier: Iterable[tuple[float | None, float]] = ()) -> list[tuple[datetime, datetime]]:
    """The station's range [`start`, `end`] (aware) as the device's clock stamped it, for RecordInfo.

    A device stamps recordings by its own clock, so its RecordInfo must be asked in its time: the range
    shifted by the device's clock offset (device minus station, seconds; a recorder a year behind after an
    RTC reset stamps an hour-old recording a year ago). `current_offset_s` is the offset measured now
    (None: unknown, the station's range as it is). `earlier` are the stretches of its clock before the
    current one (the station set it, or it stepped by itself), oldest first: (their offset, the station's
    Unix time the stretch ended); what was recorded in one of them, within the range, is stamped with that
    stretch's offset, so its part of the range is asked shifted by it too. A shift past the calendar's
    ends (an absurd offset) is not asked: the station's range is asked instead. Pure; ranges ordered as
    found, duplicates removed."""
    ranges: list[tuple[datetime, datetime]] = []
    lo_dt, hi_dt = _shifted(start, current_offset_s or 0.0), _shifted(end, current_offset_s or 0.0)
    ranges.append((start, end) if lo_dt is None or hi_dt is None else (lo_dt, hi_dt))
    began = start.timestamp()
    for offset_s, ended_s in earlier:
        lo, hi = max(began, start.timestamp()), min(ended_s, end.timestamp())
        began = max(began, ended_s)
        if lo >= hi:
            continue
        lo_dt = _shifted(datetime.fromtimestamp(lo, UTC), offset_s or 0.0)
        hi_dt = _shifted(datetime.fromtimestamp(hi, UTC), offset_s or 0.0)
        ranges.append((start, end) if lo_dt is None or hi_dt is None else (lo_dt, hi_dt))
    return list(dict.fromkeys(ranges))
