"""Failover counts only silence and wire failures of a transport, never the central's answers (review 8
finding 8), and a switch abandons the upload the other transport had in progress.

The links here are scripted stand-ins for the :class:`edge.uplink.transport.Link` seam (what is tested is
the failover decision, not a wire); which wire answer becomes an ``answered`` RetryLater is tested on the
answer checking itself (`check_answer`) and, for MQTT, in tests/uplink/test_mqtt_transport.py."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from edge.uplink.central_calls import CentralUnavailable, check_answer
from edge.uplink.failover import FailoverLink, FailoverPolicy
from edge.uplink.transport import (
    Delivered,
    LedgerAnswer,
    LedgerPage,
    LedgerSegment,
    NotDone,
    Parcel,
    RegisterOutcome,
    RetryLater,
    UploadOutcome,
)

# What a busy central says, over either wire: each is an answer.
BUSY = [
    RetryLater("HTTP 503 server_busy", retry_after_s=10.0, answered=True),
    RetryLater("transfer x: the receiver's quota is exceeded (at segment 0)", answered=True),
    RetryLater("item x: transfer x.1 is already in progress on this link", answered=True),
    RetryLater("transfer x: the receiver asked for every segment again (at fin)", answered=True),
]
# Silence and wire failures.
SILENT = [
    RetryLater("MQTT tree-head: the broker connection is connecting (connection refused)"),
    RetryLater("transfer x: no receiver is listening (PUBACK 0x10, no matching subscribers)"),
    RetryLater("MQTT register: no reply from the central within 1 s"),
]


class ScriptedLink:
    """A link whose every call ends as ``outcome`` (a RetryLater: raised as NotDone by witnessing calls)."""

    checks_content_on_send = False

    def __init__(self, outcome: RetryLater | None) -> None:
        self.outcome = outcome
        self.calls: list[str] = []
        self.abandoned: list[str] = []

    async def upload(self, parcel: Parcel, on_resume: Callable[[str], None]) -> UploadOutcome:
        self.calls.append("upload")
        return self.outcome or Delivered("delivered")

    async def register(
        self, upload: str, manifest: Mapping[str, Any], segment: LedgerSegment | None
    ) -> RegisterOutcome:
        self.calls.append("register")
        assert self.outcome is not None
        return self.outcome

    async def abandon(self, upload: str) -> None:
        self.abandoned.append(upload)

    async def ledger_state(self) -> LedgerAnswer:
        raise AssertionError("not used")

    async def push_ledger(self, segment: LedgerSegment) -> LedgerAnswer:
        raise AssertionError("not used")

    async def ledger_page(self, after: int, limit: int) -> LedgerPage:
        raise AssertionError("not used")

    async def tree_head(self) -> dict[str, Any]:
        self.calls.append("tree-head")
        if self.outcome is not None:
            raise NotDone(self.outcome)
        return {"tree_size": 0}

    async def consistency(self, first: int, second: int) -> list[str] | None:
        raise AssertionError("not used")

    async def officers(self, have: int) -> dict[str, Any]:
        raise AssertionError("not used")

    async def fleet_report(self, report: Mapping[str, Any]) -> dict[str, Any]:
        raise AssertionError("not used")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def parcel(tmp_path: Path, resume: str | None = None) -> Parcel:
    path = tmp_path / "content"
    path.write_bytes(b"x")
    # The content's real SHA-256: the tus link checks it before the last chunk goes.
    return Parcel("item-1", hashlib.sha256(b"x").hexdigest(), 1, path, "clip.mp4", resume=resume)


def failover(preferred: ScriptedLink, other: ScriptedLink, clock: Clock) -> FailoverLink:
    return FailoverLink(["mqtt", "tus"], [preferred, other],
                        FailoverPolicy(after_failures=3, after_s=10.0, failback_s=600.0), clock)


async def call(link: FailoverLink, which: str, tmp_path: Path) -> None:
    if which == "upload":
        await link.upload(parcel(tmp_path), lambda _ref: None)
    elif which == "register":
        await link.register("mqtt:item-1.00000000", {}, None)
    else:
        with pytest.raises(NotDone):
            await link.tree_head()


@pytest.mark.parametrize("which", ["upload", "register", "tree-head"])
@pytest.mark.parametrize("busy", BUSY, ids=lambda r: r.reason[:30])
async def test_a_busy_central_is_an_answer_and_never_a_reason_to_fail_over(
    tmp_path: Path, which: str, busy: RetryLater
) -> None:
    clock = Clock()
    preferred, other = ScriptedLink(busy), ScriptedLink(None)
    link = failover(preferred, other, clock)
    for _ in range(10):
        await call(link, which, tmp_path)
        clock.now += 5
    assert link.names[link.in_use] == "mqtt"
    assert other.calls == [] and len(preferred.calls) == 10


@pytest.mark.parametrize("which", ["upload", "register", "tree-head"])
@pytest.mark.parametrize("silent", SILENT, ids=lambda r: r.reason[:30])
async def test_control_silence_of_the_preferred_transport_fails_over(
    tmp_path: Path, which: str, silent: RetryLater
) -> None:
    clock = Clock()
    preferred, other = ScriptedLink(silent), ScriptedLink(None)
    link = failover(preferred, other, clock)
    for _ in range(3):
        await call(link, which, tmp_path)
        clock.now += 5
    assert link.names[link.in_use] == "tus"


async def test_a_busy_answer_ends_a_run_of_silence(tmp_path: Path) -> None:
    """Silence, then the central answers "busy", then silence again: the run starts anew (an answer)."""
    clock = Clock()
    preferred, other = ScriptedLink(SILENT[0]), ScriptedLink(None)
    link = failover(preferred, other, clock)
    for outcome in (SILENT[0], SILENT[1], BUSY[0], SILENT[0], SILENT[1]):
        preferred.outcome = outcome
        await call(link, "upload", tmp_path)
        clock.now += 6
    assert link.names[link.in_use] == "mqtt"
    preferred.outcome = SILENT[2]
    await call(link, "upload", tmp_path)  # the third unanswered in a row, over 12 s: out
    assert link.names[link.in_use] == "tus"


async def test_a_switch_abandons_the_upload_the_other_transport_had_in_progress(tmp_path: Path) -> None:
    clock = Clock()
    preferred, other = ScriptedLink(SILENT[0]), ScriptedLink(None)
    link = failover(preferred, other, clock)
    for _ in range(3):
        await call(link, "tree-head", tmp_path)
        clock.now += 5
    assert link.names[link.in_use] == "tus"
    references: list[str] = []
    outcome = await link.upload(parcel(tmp_path, resume="mqtt:item-1.0a1b2c3d"), references.append)
    assert isinstance(outcome, Delivered) and other.calls == ["upload"]
    await link.close()  # the abandon runs in the background: wait for it
    assert preferred.abandoned == ["mqtt:item-1.0a1b2c3d"]
    assert other.abandoned == []
    # Control: an upload of the transport in use is resumed there, nothing is abandoned.
    await link.upload(parcel(tmp_path, resume="https://central/files/abc"), references.append)
    await link.close()
    assert preferred.abandoned == ["mqtt:item-1.0a1b2c3d"] and other.abandoned == []


async def test_an_abandon_that_hangs_on_the_dead_transport_does_not_hold_the_upload(tmp_path: Path) -> None:
    clock = Clock()
    preferred, other = ScriptedLink(SILENT[0]), ScriptedLink(None)
    released = asyncio.Event()

    async def hanging_abandon(upload: str) -> None:
        preferred.abandoned.append(upload)
        await released.wait()

    preferred.abandon = hanging_abandon  # type: ignore[method-assign]
    link = failover(preferred, other, clock)
    for _ in range(3):
        await call(link, "tree-head", tmp_path)
        clock.now += 5
    outcome = await link.upload(parcel(tmp_path, resume="mqtt:item-1.0a1b2c3d"), lambda _ref: None)
    assert isinstance(outcome, Delivered)  # while the abandon still waits
    assert len(link.abandoning) == 1
    released.set()
    await link.close()
    assert preferred.abandoned == ["mqtt:item-1.0a1b2c3d"] and not link.abandoning


BUSY_DOC = b'{"detail":"registration queue full","error":"server_busy"}'
HTML_PAGE = b"<html><body>503 Service Temporarily Unavailable</body></html>"


@pytest.mark.parametrize(("status", "retry_after_s", "raw", "from_central", "answered"), [
    (503, 10.0, BUSY_DOC, False, True),    # the central's busy: its error document and a Retry-After
    (429, None, BUSY_DOC, False, True),
    (503, None, b"", True, True),          # an MQTT reply: only the central's API publishes one
    (503, 10.0, HTML_PAGE, False, False),  # a proxy's maintenance page with Retry-After (review 9)
    (503, 10.0, b"", False, False),        # the same without a body
    (429, None, HTML_PAGE, False, False),  # nginx limit_req_status 429
    (429, None, b'{"message":"API rate limit exceeded"}', False, False),  # a gateway's own JSON
    (503, 10.0, b'{"error":"Service Unavailable","detail":"x"}', False, False),  # not a central code
    (503, 10.0, b'{"error":"server_busy","detail":"x","upstream":"down"}', False, False),
    (502, None, BUSY_DOC, False, False),   # a gateway's 502: no Retry-After, nobody behind it
    (504, None, b"", False, False),
    (503, None, b"", False, False),        # a proxy's 503 without Retry-After: nobody behind it
])
def test_which_transient_answers_are_the_central_speaking(
    status: int, retry_after_s: float | None, raw: bytes, from_central: bool, answered: bool
) -> None:
    from edge.uplink.central_calls import json_object

    with pytest.raises(CentralUnavailable) as raised:
        # With the central's X-Request-Id (what the central sends on every answer): the body decides.
        check_answer(status, json_object(raw), raw, what="GET /v1/log/head", retry_after_s=retry_after_s,
                     from_central=from_central, request_id="0123456789abcdef")
    assert raised.value.answered is answered


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from simulators.recorder.media import make_jpg, make_mp4

    root = tmp_path_factory.mktemp("failover-answers-media")
    make_mp4(root / "clip.mp4", size_bytes=200_000, seed=51)
    make_jpg(root / "scene.jpg", seed=52)
    return root


@pytest.mark.parametrize(("status", "retry_after", "body", "answered"), [
    # The central's document, but written by the proxy: no central X-Request-Id (review 10; the real
    # central's busy through a proxy is an answer: tests/uplink/test_review10_proxy_json.py).
    (503, "10", BUSY_DOC, False),
    (429, None, BUSY_DOC, False),
    (503, "10", HTML_PAGE, False),   # a proxy's maintenance page with Retry-After (review 9)
    (429, None, HTML_PAGE, False),   # nginx limit_req
    (503, "10", b"", False),         # no body at all
    (502, None, HTML_PAGE, False),   # control: nginx with nobody behind it
])
async def test_over_https_a_busy_answer_is_an_answer_and_a_proxy_page_is_not(
    tmp_path: Path, media: Path, status: int, retry_after: str | None, body: bytes, answered: bool
) -> None:
    """The real tus transport and central API through a real proxy that answers itself: an upload's
    creation and a registration answered by the proxy (its page, no body, or JSON in the central's shape
    but without the central's X-Request-Id) do not end as RetryLater.answered. The central's own busy
    answer through the same proxy does: tests/uplink/test_review10_proxy_json.py."""
    from tests.uplink.proxy import Fault
    from tests.uplink.test_refusals import ITEMS, STATION, UPLOADS, make_rig

    def page(_request: Any, _body: bytes) -> tuple[int, dict[str, str], bytes]:
        kind = "application/json" if body.startswith(b"{") else "text/html"
        headers = {"Content-Type": kind} | ({"Retry-After": retry_after} if retry_after else {})
        return status, headers, body

    from edge.uplink.tus_transport import TusTransport

    async with make_rig(tmp_path, media) as rig:
        rig.proxy.faults += [Fault("POST", UPLOADS, page, times=0), Fault("POST", ITEMS, page, times=0)]
        async with TusTransport(rig.config().uplink, STATION).connect() as link:
            uploaded = await link.upload(parcel(tmp_path), lambda _ref: None)
            registered = await link.register("https://central/files/abc", {"item": "x"}, None)
        for outcome in (uploaded, registered):
            assert isinstance(outcome, RetryLater), outcome
            assert outcome.answered is answered, outcome


async def test_closing_does_not_wait_for_an_abandon_on_a_dead_transport(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge.uplink import failover as failover_module

    monkeypatch.setattr(failover_module, "_ABANDON_GRACE_S", 0.1)
    clock = Clock()
    preferred, other = ScriptedLink(SILENT[0]), ScriptedLink(None)
    cancelled = asyncio.Event()

    async def hanging_abandon(upload: str) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    preferred.abandon = hanging_abandon  # type: ignore[method-assign]
    link = failover(preferred, other, clock)
    for _ in range(3):
        await call(link, "tree-head", tmp_path)
        clock.now += 5
    await link.upload(parcel(tmp_path, resume="mqtt:item-1.0a1b2c3d"), lambda _ref: None)
    async with asyncio.timeout(10):
        await link.close()
    assert cancelled.is_set() and not link.abandoning


def busy_capped(preferred: ScriptedLink, other: ScriptedLink, clock: Clock) -> FailoverLink:
    return FailoverLink(["mqtt", "tus"], [preferred, other],
                        FailoverPolicy(after_failures=3, after_s=10.0, failback_s=600.0, busy_s=60.0), clock)


@pytest.mark.parametrize("which", ["upload", "register", "tree-head"])
async def test_nothing_but_busy_beyond_the_cap_counts_as_silence_and_fails_over(
    tmp_path: Path, which: str
) -> None:
    """Review 9: a central (or something answering in its name) that says "busy" for hours must not keep
    the station from its other transport: after ``busy_s`` of nothing but busy answers, each further one
    counts as unanswered."""
    clock = Clock()
    preferred, other = ScriptedLink(BUSY[0]), ScriptedLink(None)
    link = busy_capped(preferred, other, clock)
    for _ in range(7):  # busy at 0, 10, ... 60 s: the one at 60 s is the first beyond the cap
        await call(link, which, tmp_path)
        clock.now += 10
    assert link.names[link.in_use] == "mqtt"
    for _ in range(2):  # the third beyond the cap, over 20 s: out
        await call(link, which, tmp_path)
        clock.now += 10
    assert link.names[link.in_use] == "tus"
    # A probe after failback_s that is answered busy again is no answer: the run is not over.
    clock.now += 600
    await call(link, which, tmp_path)
    assert preferred.calls.count(which) == 10 and link.names[link.in_use] == "tus"


async def test_control_any_other_answer_ends_a_run_of_busy(tmp_path: Path) -> None:
    """Busy for 50 s, one success, busy for 50 s more: no run lasted the cap, so no failover; busy within
    the cap keeps it (the existing behaviour of a central that is briefly busy)."""
    clock = Clock()
    preferred, other = ScriptedLink(BUSY[1]), ScriptedLink(None)
    link = busy_capped(preferred, other, clock)
    for outcome in [BUSY[1]] * 6 + [None] + [BUSY[1]] * 6:
        preferred.outcome = outcome
        await call(link, "upload", tmp_path)
        clock.now += 10
    assert link.names[link.in_use] == "mqtt" and other.calls == []
    for _ in range(2):  # 60 and 70 s into this run: two busy answers beyond the cap
        await call(link, "upload", tmp_path)
        clock.now += 10
    assert link.names[link.in_use] == "mqtt"  # two beyond the cap: not yet three
    await call(link, "upload", tmp_path)  # the third, 80 s into the run
    assert link.names[link.in_use] == "tus"


@pytest.mark.parametrize(("busy_s", "expected"), [(None, 600.0), (120.0, 120.0)])
def test_failover_after_busy_s_is_the_policys_busy_cap(
    tmp_path: Path, busy_s: float | None, expected: float
) -> None:
    """``[uplink] failover_after_busy_s`` (documented default 600 s) reaches the failover policy; a negative
    one is a configuration error naming the key."""
    from pydantic import ValidationError

    from edge.config.station import StationConfig
    from edge.uplink.failover import FailoverTransport
    from edge.uplink.transports import transport_for

    def config(extra: dict[str, Any]) -> StationConfig:
        return StationConfig.model_validate({
            "station": {"id": "S1", "store_dir": str(tmp_path / "store")},
            "usb": {"mount_root": str(tmp_path / "media")},
            "uplink": {"central_url": "http://127.0.0.1:9", "insecure_plain_http": True,
                       "central_signing_key": str(tmp_path / "central.pub"), "transports": ["mqtt", "tus"],
                       **extra},
            "mqtt": {"broker_url": "mqtts://127.0.0.1:9", "username": "S1", "password": "env:NO_SUCH_VAR",
                     "ca_file": str(tmp_path / "ca.crt")},
        })

    transport = transport_for(config({} if busy_s is None else {"failover_after_busy_s": busy_s}), None)
    assert isinstance(transport, FailoverTransport) and transport.policy.busy_s == expected
    with pytest.raises(ValidationError, match="failover_after_busy_s"):
        config({"failover_after_busy_s": -1})
