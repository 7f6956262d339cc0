"""Supervised tasks on the status board: the supervisor tells the board of every state change, and the
board sends the station part at once; a real agent whose bay board is missing shows its dock task
restarting, with the reason."""

from __future__ import annotations

import asyncio
from pathlib import Path

from edge.observe.board import StatusBoard, TaskFacts
from edge.observe.sink import StatusEvent, TaskChanged
from edge.runtime.supervise import Supervisor, TaskSpec
from tests.station.harness import simulated_station, spec


class Recorded:
    def __init__(self) -> None:
        self.events: list[StatusEvent] = []
        self.changed = asyncio.Event()

    def publish(self, event: StatusEvent) -> None:
        self.events.append(event)
        self.changed.set()


async def test_the_supervisor_tells_of_every_task_state_change() -> None:
    sink = Recorded()
    supervisor = Supervisor(status=sink, backoff_initial_s=0.0, backoff_max_s=0.0, restart_budget=1,
                            notify_ready=False)

    async def boom() -> None:
        raise RuntimeError("bay board unplugged")

    supervisor.add(TaskSpec("dock", boom, critical=False))
    stop = asyncio.Event()
    running = asyncio.create_task(supervisor.run(stop))
    async with asyncio.timeout(10):
        while not any(isinstance(e, TaskChanged) and e.state == "failed" for e in sink.events):
            sink.changed.clear()
            await sink.changed.wait()
    stop.set()
    await running
    changes = [(e.name, e.state, e.restarts) for e in sink.events if isinstance(e, TaskChanged)]
    assert changes == [("dock", "running", 0), ("dock", "backoff", 1), ("dock", "running", 1),
                       ("dock", "failed", 1)]
    failed = next(e for e in sink.events if isinstance(e, TaskChanged) and e.state == "failed")
    assert failed.last_error is not None and "bay board unplugged" in failed.last_error


async def test_the_board_sends_the_station_part_as_soon_as_a_task_changes() -> None:
    facts = [TaskFacts("dock", "running", 0, 0.0)]
    # Station facts are read only every hour here: the change must come from the event, not a poll.
    status = StatusBoard(identity={"id": "S"}, bays=[], tasks=lambda: list(facts), facts_every_s=3600,
                         tick_s=3600)
    subscription = status.subscribe()
    runner = asyncio.create_task(status.run())
    try:
        kind, first = await subscription.get()
        assert kind == "snapshot" and first["station"]["tasks"][0]["state"] == "running"
        while (await subscription.get())[0] != "station":  # the board's first look at the station
            pass
        facts[0] = TaskFacts("dock", "restarting", 1, 0.0, "DockError: no such port")
        status.publish(TaskChanged("dock", "backoff", 1, "DockError: no such port"))
        async with asyncio.timeout(5):
            kind, station = await subscription.get()
        assert kind == "station"
        assert station["tasks"] == [{"name": "dock", "state": "restarting", "restarts": 1,
                                     "last_event": "DockError: no such port",
                                     "last_event_at": station["tasks"][0]["last_event_at"]}]
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def test_an_agent_without_its_bay_board_shows_the_dock_task_restarting(
    tmp_path: Path, api_dir: Path
) -> None:
    s = spec(0)
    async with simulated_station(
        tmp_path, [s], dock={"port": str(tmp_path / "no-such-tty")},
        api={"socket_path": str(api_dir / "station.sock")},
    ) as station:
        subscription = station.agent.status.subscribe()
        async with asyncio.timeout(20):
            while True:
                kind, data = await subscription.get()
                station_json = data["station"] if kind == "snapshot" else data if kind == "station" else None
                if station_json is None:
                    continue
                dock = next((t for t in station_json["tasks"] if t["name"] == "dock"), None)
                if dock is not None and dock["state"] == "restarting" and dock["last_event"]:
                    break
        assert "no-such-tty" in dock["last_event"] or "No such file" in dock["last_event"], dock
        assert {t["name"]: t["state"] for t in station_json["tasks"]}["usb-poll"] == "running"
        subscription.close()


async def test_the_board_stops_when_cancelled_as_a_change_arrives() -> None:
    """The supervisor publishes a task's state change and cancels the board in one step when the
    station stops: the cancel must end the board, not be taken for the change it was waiting for (it
    was, with asyncio.wait_for on Python 3.11: every station stop waited out the status task's 10 s
    stop timeout, then abandoned it)."""
    status = StatusBoard(identity={"id": "S"}, bays=[], facts_every_s=3600, tick_s=3600)
    subscription = status.subscribe()
    runner = asyncio.create_task(status.run())
    while (await subscription.get())[0] != "station":  # the board is waiting for a change
        pass
    status.publish(TaskChanged("dock", "stopped", 0))
    runner.cancel()
    # The board's own tick is an hour: the bound only matters when the cancel is lost.
    done, _ = await asyncio.wait({runner}, timeout=30)
    assert done == {runner} and runner.cancelled()
    subscription.close()
