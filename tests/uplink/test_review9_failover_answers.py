"""Review 9: failover's "answered" (edge/uplink/central_calls.py check_answer, tus_transport.py) trusts a
status and a header any reverse proxy sends. Agencies put nginx or a load balancer in front of the central
(tests/uplink/proxy.py); nginx's limit_req answers 429 (limit_req_status 429) and a maintenance or
"backend down" page commonly carries Retry-After. With the central down behind such a proxy, every call is
"answered" and the station never fails over to MQTT, however long the outage.

Fails on review9 (b66b5dc). A fix: count an HTTP busy answer as the central's only when its body is the
central's own JSON error document (and cap how long "answered busy" may last before it counts as silence).
Control: the central's own busy answer (its JSON document with Retry-After) stays an answer."""

from __future__ import annotations

import json

import pytest

from edge.uplink.central_calls import CentralUnavailable, check_answer

NGINX_PAGE = b"<html><head><title>503 Service Temporarily Unavailable</title></head></html>"


@pytest.mark.parametrize(("status", "retry_after_s"), [(503, 30.0), (429, None)])
def test_a_proxy_page_with_retry_after_or_429_is_not_the_central_answering(
    status: int, retry_after_s: float | None
) -> None:
    with pytest.raises(CentralUnavailable) as raised:
        check_answer(status, {}, NGINX_PAGE, what="POST /v1/items", retry_after_s=retry_after_s)
    assert raised.value.answered is False, "a proxy's page keeps the station from failing over for ever"


def test_control_the_centrals_own_busy_document_is_an_answer() -> None:
    doc = {"error": "server_busy", "detail": "registration queue full"}
    with pytest.raises(CentralUnavailable) as raised:
        check_answer(503, doc, json.dumps(doc).encode(), what="POST /v1/items", retry_after_s=30.0,
                     request_id="0123456789abcdef")  # the central's X-Request-Id (review 10)
    assert raised.value.answered is True
