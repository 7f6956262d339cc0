"""A central that refuses N times and then accepts: the station's log has one warning when the
failures begin and one line when they end, not one warning per attempt."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from simulators.recorder.media import make_jpg, make_mp4
from tests.uplink.proxy import Fault, nginx_page
from tests.uplink.test_refusals import ITEMS, drain, make_rig

REFUSALS = 8


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("retry-log-media")
    make_mp4(root / "clip.mp4", size_bytes=600_000, seed=31)
    make_jpg(root / "scene.jpg", seed=32)
    return root


async def test_a_central_refusing_n_times_then_accepting_is_one_warning_and_one_recovery_line(
    tmp_path: Path, media: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge")
    async with make_rig(tmp_path, media) as rig:
        fault = Fault("POST", ITEMS, nginx_page(502, "Bad Gateway"), times=REFUSALS)
        rig.proxy.faults.append(fault)
        await drain(rig)
        assert fault.applied == REFUSALS  # every refusal was an attempt of the station's
        assert rig.states() == {"clip.mp4": "receipted", "scene.jpg": "receipted"}
    uplink = [r for r in caplog.records if r.name.startswith("edge.uplink")]
    warnings = [r.getMessage() for r in uplink if r.levelno >= logging.WARNING]
    about_items = [m for m in warnings if "uploads to the central" in m or "retrying in" in m]
    assert len(about_items) == 1, warnings
    assert about_items[0].startswith("uploads to the central failing:") and "502" in about_items[0]
    # The circuit breaker opened (more than once, as its probes failed): said once, not per probe.
    assert sum("circuit breaker open" in m for m in warnings) == 1, warnings
    recovered = [r for r in uplink if "recovered after" in r.getMessage()]
    assert len(recovered) == 1 and recovered[0].levelno == logging.INFO
    assert f"recovered after {REFUSALS} failures" in recovered[0].getMessage()
    assert "502" in recovered[0].getMessage()
