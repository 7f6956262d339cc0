"""Two control sessions on one USB port each hold their own volume claim (review 6).

Recorder A's control session can still be running at its port (waiting up to `wipe.witness_wait_s` for
the central after a pull, or unwinding a pull mid-copy) when recorder B is docked in the same bay and
its own session starts there. Claims used to be keyed by the port alone: B's overwrote A's, and A's end
(`release(port)`) took B's away, so B's volume went to a volume session while B's control session
waited for it in vain, and B was not busy for the rest of its docking.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from drivers.usb.protocol import RecorderMode
from edge.sources.usb.mounted import VolumeRoot
from edge.sources.usb.offload import OffloadOutcome
from edge.sources.usb.session import VolumeClaims
from tests.station.harness import eventually, simulated_station, spec

A, B = "3300001", "3300002"
PORT = "1-1.1"


async def test_the_end_of_an_earlier_session_at_a_port_does_not_drop_the_next_recorders_claim() -> None:
    claims = VolumeClaims()
    a = claims.expect(A, PORT)  # recorder A's control session, still running
    b = claims.expect(B, PORT)  # recorder B, docked in the same bay meanwhile
    assert claims.usb_ports(B) == [PORT]  # control: B's claim is there
    claims.forget(a)
    claims.release(a)  # A's session ends (its finally)
    assert claims.usb_ports(B) == [PORT] and claims.busy(B), (
        "the end of recorder A's session at the port dropped recorder B's claim on the same port")
    assert not claims.busy(A) and claims.usb_ports(A) == []
    assert not b.volume.done()


async def test_a_volume_on_a_port_goes_to_the_newest_claim_of_its_recorder(tmp_path: Path) -> None:
    claims = VolumeClaims()
    a = claims.expect(A, PORT)  # A pulled before its volume came: its session still waits
    b = claims.expect(B, PORT)
    root = VolumeRoot.open(tmp_path)  # a plain directory: the claims only pass it on
    # A volume saying it is recorder B's goes to B's claim, never to A's (and the other way round).
    assert claims.offer(PORT, B, root)
    assert b.volume.done() and b.volume.result() is root and not a.volume.done()
    assert not claims.offer(PORT, B, root)  # B's session has its volume: a second one is not taken
    # The same recorder docked again at the port while its earlier session still waits: the newer
    # session takes the volume.
    again = claims.expect(A, PORT)
    assert claims.offer(PORT, A, root)
    assert again.volume.done() and not a.volume.done()
    # A session's release is its own: the earlier A session ending leaves the newer one busy.
    claims.release(a)
    assert claims.busy(A) and claims.usb_ports(A) == [PORT]
    claims.release(again)
    assert not claims.busy(A)
    assert not claims.offer(PORT, A, root)  # nobody waits any more
    root.close()


async def test_a_recorder_docked_where_a_pulled_one_still_waits_is_served_by_its_own_control_session(
    tmp_path: Path,
) -> None:
    """The station-level interleaving: recorder A switches to mass storage, but its volume is late (as
    real hardware's can be) and A is pulled out; recorder B goes into the same bay and its session
    waits for its own late volume. A's session then ends (its volume never came): B keeps its claim,
    and B's volume goes to B's control session (identity read over USB), not to a volume session."""
    first, second = spec(0, files=1), spec(1, files=2)
    loop = asyncio.get_running_loop()
    # A's wait for its volume must end while B's still runs, with time left for B's volume to come.
    usb = {"volume_timeout_s": 10}
    async with simulated_station(tmp_path, [first, second], usb=usb) as station:
        files = await loop.run_in_executor(None, station.bus.volume_files, second.device_serial)
        for recorder in (first, second):
            station.bus.hold_volume_mount(recorder.device_serial)
        await station.dock_recorder(first.device_serial, 1)
        # A acknowledged the switch to mass storage (its volume is late): its session waits for it.
        await eventually(
            lambda: station.bus.recorder_state(first.device_serial).mode is RecorderMode.MASS_STORAGE
            and station.agent.claims.usb_ports(first.device_serial) == [PORT]
        )
        await station.undock(first.device_serial, 1)
        # A person takes a while to dock the next recorder: the station polls USB 20 more times (about
        # 2 s), so B's wait ends well after A's.
        polls = station.bus.enumerations + 20
        assert await loop.run_in_executor(None, station.bus.wait_for_enumerations, polls, 20)
        await station.dock_recorder(second.device_serial, 1)
        await eventually(lambda: station.agent.claims.usb_ports(second.device_serial) == [PORT])
        # The interleaving: A's session still waits for its volume as B's starts.
        assert not [d for d in station.ledger("error") if d.get("device_serial") == first.device_serial]

        # A's session ends: its volume never came.
        await station.wait_ledger(
            "error", where=lambda d: d.get("device_serial") == first.device_serial
            and d.get("stage") == "mass-storage"
        )
        await eventually(lambda: not station.agent.claims.busy(first.device_serial))
        assert station.agent.claims.usb_ports(second.device_serial) == [PORT], (
            "the end of recorder A's session took recorder B's claim on the same port")

        await loop.run_in_executor(None, station.bus.release_volume_mount, second.device_serial)
        await station.wait_results(1, timeout_s=30)
        assert [r.outcome for r in station.agent.results] == [OffloadOutcome.DONE]
        (started,) = station.ledger("session_started")
        assert started["identity"]["device_serial"] == second.device_serial
        assert started["identity"]["source"] == "usb-control" and started["bay"] == 1
        assert {d["sha256"] for d in station.ledger("acquired")} == {
            sha for name, sha in files.items() if not name.endswith("PARAM.INI")
        }
        errors = [d for d in station.ledger("error") if d.get("device_serial") == second.device_serial]
        assert errors == [], errors
        # Two dockings, each on the record once: nothing else was seen at the port.
        connected = [(d["usb_serial"], d["usb_port"]) for d in station.ledger("device_connected")
                     if "usb_port" in d]
        assert connected == [(first.usb_serial, PORT), (second.usb_serial, PORT)], connected


async def test_a_recorder_docked_again_while_its_earlier_session_still_ends_gets_a_session_of_its_own(
    tmp_path: Path,
) -> None:
    """The same attachment (same bay, same USB serial) docked again while the session of its earlier
    docking still ends: once that session has ended, the new docking gets its own session (it used to be
    taken for the docking that session had served, and ignored until pulled out again)."""
    recorder = spec(0, files=2)
    loop = asyncio.get_running_loop()
    async with simulated_station(tmp_path, [recorder], usb={"volume_timeout_s": 10}) as station:
        files = await loop.run_in_executor(None, station.bus.volume_files, recorder.device_serial)
        station.bus.hold_volume_mount(recorder.device_serial)
        await station.dock_recorder(recorder.device_serial, 1)
        await eventually(
            lambda: station.bus.recorder_state(recorder.device_serial).mode is RecorderMode.MASS_STORAGE
            and station.agent.claims.usb_ports(recorder.device_serial) == [PORT]
        )
        await station.undock(recorder.device_serial, 1)
        await station.dock_recorder(recorder.device_serial, 1)  # docked again: control mode
        await eventually(
            lambda: (PORT, recorder.usb_serial) in station.agent._present_usb
            and station.bus.recorder_state(recorder.device_serial).mode is RecorderMode.CONTROL
        )
        # The earlier session ends: its volume never came.
        await station.wait_ledger("error", where=lambda d: d.get("stage") == "mass-storage", timeout_s=30)

        # The docking again is served: its own session, its own switch, its volume.
        await station.wait_ledger("device_connected", 2, where=lambda d: d.get("usb_port") == PORT)
        await eventually(
            lambda: station.bus.recorder_state(recorder.device_serial).mode is RecorderMode.MASS_STORAGE
            and station.agent.claims.usb_ports(recorder.device_serial) == [PORT]
        )
        await loop.run_in_executor(None, station.bus.release_volume_mount, recorder.device_serial)
        await station.wait_results(1, timeout_s=30)
        assert [r.outcome for r in station.agent.results] == [OffloadOutcome.DONE]
        assert {d["sha256"] for d in station.ledger("acquired")} == {
            sha for name, sha in files.items() if not name.endswith("PARAM.INI")
        }
