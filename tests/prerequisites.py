"""Prerequisites of tests that need FUSE, root, a system tool or a kernel feature.

On a developer's machine that lacks one, the test is skipped with the reason. Under CI (the environment
variable `CI` set, as CI systems and `.ci/run` do) a missing prerequisite is a failure instead: a CI run
must not go green by skipping the tests that matter most. Every skip in tests/ goes through here
(tests/test_quality.py refuses `pytest.skip`, `skipif`, `importorskip` and `xfail` anywhere else).

    require(shutil.which("mount") is not None, "needs mount(8)")    # inside a test or fixture
    needs_tool = requires(shutil.which("x") is not None, "needs x")  # a mark for tests or modules
    if prerequisite_met(os.geteuid() == 0, "a device node needs root"):  # an optional part of a test
        ...

This module is also a pytest plugin (loaded by tests/conftest.py) that checks `requires` marks.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

# Values of CI that mean "not CI" (an empty or explicitly false variable).
_CI_OFF = {"", "0", "false", "no", "off"}


def ci_enforced() -> bool:
    """True under CI: a missing prerequisite then fails the test instead of skipping it."""
    return os.environ.get("CI", "").strip().lower() not in _CI_OFF


def _missing(reason: str) -> str:
    return f"missing prerequisite: {reason} (CI is set, so this fails instead of skipping)"


def require(condition: object, reason: str) -> None:
    """Skip the current test when `condition` is false, or fail it under CI."""
    if condition:
        return
    if ci_enforced():
        pytest.fail(_missing(reason), pytrace=False)
    pytest.skip(reason)


def prerequisite_met(condition: object, reason: str) -> bool:
    """For an optional part of a test: whether to run it. False when `condition` is false on a developer's
    machine (the rest of the test still runs); under CI a false condition fails the test."""
    if condition:
        return True
    if ci_enforced():
        pytest.fail(_missing(reason), pytrace=False)
    return False


def requires(condition: object, reason: str) -> pytest.MarkDecorator:
    """A mark for a test, a class or a module (`pytestmark = requires(...)`) that calls `require` before
    the test runs. The condition is evaluated once, where the mark is made."""
    return pytest.mark.requires(bool(condition), reason)


# System tools tests run, by the Debian package that has them (the Makefile's APT_PACKAGES installs them).
TOOL_PACKAGES = {"xorriso": "xorriso", "ffmpeg": "ffmpeg", "ffprobe": "ffmpeg", "sipp": "sip-tester",
                 "ceph-mon": "ceph-mon", "ceph-osd": "ceph-osd", "radosgw": "radosgw",
                 "radosgw-admin": "radosgw", "ceph": "ceph-common", "monmaptool": "ceph-common"}


def require_tool(name: str) -> str:
    """The path of the system tool `name`; skips the test (fails it under CI) when it is missing."""
    found = shutil.which(name)
    require(found is not None, f"needs {name} (Debian package {TOOL_PACKAGES.get(name, name)}: make setup)")
    assert found is not None
    return found


def pytest_configure(config: pytest.Config) -> None:
    # Agents the tests start without an [api] section take their socket from $RUNTIME_DIRECTORY (as
    # under systemd): one private directory per test session, never the production /run/evidence-edge.
    # A pytest-xdist worker (tests run in parallel) is a session of its own: it inherits the controller's
    # directory, so it takes one of its own, or the agents of two workers would take turns at one socket.
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if "RUNTIME_DIRECTORY" not in os.environ or worker:
        os.environ["RUNTIME_DIRECTORY"] = tempfile.mkdtemp(prefix=f"edge-run-{worker or 'session'}-")
    config.addinivalue_line(
        "markers", "requires(condition, reason): skip when false, or fail under CI (tests/prerequisites.py)"
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("requires"):
        require(*mark.args, **mark.kwargs)
