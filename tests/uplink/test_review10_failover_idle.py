"""Review 10 (4c): a run of "busy" answers that counts towards failover (``failover_after_busy_s``) is
continuous: a quiet spell between two busy answers (longer than the wait the first asked for plus the
station's own longest wait between retries) starts a new run. The clock is the module's seam; nothing
sleeps."""

from __future__ import annotations

from pathlib import Path

from edge.uplink.failover import FailoverLink, FailoverPolicy
from edge.uplink.transport import RetryLater
from tests.uplink.test_failover_answers import Clock, ScriptedLink, call

BUSY = RetryLater("HTTP 503 server_busy", answered=True)
BUSY_RETRY_AFTER_900 = RetryLater("HTTP 503 server_busy", retry_after_s=900.0, answered=True)


def default_busy_policy(preferred: ScriptedLink, other: ScriptedLink, clock: Clock) -> FailoverLink:
    """The shipped defaults: busy_s 600 (failover_after_busy_s), idle gap 300 + 60 (backoff_max_s +
    breaker_open_s)."""
    return FailoverLink(["mqtt", "tus"], [preferred, other],
                        FailoverPolicy(after_failures=3, after_s=10.0, failback_s=60.0, busy_s=600.0,
                                       idle_gap_s=360.0), clock)


async def test_a_quiet_spell_between_two_busy_answers_starts_a_new_run(tmp_path: Path) -> None:
    """Busy at t=0; nothing for 700 s (nothing to send); busy again at 700, 710, 720 s. That is not 720 s
    of continuous busy: the run began at 700 s, and the transport stays in use."""
    clock = Clock()
    preferred, other = ScriptedLink(BUSY), ScriptedLink(None)
    link = default_busy_policy(preferred, other, clock)
    await call(link, "upload", tmp_path)
    clock.now += 700
    for _ in range(3):
        await call(link, "upload", tmp_path)
        clock.now += 10
    assert link.names[link.in_use] == "mqtt" and other.calls == []
    assert link.health[0].busy_since == 1700.0  # the run that began after the quiet spell


async def test_control_busy_answers_at_the_stations_retry_cadence_are_one_run(tmp_path: Path) -> None:
    """The same central busy every 100 s (the station retrying, no quiet spell): past 600 s each busy
    answer counts as silence, and the third fails over."""
    clock = Clock()
    preferred, other = ScriptedLink(BUSY), ScriptedLink(None)
    link = default_busy_policy(preferred, other, clock)
    for _ in range(7):  # 0 .. 600 s: the one at 600 s is the first beyond the cap
        await call(link, "upload", tmp_path)
        clock.now += 100
    assert link.names[link.in_use] == "mqtt"
    for _ in range(2):  # 700 and 800 s: the third beyond the cap
        await call(link, "upload", tmp_path)
        clock.now += 100
    assert link.names[link.in_use] == "tus"


async def test_a_wait_the_central_asked_for_is_not_a_quiet_spell(tmp_path: Path) -> None:
    """Busy with Retry-After 900 s, retried each time after 900 s: the gaps are the central's own request,
    so the run goes on and, past 600 s, fails over as a central busy for ever must."""
    clock = Clock()
    preferred, other = ScriptedLink(BUSY_RETRY_AFTER_900), ScriptedLink(None)
    link = default_busy_policy(preferred, other, clock)
    for _ in range(4):  # 0, 900, 1800, 2700 s: three beyond the cap
        await call(link, "upload", tmp_path)
        clock.now += 900
    assert link.names[link.in_use] == "tus"


async def test_failover_policy_idle_gap_comes_from_the_stations_retry_settings(tmp_path: Path) -> None:
    from edge.config.station import StationConfig
    from edge.uplink.failover import FailoverTransport
    from edge.uplink.transports import transport_for

    config = StationConfig.model_validate({
        "station": {"id": "S1", "store_dir": str(tmp_path / "store")},
        "usb": {"mount_root": str(tmp_path / "media")},
        "uplink": {"central_url": "http://127.0.0.1:9", "insecure_plain_http": True,
                   "central_signing_key": str(tmp_path / "central.pub"), "transports": ["mqtt", "tus"],
                   "backoff_max_s": 200.0, "breaker_open_s": 30.0},
        "mqtt": {"broker_url": "mqtts://127.0.0.1:9", "username": "S1", "password": "env:NO_SUCH_VAR",
                 "ca_file": str(tmp_path / "ca.crt")},
    })
    transport = transport_for(config, None)
    assert isinstance(transport, FailoverTransport) and transport.policy.idle_gap_s == 230.0
