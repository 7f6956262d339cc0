"""The platform's registrar and keepalive tracking over real sockets: sipp (a peer that is not ours)
registering with digest, keeping alive and unregistering; the test device for the rest (wrong password,
unknown device, expiry, offline after missed keepalives on the clock seam, keepalives from another port,
Date only after the device's clock was measured and while the station clock is trusted)."""

from __future__ import annotations

import asyncio
import io
import re
import shutil
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from drivers.gb28181.sip_transport import Transport
from edge.gb28181.cli import print_devices
from edge.gb28181.platform import GbPlatform

from ..prerequisites import requires
from .platform_peer import FakeClock, Ledger, TestDevice, platform_settings
from .test_sip_sipp import DEVICE_ID as SIPP_DEVICE_ID
from .test_sip_sipp import PASSWORD as SIPP_PASSWORD
from .test_sip_sipp import run_sipp, scenario

DEVICE = "34020000001320000001"
OTHER = "34020000001320000002"
STRANGER = "34020000001320000099"
PASSWORD = "12345678"

needs_sipp = requires(shutil.which("sipp") is not None, "needs sipp (Debian package sip-tester)")


class Harness:
    def __init__(self, platform: GbPlatform, ledger: Ledger, clock: FakeClock) -> None:
        self.platform = platform
        self.ledger = ledger
        self.clock = clock
        self.devices: list[TestDevice] = []

    async def device(self, device_id: str = DEVICE, password: str = PASSWORD, **kw: Any) -> TestDevice:
        device = await TestDevice(device_id, password, self.platform.transport.port, **kw).start()
        self.devices.append(device)
        return device

    def types(self) -> list[str]:
        return [kind for kind, _ in self.ledger.entries]


@pytest.fixture
def trusted() -> dict[str, bool]:
    return {"value": True}


@pytest.fixture
async def harness(trusted: dict[str, bool]) -> AsyncIterator[Harness]:
    ledger, clock = Ledger(), FakeClock()
    platform = GbPlatform(
        platform_settings({DEVICE: PASSWORD, OTHER: "other-pass", SIPP_DEVICE_ID: SIPP_PASSWORD},
                          keepalive_interval_s=60, keepalive_timeout_count=3),
        record=ledger, clock_trusted=lambda: trusted["value"], clock=clock,
    )
    await platform.start()
    h = Harness(platform, ledger, clock)
    try:
        yield h
    finally:
        for device in h.devices:
            await device.close()
        await platform.close()


@needs_sipp
@pytest.mark.parametrize("transport_mode", ["u1", "t1"])
async def test_sipp_registers_keeps_alive_and_unregisters_with_the_platform(
    harness: Harness, tmp_path: Path, transport_mode: str
) -> None:
    code, log = await run_sipp(tmp_path, harness.platform.transport.port, transport_mode, SIPP_PASSWORD,
                               scenario(password_right=True))
    assert code == 0, log
    assert harness.types() == ["device_authenticated", "device_connected", "device_removed"]
    authenticated = harness.ledger.of("device_authenticated")[0]
    assert authenticated["device_id"] == SIPP_DEVICE_ID and authenticated["source"] == "gb28181"
    expected_prefix = "udp:127.0.0.1:" if transport_mode == "u1" else "tcp:127.0.0.1:"
    assert authenticated["address"].startswith(expected_prefix)
    assert harness.ledger.of("device_removed")[0]["reason"] == "unregistered"
    assert harness.platform.counters["keepalives"] == 1
    device = harness.platform.registry.get(SIPP_DEVICE_ID)
    assert device is not None and not device.online and not device.registered


@needs_sipp
async def test_sipp_with_a_wrong_password_gets_403_and_a_ledger_refusal(
    harness: Harness, tmp_path: Path
) -> None:
    code, log = await run_sipp(tmp_path, harness.platform.transport.port, "u1", "wrong-one",
                               scenario(password_right=False))
    assert code == 0, log
    refused = harness.ledger.of("refused")
    assert len(refused) == 1 and refused[0]["device_id"] == SIPP_DEVICE_ID
    assert "authentication failed" in refused[0]["reason"]
    assert harness.ledger.of("device_authenticated") == []


class RunningClockDevice(TestDevice):
    """A device whose clock runs on from the time it was set (the base TestDevice answers one fixed time, so
    on a loaded machine its measured offset drifts by however long the test took)."""

    _clock_base: datetime | None
    _clock_set_at: float

    @property
    def device_time(self) -> datetime | None:
        if self._clock_base is None:
            return None
        return self._clock_base + timedelta(seconds=time.monotonic() - self._clock_set_at)

    @device_time.setter
    def device_time(self, value: datetime | None) -> None:
        self._clock_base, self._clock_set_at = value, time.monotonic()


