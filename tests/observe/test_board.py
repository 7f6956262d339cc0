"""The status board on its own: bounded subscribers, events from other threads, what a bay shows after
its recorder leaves, device text escaped."""

from __future__ import annotations

import asyncio
import threading

from edge.observe.board import StatusBoard
from edge.observe.sink import BayChanged, BayPhase, BayVacated, Device, ErrorClass, Officer


def board() -> StatusBoard:
    return StatusBoard(identity={"id": "S"}, bays=[1, 2])


async def test_a_slow_subscriber_gets_a_fresh_snapshot_and_never_holds_up_the_board() -> None:
    status = board()
    slow = status.subscribe(limit=4)
    keeping_up = status.subscribe(limit=4)
    assert (await slow.get())[0] == "snapshot" and (await keeping_up.get())[0] == "snapshot"
    seen: list[str] = []
    for i in range(10):
        status.publish(BayChanged(1, f"dev{i}", BayPhase.AUTHENTICATING, device=Device(f"dev{i}")))
        kind, data = await keeping_up.get()  # control: one that keeps up sees every change, in order
        assert kind == "bay"
        seen.append(data["device"]["serial"])
    assert seen == [f"dev{i}" for i in range(10)]
    assert len(slow._queue) <= 4 and slow.dropped > 0
    kind, data = await slow.get()
    assert kind == "snapshot"
    latest = [b["device"] for b in data["bays"] if b["bay"] == "1"]
    assert latest == [{"serial": "dev9", "model": "", "battery_pct": None}]
    slow.close()
    keeping_up.close()
    assert status._subscribers == set()


async def test_events_from_worker_threads_are_taken_on_the_loop() -> None:
    status = board()
    status.attach()
    subscription = status.subscribe()
    await subscription.get()
    taken_on: list[int] = []
    original = status._take

    def spy(event: object) -> None:
        taken_on.append(threading.get_ident())
        original(event)  # type: ignore[arg-type]

    status._take = spy  # type: ignore[method-assign]
    worker = threading.Thread(target=status.publish, args=(BayChanged(2, "d", BayPhase.COPYING),))
    worker.start()
    worker.join()
    kind, data = await asyncio.wait_for(subscription.get(), 5)
    assert (kind, data["bay"], data["state"]) == ("bay", "2", "copying")
    assert taken_on == [threading.get_ident()]


async def test_a_bay_shows_empty_when_its_recorder_leaves_unless_it_was_pulled_early() -> None:
    status = board()
    status.publish(BayChanged(1, "a", BayPhase.AUTHENTICATING, officer=Officer("张伟", "110001")))
    status.publish(BayChanged(1, "a", BayPhase.DONE))
    status.publish(BayChanged(2, "b", BayPhase.COPYING))
    status.publish(BayChanged(2, "b", BayPhase.ERROR, ErrorClass.PULLED_EARLY))
    status.publish(BayVacated(1, "a"))
    status.publish(BayVacated(2, "b"))
    bays = {b["bay"]: b for b in status.bays()}
    assert (bays["1"]["state"], bays["1"]["officer"]) == ("empty", None)
    assert (bays["2"]["state"], bays["2"]["error_class"]) == ("error", "pulled_early")
    # A recorder leaving while its docking still runs changes nothing: the session says how it ended.
    status.publish(BayChanged(1, "c", BayPhase.COPYING))
    status.publish(BayVacated(1, "c"))
    assert status.bay("1")["state"] == "copying"  # type: ignore[index]
    # The next docking at bay 2 shows nothing of the last one.
    status.publish(BayChanged(2, "d", BayPhase.AUTHENTICATING))
    assert (status.bay("2")["state"], status.bay("2")["error_class"]) == ("authenticating", None)  # type: ignore[index]


async def test_device_text_is_escaped_in_the_model() -> None:
    status = board()
    status.publish(
        BayChanged(1, "x", BayPhase.AUTHENTICATING, officer=Officer("张\x1b[2J伟\n", "1\u202e0"),
                   device=Device("SER\r\nIAL", "M\x07"))
    )
    bay = status.bay("1")
    assert bay is not None
    assert bay["officer"] == {"name": "张\\x1b[2J伟\\x0a", "badge": "1\\u202e0"}
    assert (bay["device"]["serial"], bay["device"]["model"]) == ("SER\\x0d\\x0aIAL", "M\\x07")
    # A refusal of a volume in no known bay that did not say who it is: counted, no tile.
    status.publish(BayChanged(None, None, BayPhase.ERROR, ErrorClass.NO_IDENTITY))
    assert [b["bay"] for b in status.bays()] == ["1", "2"]
    assert status.station()["counts"]["refusals"] == {"no_identity": 1}


async def test_tiles_of_recorders_in_no_known_bay_are_bounded() -> None:
    from edge.observe.board import MAX_UNPLACED

    status = board()
    subscription = status.subscribe(limit=10_000)
    await subscription.get()
    for i in range(MAX_UNPLACED + 20):
        status.publish(BayChanged(None, f"stray{i}", BayPhase.ERROR, ErrorClass.PULLED_EARLY))
    keys = [b["bay"] for b in status.bays()]
    assert len(keys) == 2 + MAX_UNPLACED and keys[:2] == ["1", "2"]
    assert f"device:stray{MAX_UNPLACED + 19}" in keys and "device:stray0" not in keys
    removed = []
    while subscription._queue:
        _, data = await subscription.get()
        if data["state"] == "removed":
            removed.append(data["bay"])
    assert removed == [f"device:stray{i}" for i in range(20)]
