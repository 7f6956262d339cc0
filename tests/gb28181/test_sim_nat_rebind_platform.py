"""The simulator's nat-rebind fault against the real platform (review 16, design finding 12): after its NAT
rebound, the device's keepalives come from a new port; the platform keeps it online but requests stay where
it registered (counted, shown) until the device registers again from the new port, which it does within the
shorter expiry the platform granted. Real platform, real simulator, real UDP and TCP sockets."""

from __future__ import annotations

import asyncio

import pytest

from edge.gb28181.platform import GbPlatform
from simulators.gb28181.device import SimulatedDevice
from simulators.gb28181.settings import DeviceSettings, SipTransportKind, parse_faults

from .platform_peer import PLATFORM_ID, FakeClock, Ledger, platform_settings

DEVICE = "34020000001320000031"
PASSWORD = "weak-but-secret-31"


async def _run(sip: SipTransportKind, faults: list[str]) -> tuple[GbPlatform, SimulatedDevice, list[int]]:
    """Run until the device's first registration plus 2 refreshes; the ports the registry had, in order."""
    registered_ports: list[int] = []
    refreshed = asyncio.Event()
    platform: GbPlatform

    def changed() -> None:
        state = platform.registry.get(DEVICE)
        if state is not None and state.address is not None and (
                not registered_ports or registered_ports[-1] != state.address.port
                or platform.counters["registered"] > len(registered_ports)):
            registered_ports.append(state.address.port)
        if platform.counters["registered"] >= 3:
            refreshed.set()

    platform = GbPlatform(platform_settings({DEVICE: PASSWORD}, expires_min_s=1, expires_max_s=1),
                          record=Ledger(), clock_trusted=lambda: False, clock=FakeClock(), on_change=changed)
    await platform.start()
    device = SimulatedDevice(DeviceSettings(
        platform_host="127.0.0.1", platform_port=platform.transport.port, platform_id=PLATFORM_ID,
        device_id=DEVICE, password=PASSWORD, keepalive_interval_s=0.05, register_expires_s=3600,
        transport=sip, faults=parse_faults(faults)))
    task = asyncio.ensure_future(device.run())
    try:
        await asyncio.wait_for(refreshed.wait(), 20)
        info = await platform.query_device_info(DEVICE)  # requests reach it where it registered last
        assert info.result == "OK"
    finally:
        await device.close()
        await asyncio.wait_for(task, 10)
        await platform.close()
    return platform, device, registered_ports


@pytest.mark.parametrize("sip", [SipTransportKind.UDP, SipTransportKind.TCP])
async def test_after_a_nat_rebinding_the_device_registers_again_from_its_new_port(
        sip: SipTransportKind) -> None:
    platform, device, ports = await _run(sip, ["nat-rebind"])
    assert len(device.log.sip_ports) == 2  # it did rebind
    assert platform.counters["keepalives_other_port"] >= 1  # keepalives from the new port did not move it
    assert len(set(ports)) == 2, ports  # ... its REGISTER from the new port did
    if sip is SipTransportKind.UDP:
        assert ports[0] == device.log.sip_ports[0] and ports[-1] == device.log.sip_ports[1]


async def test_control_without_a_rebinding_nothing_comes_from_another_port() -> None:
    platform, device, ports = await _run(SipTransportKind.UDP, [])
    assert len(device.log.sip_ports) == 1 and set(ports) == {device.log.sip_ports[0]}
    assert platform.counters["keepalives_other_port"] == 0
