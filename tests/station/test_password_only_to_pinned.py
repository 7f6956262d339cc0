"""The recorder password goes over USB in clear: only to a device whose USB serial the allow-list
pins (unless unknown recorders are allowed). Anything else with the recorders' USB vendor and product
id is refused before login, and the simulated device says what it received."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.serial.dock import BayLed
from edge.sources.usb.offload import OffloadOutcome

from .harness import PASSWORD, simulated_station, spec


@pytest.mark.parametrize("pinned", [False, True], ids=["unpinned-usb-serial", "control-pinned"])
async def test_the_password_is_sent_only_to_a_pinned_usb_serial(tmp_path: Path, pinned: bool) -> None:
    recorder, other = spec(0), spec(1)
    # Unpinned: the allow-list names this recorder's product serial, but pins no USB serial of it (a
    # device posing as it cannot be told from it before logging in).
    allow = [
        {"device_serial": recorder.device_serial, **({"usb_serial": recorder.usb_serial} if pinned else {})},
        {"device_serial": other.device_serial, "usb_serial": other.usb_serial},
    ]
    async with simulated_station(tmp_path, [recorder, other], recorders={"allow": allow}) as station:
        await station.dock_recorder(recorder.device_serial, 1)
        if pinned:
            await station.wait_results(1)
            assert station.agent.results[0].outcome is OffloadOutcome.DONE
            assert station.bus.passwords_received(recorder.device_serial) == [PASSWORD]
            return
        (refused,) = await station.wait_ledger("refused")
        await station.agent.idle()
        assert refused["usb_serial"] == recorder.usb_serial and refused["bay"] == 1
        assert "pinned by no allow-list entry" in refused["reason"]
        assert "password was not sent" in refused["reason"]
        assert station.bus.passwords_received(recorder.device_serial) == []
        assert station.ledger("device_authenticated") == [] and station.ledger("acquired") == []
        assert await station.led_shows(1, BayLed.DENIED)


async def test_allow_unknown_still_sends_the_password_to_any_recorder(tmp_path: Path) -> None:
    """Where the operator chose to accept unknown recorders, they are served (and receive it)."""
    recorder = spec(0)
    async with simulated_station(
        tmp_path, [recorder], recorders={"allow": [], "allow_unknown": True}
    ) as station:
        await station.dock_recorder(recorder.device_serial, 1)
        await station.wait_results(1)
        assert station.agent.results[0].outcome is OffloadOutcome.DONE
        assert station.bus.passwords_received(recorder.device_serial) == [PASSWORD]
