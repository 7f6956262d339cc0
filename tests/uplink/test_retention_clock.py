"""The retention purge survives clock faults: a forward jump of the wall clock (bad NTP, an RTC reset to
the future) purges nothing, an untrusted clock purges nothing, each refusal is on the ledger once, and
purging is rate-limited. The controls: the same receipted store purges when the boot clock says the
retention really elapsed.

The store comes from a real docking whose items the real central receipted; each test then starts the
uplink on a copy of it as the station does (`UplinkService(config, store, clock=..., boot=...)`, the
seam for the wall clock and CLOCK_BOOTTIME) and runs its purge pass, the one the uplink loop runs.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge.config.station import StationConfig
from edge.custody.ledger import EntryType
from edge.ingest.store import StationStore
from edge.uplink.retention import boot_clock
from edge.uplink.service import UplinkService
from edge.verify.station import verify_store
from tests.uplink.test_uplink_station import one_recorder_offloaded, stored_objects

DAY_S = 86400.0


@dataclass
class Receipted:
    """A station store whose three items the central has receipted, and the station's config."""

    store: Path
    config: StationConfig


async def _receipted_store(root: Path) -> Receipted:
    async with one_recorder_offloaded(root, retention_days=30) as (_central, station):
        assert len(station.ledger("receipt")) == 3
        config = station.config
    return Receipted(root / "store", config)


@pytest.fixture(scope="module")
def receipted(tmp_path_factory: pytest.TempPathFactory) -> Receipted:
    return asyncio.run(_receipted_store(tmp_path_factory.mktemp("receipted")))


class Clocks:
    """The wall clock and the boot clock the uplink is given, each movable by the test."""

    def __init__(self) -> None:
        self.wall_shift_s = 0.0
        self.boot_shift_s = 0.0

    def wall(self) -> float:
        return time.time() + self.wall_shift_s

    def boot(self) -> float:
        return boot_clock() + self.boot_shift_s

    def elapse(self, seconds: float) -> None:
        """Time really passes: both clocks move."""
        self.wall_shift_s += seconds
        self.boot_shift_s += seconds


@contextmanager
def uplink_on_copy(
    receipted: Receipted, tmp_path: Path, clocks: Clocks, **settings: Any
) -> Iterator[tuple[UplinkService, StationStore]]:
    root = tmp_path / "store"
    shutil.copytree(receipted.store, root)
    raw = receipted.config.model_dump(mode="json")
    raw["station"]["store_dir"] = str(root)
    for section, values in settings.items():
        raw[section] = {**raw.get(section, {}), **values}
    config = StationConfig.model_validate(raw)
    store = StationStore(root, config.station.id)
    try:
        # A new run, as the agent starts one before its uplink.
        store.record(EntryType.STATION_STARTED, None, {"station": config.station.id})
        yield UplinkService(config, store, clock=clocks.wall, boot=clocks.boot), store
    finally:
        store.close()


def retention_refusals(store: StationStore) -> list[dict[str, Any]]:
    errors = (e.data for e in store.ledger.entries() if e.type == "error")
    return [data for data in errors if data.get("stage") == "retention"]


def purged(store: StationStore) -> int:
    return sum(1 for e in store.ledger.entries() if e.type == "purged")


async def test_a_forward_jump_of_the_wall_clock_purges_nothing_and_is_on_the_ledger_once(
    receipted: Receipted, tmp_path: Path
) -> None:
    clocks = Clocks()
    with uplink_on_copy(receipted, tmp_path, clocks) as (uplink, store):
        assert await uplink.purge_pass() == []  # retention (30 days) not elapsed
        clocks.wall_shift_s = 31 * DAY_S  # bad NTP steps the clock a month ahead; no time passed
        assert await uplink.purge_pass() == []
        assert await uplink.purge_pass() == []
        (refusal,) = retention_refusals(store)
        assert "further than the boot clock" in refusal["reason"]
        assert purged(store) == 0
        assert len(stored_objects(tmp_path / "store")) == 3

        # The control: a month really passes (the boot clock agrees); the clock is plausible again and
        # the copies are purged, with no second refusal.
        clocks.boot_shift_s = 31 * DAY_S
        assert len(await uplink.purge_pass()) == 3
        assert len(retention_refusals(store)) == 1 and purged(store) == 3
    assert verify_store(tmp_path / "store", central_key=uplink.central_key).ok


async def test_a_clock_reset_to_the_future_before_start_purges_nothing(
    receipted: Receipted, tmp_path: Path
) -> None:
    clocks = Clocks()
    clocks.wall_shift_s = 2 * 365 * DAY_S  # the RTC came back two years ahead: the clock is already wrong
    with uplink_on_copy(receipted, tmp_path, clocks) as (uplink, store):
        assert await uplink.purge_pass() == []
        clocks.elapse(3600)
        assert await uplink.purge_pass() == []
        (refusal,) = retention_refusals(store)
        assert "newest ledger entry before this start" in refusal["reason"]
        assert purged(store) == 0


async def test_an_untrusted_station_clock_purges_nothing(receipted: Receipted, tmp_path: Path) -> None:
    clocks = Clocks()
    clocks.elapse(31 * DAY_S)  # the retention really elapsed
    with uplink_on_copy(receipted, tmp_path, clocks, station={"clock": "untrusted"}) as (uplink, store):
        assert await uplink.purge_pass() == []
        assert await uplink.purge_pass() == []
        (refusal,) = retention_refusals(store)
        assert "station clock not trusted" in refusal["reason"]
        assert refusal["station_clock"]["trusted"] is False
        assert purged(store) == 0


async def test_purging_is_rate_limited_on_the_boot_clock(receipted: Receipted, tmp_path: Path) -> None:
    clocks = Clocks()
    with uplink_on_copy(receipted, tmp_path, clocks, uplink={"purge_max_per_hour": 2}) as (uplink, store):
        clocks.elapse(31 * DAY_S)
        assert len(await uplink.purge_pass()) == 2
        assert await uplink.purge_pass() == []  # the hour's budget is spent
        clocks.elapse(1800)  # half an hour: one more
        assert len(await uplink.purge_pass()) == 1
        assert retention_refusals(store) == [] and purged(store) == 3
