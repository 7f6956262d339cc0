"""What the scheduler tests share: the download policy (every device wanted, any time, a week back, every
listed channel, over UDP at speed 1, devices in Beijing time: edge.gb28181.policy.DownloadPolicy's shape),
and a platform seam that lists recordings and refuses their downloads."""

from __future__ import annotations

from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

from drivers.gb28181.manscdp import AssembledAnswer, RecordItem
from edge.gb28181.sessions import SessionError


def open_policy(**overrides: Any) -> Any:
    """A policy that lets everything through; `overrides` replace any of its fields."""
    fields: dict[str, Any] = {
        "wants_device": lambda _d: True, "may_download_now": lambda _n: True,
        "query_range": lambda now: (now - timedelta(days=7), now),
        "channels_for": lambda _d, catalog: list(catalog),
        "devices": {}, "transport_for": lambda _d: "udp", "speed": 1, "utc_offset_minutes": 480,
    }
    return SimpleNamespace(**{**fields, **overrides})


def record_item(channel_id: str, start: datetime, end: datetime, file_path: str = "/sd/1.ps") -> RecordItem:
    """One RecordInfo item, times in the device's local time as devices write them."""
    return RecordItem(device_id=channel_id, name="rec", file_path=file_path, address="", start_time=start,
                      end_time=end, secrecy=0, type="time")


class ListingPlatform:
    """The platform as the scheduler sees it: `channels` (device id: its one channel) online with their
    clocks measured right (offset 0); RecordInfo answers with `items(device_id, channel_id)` in one part;
    every Download INVITE is refused with `download_error` (the tests end at the request), each one kept
    in `downloads` as (device, channel, start, end)."""

    download_error = "the test's device does not stream"

    def __init__(self, channels: dict[str, str]) -> None:
        self.channels = channels
        self.registry = {d: SimpleNamespace(online=True, clock_offset_s=0.0) for d in channels}
        self.downloads: list[tuple[str, str, str, str]] = []

    def items(self, device_id: str, channel_id: str) -> tuple[RecordItem, ...]:
        return ()

    def add_online_listener(self, _callback: Any) -> None:
        pass

    async def query_catalog(self, device_id: str) -> list[SimpleNamespace]:
        return [SimpleNamespace(device_id=self.channels[device_id])]

    async def query_record_info(self, device_id: str, channel_id: str, start: datetime,
                                end: datetime) -> AssembledAnswer:
        items = self.items(device_id, channel_id)
        return AssembledAnswer(source=device_id, sn=1, cmd_type="RecordInfo", device_id=channel_id,
                               name="cam", sum_num=len(items), items=items, complete=True, parts=1,
                               duplicates=0)

    async def download(self, device_id: str, channel_id: str, start: str, end: str, *_a: Any,
                       **_kw: Any) -> Any:
        self.downloads.append((device_id, channel_id, start, end))
        raise SessionError(self.download_error)
