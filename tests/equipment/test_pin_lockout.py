"""The PIN lockout escalates: each lockout before a right PIN lasts twice the one before, up to a day."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta

from edge.equipment.assignments import MAX_LOCKOUT_S, AssignmentBook, PinLockout

FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
START = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def at(moment: datetime) -> str:
    return moment.strftime(FORMAT)


def lock_once(pins: PinLockout, officer_no: str, now: datetime) -> float:
    """Wrong PINs until the officer is locked: how long the lock lasts, seconds."""
    for _ in range(pins.max_failures):
        failures, locked = pins.failed(officer_no, at(now))
    assert locked is not None and failures == pins.max_failures
    return (datetime.strptime(locked, FORMAT).replace(tzinfo=UTC) - now).total_seconds()


def test_each_further_lockout_doubles_up_to_a_day_and_a_right_pin_starts_again() -> None:
    conn = sqlite3.connect(":memory:")
    AssignmentBook.create_schema(conn)
    pins = PinLockout(conn, max_failures=5, lockout_s=900.0)
    now = START
    durations = []
    for _ in range(9):
        durations.append(lock_once(pins, "110001", now))
        assert pins.locked_until("110001", at(now + timedelta(seconds=durations[-1] - 1))) is not None
        now += timedelta(seconds=durations[-1] + 1)
        assert pins.locked_until("110001", at(now)) is None  # over: the next wrong PINs count again
    assert durations == [900, 1800, 3600, 7200, 14400, 28800, 57600, MAX_LOCKOUT_S, MAX_LOCKOUT_S]
    # Four wrong PINs are no lockout yet (the count starts again after each lock).
    for _ in range(4):
        assert pins.failed("110001", at(now))[1] is None
    # The control: a right PIN clears the lockouts; the next lock is the first again, and another 警号's
    # lockouts are its own.
    pins.succeeded("110001")
    assert lock_once(pins, "110001", now) == 900
    assert lock_once(pins, "110002", now) == 900


def test_a_store_made_before_escalation_gets_the_column() -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE officer_pin_failures (officer_no TEXT PRIMARY KEY, failures INTEGER NOT NULL, "
                 "locked_until TEXT)")
    conn.execute("INSERT INTO officer_pin_failures VALUES ('110001', 2, NULL)")
    AssignmentBook.create_schema(conn)
    pins = PinLockout(conn, max_failures=3, lockout_s=60.0)
    failures, locked = pins.failed("110001", at(START))
    assert failures == 3 and locked == at(START + timedelta(seconds=60))