async def test_register_gives_contact_expires_and_date_only_after_the_devices_clock_was_measured() -> None:
    """Review 16: the Date of a 200 OK sets the device's clock (9.10.3), so it comes only once the clock's
    offset is on the record: the first registration has none, DeviceStatus measures the clock (asked when
    the device comes online, here with `describe_devices` off), the next registration carries Date, a
    `clock_set` entry keeps the offset before, and DeviceStatus is asked again for the offset after."""
    ledger, trusted = Ledger(), {"value": True}
    platform = GbPlatform(platform_settings({DEVICE: PASSWORD}, time_sync=True), record=ledger,
                          clock_trusted=lambda: trusted["value"], clock=FakeClock())
    await platform.start()
    an_hour_behind = (datetime.now(UTC) + timedelta(hours=8) - timedelta(hours=1)).replace(tzinfo=None)
    device = await RunningClockDevice(DEVICE, PASSWORD, platform.transport.port,
                                      device_time=an_hour_behind).start()

    async def settled() -> None:
        while platform._tasks:
            await asyncio.gather(*list(platform._tasks))
        await device.settled()

    try:
        first = await device.register(expires=3600)
        assert first.status == 200 and first.headers.get("Expires") == "3600"
        assert first.headers.get("Contact") == f"<sip:{DEVICE}@127.0.0.1:{device.sip.port}>"  # type: ignore[union-attr]
        assert first.headers.get("Date") is None  # its clock is not measured yet
        assert "not measured" in ledger.of("device_authenticated")[-1]["date_withheld"]
        await settled()
        assert device.queries == ["DeviceStatus"]
        [before] = ledger.of("clock_measured")
        assert abs(before["offset_s"] + 3600) < 5
        second = await device.register(expires=3600)
        date = second.headers.get("Date") or ""
        device.device_time = datetime.fromisoformat(date)  # the device sets its clock (and it runs on)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}", date)
        [clock_set] = ledger.of("clock_set")
        assert clock_set["offset_before_s"] == before["offset_s"] and clock_set["date"] == date
        assert clock_set["offset_before_ms"] == round(before["offset_s"] * 1000)
        await settled()
        assert device.queries == ["DeviceStatus", "DeviceStatus"]  # the offset after, asked again
        after = ledger.of("clock_measured")[-1]
        assert abs(after["offset_s"]) < 3
        # A recording stamped before the setting has the offset of the clock that stamped it; one after, not.
        stamped_before = an_hour_behind - timedelta(minutes=10)
        assert abs(platform.device_clock_offset_ms(DEVICE, stamped_before) + 3_600_000) < 5000  # type: ignore[operator]
        stamped_after = device.device_time + timedelta(minutes=10)
        assert abs(platform.device_clock_offset_ms(DEVICE, stamped_after.isoformat())) < 3000  # type: ignore[arg-type]
        # A clock now right is left alone ...
        third = await device.register(expires=3600)
        assert third.headers.get("Date") is None
        assert "within" in ledger.of("device_authenticated")[-1]["date_withheld"]
        # ... and an untrusted station clock sets no device clock, whatever was measured.
        platform.registry.get(DEVICE).clock_sync_due = True  # type: ignore[union-attr]
        trusted["value"] = False
        untrusted = await device.register(expires=3600)
        assert untrusted.status == 200 and untrusted.headers.get("Date") is None
        assert ledger.of("device_authenticated")[-1]["date_sent"] is False
        assert "date_withheld" not in ledger.of("device_authenticated")[-1]
        assert len(ledger.of("clock_set")) == 1
    finally:
        await device.close()
        await platform.close()


async def test_expiry_is_bounded(harness: Harness) -> None:
    device = await harness.device()
    too_short = await device.register(expires=600)
    assert too_short.status == 423 and too_short.headers.get("Min-Expires") == "3600"
    too_long = await device.register(expires=10 * 86400)
    assert too_long.status == 200 and too_long.headers.get("Expires") == "3600"  # the default's longest
    assert harness.platform.registry.get(DEVICE).expires_s == 3600  # type: ignore[union-attr]


