"""Every test of ``test_tus_client`` again, with chunk bodies over the blocking connections
(:mod:`edge.uplink.blocking_body`) instead of aiohttp: the same central, proxies and hostile servers,
the same expectations. The station's uplink sends its bodies this way (`edge.uplink.tus_transport`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from edge.uplink.blocking_body import BlockingBodySender
from edge.uplink.tus_client import TusClient
from tests.uplink import test_tus_client as over_aiohttp

pytestmark = pytest.mark.timeout(60)

for _name, _value in vars(over_aiohttp).items():
    # The tests and the fixtures they ask for: pytest finds both by their names in this module.
    if not _name.startswith("_") and _name not in globals():
        globals()[_name] = _value


@pytest.fixture(autouse=True)
async def bodies_over_blocking_connections(
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[BlockingBodySender]:
    async with BlockingBodySender(ssl_context=None, max_connections=4) as sender:
        plain = over_aiohttp.make_client

        def make_client(session: aiohttp.ClientSession, origin: str, **kwargs: object) -> TusClient:
            return plain(session, origin, bodies=sender, **kwargs)

        monkeypatch.setattr(over_aiohttp, "make_client", make_client)
        yield sender
