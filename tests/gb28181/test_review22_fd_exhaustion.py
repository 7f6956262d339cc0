"""Review 22: the SIP transport accepts up to `max_tcp_connections` = 1024 TCP connections (64 per source
address; each idle one is kept `tcp_idle_timeout_s` = 600 s), but systemd/edge-station.service sets no
`LimitNOFILE=`, so the agent runs with systemd's default soft limit of 1024 descriptors (DefaultLimitNOFILE
1024:524288; the central's units raise it to 65536, the station's does not), and the agent cannot raise it
itself (`SystemCallFilter=~@resources` forbids setrlimit). Anyone who can reach the SIP port from a few
dozen addresses (17 addresses of a carrier NAT pool, or one IPv6 subscriber's /64) opens ~1000 silent
connections, no password needed: the process runs out of descriptors and a download's media socket, the
raw PS file in the spool and ffmpeg's pipes can no longer be opened (nor SQLite's files, nor a USB
offload's copy), for as long as the attacker keeps them open.

The real platform runs in a child process with the descriptor limit the unit gives it (the unit's
`LimitNOFILE=` soft value if it names one, else systemd's default 1024); the test connects from loopback
addresses 127.0.0.2 ... (60 per address, under the per-address bound), then asks the child to open what a
download opens. Control: the same with 60 connections from one address. The child's soft limit is the
unit's value capped by this machine's hard limit (systemd sets both; a test cannot go above the hard one);
the same attack under systemd's default 1024 checks the transport's own bound.

Before the fix: no LimitNOFILE in the unit and 1024 connections allowed, so under 1024 descriptors the
probe failed ("Too many open files")."""

from __future__ import annotations

import json
import re
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "edge-station.service"
SYSTEMD_DEFAULT_SOFT_NOFILE = 1024

CHILD = r"""
import asyncio, json, os, resource, socket, sys, time
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
# systemd sets soft and hard to the unit's value; a test machine's hard limit may be lower (then that).
soft = int(sys.argv[1]) if hard == resource.RLIM_INFINITY else min(int(sys.argv[1]), hard)
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
from edge.gb28181.media import open_receiver
from edge.gb28181.platform import GbPlatform
from tests.gb28181.platform_peer import FakeClock, Ledger, platform_settings

def probe(spool):
    opened, failed = [], []
    for what, make in (
        ("media UDP socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)),
        ("raw PS file", lambda: open(os.path.join(spool, "raw.ps"), "wb")),
        ("ffmpeg pipe", lambda: os.pipe()),
    ):
        try:
            opened.append(make())
        except OSError as exc:
            failed.append(f"{what}: {exc}")
    for thing in opened:
        if isinstance(thing, tuple):
            os.close(thing[0]); os.close(thing[1])
        else:
            thing.close()
    return failed

async def main():
    platform = GbPlatform(platform_settings({"34020000001320000001": "12345678"}), record=Ledger(),
                          clock_trusted=lambda: True, clock=FakeClock(), open_receiver=open_receiver)
    await platform.start()
    print(platform.transport.port, flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)
    # Let the accepts settle: until the number of connections held stops changing for 2 s (60 s at most).
    last, stable_since, deadline = -1, time.monotonic(), time.monotonic() + 60
    while time.monotonic() < deadline:
        now_open = platform.transport.open_connections
        if now_open != last:
            last, stable_since = now_open, time.monotonic()
        elif time.monotonic() - stable_since > 2:
            break
        await asyncio.sleep(0.2)
    failed = probe(sys.argv[2])
    print(json.dumps({"open_connections": last, "failed": failed}), flush=True)
    await platform.close()

asyncio.run(main())
"""


def _unit_soft_nofile() -> int:
    match = re.search(r"^LimitNOFILE=(\d+)(?::\d+)?\s*$", UNIT.read_text(), re.MULTILINE)
    return int(match.group(1)) if match else SYSTEMD_DEFAULT_SOFT_NOFILE


