"""The status board's loop stops when it is cancelled, also when the cancellation comes just as something
changed. Python 3.11's asyncio.wait_for returns the inner result and drops a cancellation that arrives
as the inner wait completes; the supervisor's own shutdown does exactly that (each task it stops
publishes a TaskChanged, then it cancels the board), so every station stop waited out the 10 s stop
timeout and abandoned the board's task."""

from __future__ import annotations

import asyncio

from edge.observe.board import StatusBoard
from edge.observe.sink import TaskChanged


async def test_the_board_stops_when_cancelled_as_a_task_change_comes_in() -> None:
    for _ in range(5):
        status = StatusBoard(identity={"id": "S"}, bays=[], facts_every_s=3600, tick_s=3600)
        subscription = status.subscribe()
        runner = asyncio.create_task(status.run())
        try:
            while (await subscription.get())[0] != "station":  # the board has sent its first look
                pass
            # What the supervisor does at shutdown: another task stopped, then the board is cancelled.
            status.publish(TaskChanged("dock", "stopped", 0, None))
            runner.cancel()
            done, _ = await asyncio.wait({runner}, timeout=5)
            assert done, "the board's loop did not stop when cancelled"
            assert runner.cancelled()
        finally:
            subscription.close()
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
