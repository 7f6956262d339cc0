"""The download policy the scheduler tests share: every device wanted, any time, a week back, every listed
channel, over UDP at speed 1, devices in Beijing time (edge.gb28181.policy.DownloadPolicy's shape)."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace
from typing import Any


def open_policy(**overrides: Any) -> Any:
    """A policy that lets everything through; `overrides` replace any of its fields."""
    fields: dict[str, Any] = {
        "wants_device": lambda _d: True, "may_download_now": lambda _n: True,
        "query_range": lambda now: (now - timedelta(days=7), now),
        "channels_for": lambda _d, catalog: list(catalog),
        "devices": {}, "transport_for": lambda _d: "udp", "speed": 1, "utc_offset_minutes": 480,
    }
    return SimpleNamespace(**{**fields, **overrides})