def _attack(spool: Path, connections: int, per_address: int,
            nofile: int | None = None) -> dict[str, object]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < connections + 256:  # the test's own side of the connections
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, connections + 256), hard))
    limit = _unit_soft_nofile() if nofile is None else nofile
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(limit), str(spool)], cwd=REPO,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    sockets: list[socket.socket] = []
    try:
        assert child.stdout is not None and child.stdin is not None
        port = int(child.stdout.readline())
        for n in range(connections):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((f"127.0.0.{2 + n // per_address}", 0))
            s.settimeout(30)
            s.connect(("127.0.0.1", port))
            sockets.append(s)
        time.sleep(0.5)
        child.stdin.write("probe\n")
        child.stdin.flush()
        line = child.stdout.readline()
        assert line, "the platform process ended without answering"
        result: dict[str, object] = json.loads(line)
        return result
    finally:
        for s in sockets:
            s.close()
        child.kill()
        child.wait(timeout=60)
        for pipe in (child.stdin, child.stdout):
            if pipe is not None:
                pipe.close()


def test_silent_tcp_connections_to_the_sip_port_do_not_exhaust_the_agents_descriptors(tmp_path: Path) -> None:
    result = _attack(tmp_path, connections=1020, per_address=60)
    assert result["failed"] == [], (
        f"with {result['open_connections']} idle SIP TCP connections held and the unit's descriptor limit "
        f"({_unit_soft_nofile()}), the agent could not open what a download needs: {result['failed']}")


def test_under_systemds_default_limit_too_the_connections_leave_descriptors(tmp_path: Path) -> None:
    """Stronger than the unit's line alone (which a test machine's hard limit may cap, and an
    administrator may drop, or `edge run` from a shell not have): the transport bounds its connections by
    the descriptor limit it finds at start, so the same attack under systemd's default 1024 leaves what a
    download needs. The connections it holds stay a quarter of the limit."""
    result = _attack(tmp_path, connections=1020, per_address=60, nofile=SYSTEMD_DEFAULT_SOFT_NOFILE)
    assert result["failed"] == [], result
    assert isinstance(result["open_connections"], int)
    assert 0 < result["open_connections"] <= SYSTEMD_DEFAULT_SOFT_NOFILE // 4


def test_control_a_few_connections_leave_descriptors_for_downloads(tmp_path: Path) -> None:
    result = _attack(tmp_path, connections=60, per_address=60)
    assert result["open_connections"] == 60
    assert result["failed"] == []


def test_control_under_systemds_default_limit_a_few_connections_are_all_held(tmp_path: Path) -> None:
    result = _attack(tmp_path, connections=60, per_address=60, nofile=SYSTEMD_DEFAULT_SOFT_NOFILE)
    assert result["open_connections"] == 60
    assert result["failed"] == []



async def test_a_tcp_device_that_registers_is_proven_a_stranger_that_only_talks_is_not() -> None:
    """The platform vouches for a SIP TCP connection only when a REGISTER over it passed digest (then it
    may stay idle up to the idle timeout); a connection that sends a keepalive for a device registered
    elsewhere, or a wrong password, stays unproven and is closed 30 s after it opened."""
    from drivers.gb28181.sip_transport import Transport
    from edge.gb28181.platform import GbPlatform
    from tests.gb28181.platform_peer import FakeClock, Ledger, TestDevice, platform_settings

    device_id, password = "34020000001320000001", "12345678"
    platform = GbPlatform(platform_settings({device_id: password}), record=Ledger(),
                          clock_trusted=lambda: True, clock=FakeClock())
    await platform.start()
    wrong = await TestDevice(device_id, "wrong", platform.transport.port, transport=Transport.TCP).start()
    device = await TestDevice(device_id, password, platform.transport.port, transport=Transport.TCP).start()
    try:
        assert (await wrong.register()).status == 403  # control: over TCP, refused, not proven
        assert platform.snapshot()["sip_tcp"] == {**platform.snapshot()["sip_tcp"], "connections": 1,
                                                  "proven": 0}
        assert (await device.register()).status == 200
        # A keepalive from another port of the device's host is answered (it moves nothing): no proof.
        assert (await wrong.keepalive()).status == 200
        tcp = platform.snapshot()["sip_tcp"]
        assert (tcp["connections"], tcp["proven"]) == (2, 1)
    finally:
        await device.close()
        await wrong.close()
        await platform.close()
