"""A failing test's report, even when pytest cannot format its traceback.

CPython 3.11 can leave a traceback entry without a line number (``tb_lineno`` None, seen once in a full run
for an exception that came out of a coroutine cut by a server's shutdown); pytest's traceback formatting then
raises TypeError while it makes the test's report, the worker reports an internal error, and the whole run
stops there (an hour of CI lost, the test's own failure never shown). This hook wraps the report's making
outermost: on that TypeError it makes the report itself, failed, with the exception formatted by the
standard library (which takes a missing line number)."""

from __future__ import annotations

import traceback
from collections.abc import Generator

import pytest


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    try:
        return (yield)
    except TypeError as failure:
        if call.excinfo is None or call.when == "collect":
            raise
        text = "".join(traceback.format_exception(call.excinfo.value))
        text += f"\n(pytest could not format this traceback: {failure})"
        return pytest.TestReport(item.nodeid, item.location, dict.fromkeys(item.keywords, 1), "failed", text,
                                 call.when, duration=call.duration, start=call.start, stop=call.stop)
