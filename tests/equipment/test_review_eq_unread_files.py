"""Review of issue 12: the desk must not issue a recorder whose files this docking has not read.

A recorder offloaded here (docking `done`, back in control mode) is taken from its bay without a check-out,
records two files, and is docked again. Its docking session fails before the offload starts (one garbled
GET_STATUS reply: a transient USB glitch, the recorder answers normally afterwards). The session ends with
an `error` entry and no session row, and the agent's finally marks the attachment done
(`StationAgent._control_session` → `_done_usb`), so the desk's `idle` says yes, and `why_not_ready` reads
the recorder's latest docking in the `sessions` table: the previous one, `done`. The desk issues a recorder
holding two recordings nobody has copied, to another officer, under a new identity. The control: without
the glitch the second docking offloads the two files, and the same check-out issues the recorder.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from drivers.usb.protocol import VendorRequest
from edge.sources.usb.session import UsbAttachment
from tests.equipment.test_desk_agent import WAIT_S, docked_and_back_in_control, registry
from tests.station.harness import eventually, simulated_station, spec


@pytest.mark.parametrize("glitch", [False, True], ids=["clean docking", "docking fails before offload"])
async def test_a_recorder_with_unread_files_is_not_issued(tmp_path: Path, glitch: bool) -> None:
    recorder = spec(0, files=1, battery_percent=95)
    registry(tmp_path)
    async with simulated_station(tmp_path, [recorder], equipment={"enabled": True}) as station:
        await docked_and_back_in_control(station, recorder.device_serial, 1)
        assert [r.outcome.value for r in station.agent.results] == ["done"]
        # Taken without a check-out; it records on its own; docked again.
        await station.undock(recorder.device_serial, 1)
        await asyncio.to_thread(station.bus.record, recorder.device_serial, files=2)
        if glitch:
            station.bus.inject_reply(recorder.device_serial, VendorRequest.GET_STATUS, b"\x00")
        await station.dock_recorder(recorder.device_serial, 1)
        if glitch:
            await station.wait_ledger("error", timeout_s=WAIT_S, where=lambda d: d.get("stage") == "control")
            state = station.bus.recorder_state(recorder.device_serial)
            assert state.port_path is not None
            # The agent is finished with this docking (not retried while docked, no session running).
            key = UsbAttachment(state.port_path, state.usb_serial)
            await eventually(lambda: key in station.agent._done_usb and key not in station.agent._active_usb,
                             timeout_s=WAIT_S)
            assert not station.agent._idle_for_desk(state.port_path, state.usb_serial)
        else:
            await station.wait_ledger("device_connected", count=2, timeout_s=WAIT_S,
                                      where=lambda d: d.get("after") == "bay power cycle")
        unread = [f for f in station.bus.volume_files(recorder.device_serial) if not f.endswith("PARAM.INI")]
        desk = station.agent.desk
        assert desk is not None
        outcome = (await desk.check_out_by_pin("110001", "2468")).as_json(0.0)
        acquired = station.ledger("acquired")
    if not glitch:  # the control: offloaded, wiped, issued
        assert len(acquired) == 3 and unread == []
        assert outcome["outcome"] == "assigned", outcome
        return
    assert len(unread) == 2 and len(acquired) == 1
    # Failed before the fix: outcome is "assigned": the recorder goes out with two recordings never copied.
    assert outcome["outcome"] == "refused" and outcome["reason"] == "no_recorder_ready", outcome
