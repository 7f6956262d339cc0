"""The uplink's policy settings change on a configuration reload (SIGHUP), its connection settings do
not: edge.config.reload.compare_configs decides, UplinkService.reconfigure applies."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from edge.config.reload import compare_configs
from edge.config.station import StationConfig
from edge.uplink.service import UplinkService
from simulators.recorder.media import make_jpg, make_mp4
from tests.uplink.test_refusals import make_rig, uplink_running


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("uplink-reload-media")
    make_mp4(root / "clip.mp4", size_bytes=400_000, seed=41)
    make_jpg(root / "scene.jpg", seed=42)
    return root


def closed_window() -> str:
    """An upload window that does not contain the present moment (local time, like the windows)."""
    start = datetime.now().astimezone() + timedelta(hours=2)
    return f"{start:%H}:00-{(start + timedelta(hours=1)):%H}:00"


def changed(config: StationConfig, section: str, **values: Any) -> StationConfig:
    return config.model_copy(update={section: getattr(config, section).model_copy(update=values)})


async def test_upload_windows_change_on_reload_and_the_waiting_items_go(tmp_path: Path, media: Path) -> None:
    async with make_rig(tmp_path, media) as rig:
        closed = rig.config(windows=[closed_window()])
        service = UplinkService(closed, rig.store)
        async with uplink_running(service):
            # Control: outside its window the uplink waits (its own decision, asked directly).
            assert service._pause_s() is not None
            reloaded = rig.config(windows=[], concurrency=1, backoff_max_s=0.2)
            assert compare_configs(closed, reloaded).changed == ("uplink",)
            service.reconfigure(reloaded)
            assert service._pause_s() is None and service.uplink.concurrency == 1
            assert await service.wait_drained(60), rig.states()
        assert rig.states() == {"clip.mp4": "receipted", "scene.jpg": "receipted"}


def test_connection_settings_of_the_uplink_need_a_restart(tmp_path: Path) -> None:
    base = StationConfig.model_validate({
        "station": {"id": "S-1", "store_dir": str(tmp_path / "store")},
        "usb": {"mount_root": str(tmp_path / "media")},
        "uplink": {"central_url": "http://127.0.0.1:9", "insecure_plain_http": True,
                   "central_signing_key": str(tmp_path / "central.pub")},
    })
    policy = changed(base, "uplink", windows=["22:00-06:00"], breaker_failures=9, retention_days=7.0)
    assert compare_configs(base, policy).changed == ("uplink",) and compare_configs(base, policy).fixed == ()
    moved = changed(policy, "uplink", central_url="http://127.0.0.1:10", chunk_mb=4)
    decision = compare_configs(base, moved)
    assert decision.fixed == ("uplink.central_url", "uplink.chunk_mb") and decision.changed == ()
    both = changed(changed(base, "recorders", allow_unknown=True), "usb", poll_interval_s=2.0)
    assert compare_configs(base, both) == type(decision)(("recorders",), ("usb",))