async def test_a_registrar_may_grant_less_than_the_shortest_a_device_may_ask_for() -> None:
    """RFC 3261 10.3: the registrar may lower Expires; the device registers again within what it was
    granted (register_expires_max_s below register_expires_min_s: a carrier NAT that rebinds often)."""
    clock = FakeClock()
    platform = GbPlatform(platform_settings({DEVICE: PASSWORD}, expires_min_s=3600, expires_max_s=600,
                                            keepalive_interval_s=300),
                          record=Ledger(), clock_trusted=lambda: False, clock=clock)
    await platform.start()
    device = await TestDevice(DEVICE, PASSWORD, platform.transport.port).start()
    try:
        assert (await device.register(expires=1800)).status == 423  # still the standard's shortest ask
        ok = await device.register(expires=3600)
        assert ok.status == 200 and ok.headers.get("Expires") == "600"
        clock.now += 599
        platform.check()
        assert platform.registry.get(DEVICE).online  # type: ignore[union-attr]
        clock.now += 1  # what was granted, not what was asked, runs out
        platform.check()
        assert not platform.registry.get(DEVICE).online  # type: ignore[union-attr]
    finally:
        await device.close()
        await platform.close()


async def test_wrong_password_is_refused_and_the_right_one_accepted(harness: Harness) -> None:
    device = await harness.device()
    refused = await device.register(password="00000000")
    assert refused.status == 403
    assert harness.types() == ["refused"]
    accepted = await device.register()
    assert accepted.status == 200
    assert harness.types() == ["refused", "device_authenticated", "device_connected"]


async def test_repeated_failures_are_rate_limited_in_the_ledger(harness: Harness) -> None:
    device = await harness.device()
    for _ in range(5):
        assert (await device.register(password="00000000")).status == 403
    assert len(harness.ledger.of("refused")) == 1
    harness.clock.now += 61
    assert (await device.register(password="00000000")).status == 403
    refused = harness.ledger.of("refused")
    assert len(refused) == 2 and refused[1]["repeats_not_recorded"] == 4


async def test_unknown_device_is_refused_and_a_configured_one_accepted(harness: Harness) -> None:
    stranger = await harness.device(STRANGER, PASSWORD)
    refused = await stranger.register()
    assert refused.status == 403
    assert harness.ledger.of("refused") == [
        {"source": "gb28181", "device_id": STRANGER, "address": f"udp:127.0.0.1:{stranger.sip.port}",  # type: ignore[union-attr]
         "reason": "device not configured"}
    ]
    assert harness.platform.registry.get(STRANGER) is None
    known = await harness.device()
    assert (await known.register()).status == 200


async def test_unknown_devices_register_when_allowed() -> None:
    ledger = Ledger()
    platform = GbPlatform(platform_settings({}, unknown_password="shared-one"), record=ledger,
                          clock_trusted=lambda: False, clock=FakeClock())
    await platform.start()
    device = await TestDevice(STRANGER, "shared-one", platform.transport.port).start()
    try:
        assert (await device.register()).status == 200
        assert (await device.register(password="not-it")).status == 403
    finally:
        await device.close()
        await platform.close()


async def test_expires_zero_unregisters(harness: Harness) -> None:
    device = await harness.device()
    assert (await device.register()).status == 200
    assert (await device.register(expires=0)).status == 200
    state = harness.platform.registry.get(DEVICE)
    assert state is not None and not state.online and not state.registered
    assert harness.ledger.of("device_removed")[-1]["reason"] == "unregistered"
    # Unregistered, its keepalives are no longer taken: it must register again.
    assert (await device.keepalive()).status == 404


async def test_offline_after_missed_keepalives_and_online_again(harness: Harness) -> None:
    device = await harness.device()
    assert (await device.register()).status == 200
    harness.clock.now += 179
    assert (await device.keepalive()).status == 200
    harness.clock.now += 179  # 60 s x 3 since the keepalive not yet passed
    harness.platform.check()
    assert harness.platform.registry.get(DEVICE).online  # type: ignore[union-attr]
    assert harness.ledger.of("device_removed") == []
    harness.clock.now += 1
    harness.platform.check()
    assert not harness.platform.registry.get(DEVICE).online  # type: ignore[union-attr]
    assert harness.ledger.of("device_removed") == [{"source": "gb28181", "device_id": DEVICE,
                                                    "reason": "keepalive missed"}]
    harness.platform.check()
    assert len(harness.ledger.of("device_removed")) == 1  # one transition, one entry
    assert (await device.keepalive()).status == 200
    assert harness.platform.registry.get(DEVICE).online  # type: ignore[union-attr]
    assert len(harness.ledger.of("device_connected")) == 2


