"""Fixtures of the service tests: the service manager's end of sd_notify."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.service.processes import NotifySocket, notify_socket


@pytest.fixture
def notify(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NotifySocket]:
    # A short directory of its own: sockaddr_un paths are limited to 107 bytes.
    with notify_socket(tmp_path_factory.mktemp("n", numbered=True)) as sock:
        yield sock
