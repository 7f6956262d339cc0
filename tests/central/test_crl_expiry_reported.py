"""Review 9 #4: the running central reports when the CA's revocation list needs its next update (past it
Mosquitto refuses every client): a gauge of seconds left on /metrics always, and a ``warnings`` entry in
/readyz (still 200: the central takes evidence) under 7 days. Control: a renewed list clears it."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import aiohttp

from edge.central.app import READINESS
from edge.central.identity import load_ca
from edge.central.revocation import update_crl
from edge.pki.certs import utc_now
from edge.pki.crl import build_crl, write_crl
from tests.central.conftest import free_port, start_http_central
from tests.central.test_health_metrics import anonymous_session, get, metric_samples

_GAUGE = ("edge_central_crl_next_update_seconds", ())


async def test_a_list_close_to_its_next_update_is_named_by_readyz_and_metrics(tmp_path: Path) -> None:
    central = await start_http_central(tmp_path, dev=False, server={"metrics_port": free_port()})
    try:
        central.running.app[READINESS].max_age_s = 0.0
        layout = central.config.layout
        ca_cert, ca_key = load_ca(layout)
        # Written 27 days ago: 3 days before its next update.
        write_crl(layout.crl_file, build_crl(ca_cert, ca_key, [], now=utc_now() - dt.timedelta(days=27)))
        scrape = f"{central.running.metrics_url}/metrics"
        async with anonymous_session(central) as session, aiohttp.ClientSession() as plain:
            status, body = await get(session, f"{central.url}/readyz")
            assert status == 200 and body["warnings"] == {"crl": "expires_soon", "crl_list": "central_copy"}
            async with plain.get(scrape) as reply:
                left = metric_samples(await reply.text())[_GAUGE]
            assert 2.9 * 86400 < left < 3.0 * 86400
            # Control: renewed (what edge-central-crl.service does daily), the warning goes.
            update_crl(central.config, None)
            status, body = await get(session, f"{central.url}/readyz")
            assert status == 200 and "warnings" not in body
            async with plain.get(scrape) as reply:
                left = metric_samples(await reply.text())[_GAUGE]
            assert 29.9 * 86400 < left <= 30 * 86400
            # Past its next update: named as expired.
            write_crl(layout.crl_file, build_crl(ca_cert, ca_key, [], now=utc_now() - dt.timedelta(days=31)))
            status, body = await get(session, f"{central.url}/readyz")
            assert body["warnings"] == {"crl": "expired", "crl_list": "central_copy"}
    finally:
        await central.running.stop()