async def test_offline_when_the_registration_expires(harness: Harness) -> None:
    device = await harness.device()
    assert (await device.register(expires=3600)).status == 200
    for _ in range(59):  # keeps alive every minute, but never registers again
        harness.clock.now += 60
        assert (await device.keepalive()).status == 200
    harness.platform.check()
    assert harness.ledger.of("device_removed") == []
    harness.clock.now += 60
    harness.platform.check()
    assert harness.ledger.of("device_removed")[0]["reason"] == "registration expired"
    assert (await device.keepalive()).status == 404


async def test_a_keepalive_from_another_port_keeps_the_device_online_but_does_not_move_it(
        harness: Harness) -> None:
    """Review 16, design finding 12: behind a carrier NAT many subscribers share the device's host, so a
    keepalive from another port of it (a NAT rebinding, or a neighbour) moves nothing; the device's next
    REGISTER from there does."""
    device = await harness.device()
    assert (await device.register()).status == 200
    registered_at = harness.platform.registry.get(DEVICE).address  # type: ignore[union-attr]
    await device.rebind()
    assert registered_at is not None and device.sip.port != registered_at.port  # type: ignore[union-attr]
    harness.clock.now += 150
    assert (await device.keepalive()).status == 200
    state = harness.platform.registry.get(DEVICE)
    assert state is not None and state.address == registered_at  # requests stay where it registered
    assert harness.platform.counters["keepalives_other_port"] == 1
    shown = harness.platform.snapshot()["devices"][0]["keepalive_other_port"]
    assert shown["count"] == 1 and shown["last_from"] == f"udp:127.0.0.1:{device.sip.port}"  # type: ignore[union-attr]
    [entry] = harness.ledger.of("refused")
    assert "another port" in entry["reason"] and entry["registered_at"] == str(registered_at)
    assert (await device.keepalive()).status == 200  # counted again, on the ledger once a minute only
    assert harness.platform.counters["keepalives_other_port"] == 2 and len(harness.ledger.of("refused")) == 1
    shown_text = io.StringIO()
    print_devices(harness.platform.snapshot(), shown_text)  # what `edge gb28181 devices` prints
    assert "keepalive from another port: 2 since it registered" in shown_text.getvalue()
    harness.clock.now += 150  # 300 s after the registration: only the keepalive kept it online
    harness.platform.check()
    assert state.online
    # Control: its REGISTER from the new port moves it, and queries follow.
    assert (await device.register()).status == 200
    assert state.address is not None and state.address.port == device.sip.port  # type: ignore[union-attr]
    assert harness.platform.snapshot()["devices"][0]["keepalive_other_port"] is None
    info = await harness.platform.query_device_info(DEVICE)
    assert info.device_name == "执法记录仪" and device.queries == ["DeviceInfo"]


async def test_over_tcp_the_device_is_reached_on_its_own_connection(harness: Harness) -> None:
    device = await harness.device(transport=Transport.TCP)
    assert (await device.register()).status == 200
    address = harness.platform.registry.get(DEVICE).address  # type: ignore[union-attr]
    assert address is not None and address.transport is Transport.TCP
    assert harness.platform.transport.open_connections == 1
    info = await harness.platform.query_device_info(DEVICE)
    assert info.result == "OK"
    assert harness.platform.transport.open_connections == 1


async def test_a_restarted_service_serves_again_and_remembers_its_devices(harness: Harness) -> None:
    """The supervisor restarts a failed task by calling run() again: a fresh transport on the same port."""
    device = await harness.device()
    assert (await device.register()).status == 200
    port = harness.platform.transport.port
    await harness.platform.close()
    await harness.platform.start()
    assert harness.platform.transport.port == port
    assert (await device.keepalive()).status == 200  # still registered: its keepalive is taken
    assert (await device.register()).status == 200


async def test_a_port_in_use_is_a_clear_error_in_the_ledger() -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ledger = Ledger()
        platform = GbPlatform(platform_settings({DEVICE: PASSWORD}, listen_port=port), record=ledger,
                              clock_trusted=lambda: True, clock=FakeClock())
        with pytest.raises(OSError):
            await platform.run()
    [error] = ledger.of("error")
    assert error["reason"].startswith(f"cannot listen on 127.0.0.1:{port}: ")
    # Control: the same service on a free port runs.
    free = GbPlatform(platform_settings({DEVICE: PASSWORD}), record=Ledger(), clock_trusted=lambda: True,
                      clock=FakeClock())
    await free.start()
    assert free.started.is_set()
    await free.close()
