"""The platform's MANSCDP queries against a test device over real sockets: Catalog and RecordInfo split over
several GB2312 MESSAGEs, DeviceInfo, DeviceStatus and the device's clock offset, answers matched by
(device, SN, CmdType), 200 to every part."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from drivers.gb28181.manscdp import AssembledAnswer, CatalogItem, Charset, RecordItem, Root, build_body
from edge.gb28181.platform import DeviceUnavailable, GbPlatform
from edge.gb28181.queries import QueryKey

from .platform_peer import FakeClock, Ledger, TestDevice, platform_settings

DEVICE = "34020000001320000001"
OTHER = "34020000001320000002"
CHANNEL = "34020000001310000001"
PASSWORD = "12345678"
BEIJING = timedelta(hours=8)


def records(n: int) -> list[RecordItem]:
    start = datetime(2026, 12, 1, 9, 0, 0)
    return [
        RecordItem(device_id=CHANNEL, name=f"现场记录{i}", file_path=f"/rec/{i:03d}.mp4", address="",
                   start_time=start + timedelta(minutes=10 * i),
                   end_time=start + timedelta(minutes=10 * i + 5),
                   secrecy=0, type="time", file_size_bytes=1000 + i)
        for i in range(n)
    ]


@pytest.fixture
async def platform() -> AsyncIterator[GbPlatform]:
    platform = GbPlatform(platform_settings({DEVICE: PASSWORD, OTHER: PASSWORD}), record=Ledger(),
                          clock_trusted=lambda: True, clock=FakeClock())
    await platform.start()
    try:
        yield platform
    finally:
        await platform.close()


@pytest.fixture
async def device(platform: GbPlatform) -> AsyncIterator[TestDevice]:
    device = await TestDevice(
        DEVICE, PASSWORD, platform.transport.port, records=records(7),
        channels=[CatalogItem(device_id=CHANNEL, name="审讯室一", status="ON"),
                  CatalogItem(device_id="34020000001310000002", name="通道二", status="OFF"),
                  CatalogItem(device_id="34020000001310000003", name="通道三", status="ON")],
        device_time=(datetime.now(UTC) + BEIJING + timedelta(seconds=95)).replace(tzinfo=None, microsecond=0),
        per_message=2, charset=Charset.GB2312,
    ).start()
    assert (await device.register()).status == 200
    try:
        yield device
    finally:
        await device.close()


async def test_record_info_joins_a_multi_part_gb2312_answer(platform: GbPlatform, device: TestDevice) -> None:
    start = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)
    answer = await platform.query_record_info(DEVICE, CHANNEL, start, start + timedelta(days=1))
    assert answer.complete and answer.sum_num == 7 and answer.parts == 4
    assert [item.name for item in answer.items] == [f"现场记录{i}" for i in range(7)]
    await device.settled()
    assert device.answer_statuses == [200, 200, 200, 200]  # each part answered 200 (Annex N: serial sending)
    # The query's time range went out in the devices' zone (Beijing): 00:00 UTC is 08:00 there.
    assert len(platform.queries) == 0
    first = answer.items[0]
    assert isinstance(first, RecordItem)
    assert platform.record_times(first) == (int(datetime(2026, 12, 1, 1, 0, tzinfo=UTC).timestamp()),
                                            int(datetime(2026, 12, 1, 1, 5, tzinfo=UTC).timestamp()))


async def test_record_info_with_no_recordings(platform: GbPlatform, device: TestDevice) -> None:
    start = datetime(2020, 1, 1, tzinfo=UTC)
    answer = await platform.query_record_info(DEVICE, CHANNEL, start, start + timedelta(hours=1))
    assert answer.complete and answer.sum_num == 0 and answer.items == ()


async def test_catalog_fills_the_device_channels(platform: GbPlatform, device: TestDevice) -> None:
    items = await platform.query_catalog(DEVICE)
    assert [i.name for i in items] == ["审讯室一", "通道二", "通道三"]
    view = platform.snapshot()["devices"]
    channels = next(d for d in view if d["device_id"] == DEVICE)["channels"]
    assert [(c["channel_id"], c["name"], c["status"]) for c in channels] == [
        (CHANNEL, "审讯室一", "ON"), ("34020000001310000002", "通道二", "OFF"),
        ("34020000001310000003", "通道三", "ON")]


async def test_device_status_measures_the_device_clock_offset(
    platform: GbPlatform, device: TestDevice
) -> None:
    ledger = platform._record
    assert isinstance(ledger, Ledger)
    status = await platform.query_device_status(DEVICE)
    assert status.online == "ONLINE"
    state = platform.registry.get(DEVICE)
    assert state is not None and state.clock_offset_s is not None
    # The device runs 95 s ahead (whole seconds on the wire, and the round trip, blur it by < 2 s).
    assert 93.0 <= state.clock_offset_s <= 96.0
    measured = ledger.of("clock_measured")
    assert len(measured) == 1 and measured[0]["device_id"] == DEVICE
    assert measured[0]["offset_s"] == state.clock_offset_s


async def test_device_info(platform: GbPlatform, device: TestDevice) -> None:
    info = await platform.query_device_info(DEVICE)
    assert info.device_name == "执法记录仪"
    assert platform.registry.get(DEVICE).device_info["name"] == "执法记录仪"  # type: ignore[union-attr]


async def test_an_answer_is_matched_by_device_sn_and_cmdtype(
    platform: GbPlatform, device: TestDevice
) -> None:
    """An answer with the right SN but from another device, or of another CmdType, does not answer a query."""
    other = await TestDevice(OTHER, PASSWORD, platform.transport.port).start()
    try:
        assert (await other.register()).status == 200
        future = platform.queries.expect(QueryKey(DEVICE, 4242, "DeviceInfo"))
        wrong_device = build_body(Root.RESPONSE, "DeviceInfo", 4242, DEVICE, [("Result", "OK")])
        assert (await other.message(wrong_device)).status == 200  # understood, 200, but not DEVICE's answer
        wrong_type = build_body(Root.RESPONSE, "DeviceStatus", 4242, DEVICE, [("Result", "OK")])
        assert (await device.message(wrong_type)).status == 200
        assert not future.done()
        right = build_body(Root.RESPONSE, "DeviceInfo", 4242, DEVICE, [("Result", "OK")])
        assert (await device.message(right)).status == 200
        assert future.done() and future.result().sn == 4242
    finally:
        platform.queries.forget(QueryKey(DEVICE, 4242, "DeviceInfo"))
        await other.close()


async def test_queries_to_an_offline_device_are_refused_at_once(platform: GbPlatform) -> None:
    with pytest.raises(DeviceUnavailable, match=f"device {DEVICE} is not online"):
        await platform.query_device_info(DEVICE)


async def test_incomplete_answers_are_handed_out_flagged(platform: GbPlatform, device: TestDevice) -> None:
    """A device that stops after some parts (wvp #2232): the parts that came, flagged incomplete."""
    clock = platform._clock
    assert isinstance(clock, FakeClock)
    key = QueryKey(DEVICE, 777, "RecordInfo")
    future = platform.queries.expect(key)
    from drivers.gb28181.manscdp import build_record_info_responses

    parts = build_record_info_responses(777, CHANNEL, "记录仪", records(5), per_message=2)
    assert (await device.message(parts[0])).status == 200
    platform.check()
    assert not future.done()
    clock.now += platform.settings.query_timeout_s
    platform.check()
    answer = future.result()
    assert isinstance(answer, AssembledAnswer)
    assert answer.complete is False and len(answer.items) == 2


async def test_a_device_that_comes_online_is_described(tmp_path: object) -> None:
    """describe_devices: DeviceInfo, Catalog and DeviceStatus, one after the other, fill the operator view;
    the online listeners (the ingest source's cue) hear of the device."""
    ledger = Ledger()
    platform = GbPlatform(platform_settings({DEVICE: PASSWORD}, describe_devices=True), record=ledger,
                          clock_trusted=lambda: True, clock=FakeClock())
    heard: list[str] = []
    platform.add_online_listener(heard.append)
    await platform.start()
    device = await TestDevice(
        DEVICE, PASSWORD, platform.transport.port,
        channels=[CatalogItem(device_id=CHANNEL, name="审讯室一", status="ON")],
        device_time=(datetime.now(UTC) + BEIJING - timedelta(seconds=30)).replace(tzinfo=None, microsecond=0),
    ).start()
    try:
        assert (await device.register()).status == 200
        assert heard == [DEVICE]
        while platform._tasks:  # the description runs beside the registration
            await asyncio.gather(*list(platform._tasks))
        assert device.queries == ["DeviceInfo", "Catalog", "DeviceStatus"]
        [view] = platform.snapshot()["devices"]
        assert view["device_info"]["name"] == "执法记录仪"
        assert [c["channel_id"] for c in view["channels"]] == [CHANNEL]
        assert -32.0 <= view["clock_offset_s"] <= -29.0
        assert ledger.of("clock_measured")[0]["device_id"] == DEVICE
        # Control: a keepalive of a device already online describes nothing again.
        assert (await device.keepalive()).status == 200
        assert not platform._tasks and device.queries == ["DeviceInfo", "Catalog", "DeviceStatus"]
    finally:
        await device.close()
        await platform.close()
