"""The device simulator against a platform that is not ours: sipp (Debian package sip-tester) plays the
platform. It challenges the simulator's REGISTER and verifies the digest itself (`verifyauth`), answers
its keepalive, sends it a MANSCDP Catalog query and checks the Catalog answer that comes back as a MESSAGE
of its own. Every new Call-ID is a new sipp call, so the one scenario branches on what arrives first."""

from __future__ import annotations

import asyncio
import shutil
import socket
from pathlib import Path

from simulators.gb28181.device import SimulatedDevice
from simulators.gb28181.settings import DeviceSettings, parse_faults

from ..prerequisites import requires

pytestmark = requires(shutil.which("sipp") is not None, "needs sipp (Debian package sip-tester)")

PLATFORM_ID = "34020000002000000001"
DEVICE_ID = "34020000001320000001"
CHANNEL_ID = "34020000001310000001"
DOMAIN = "3402000000"
PASSWORD = "sipp-checks-this-1"

CHALLENGE = f'WWW-Authenticate: Digest realm="{DOMAIN}", nonce="5f2b9c0e61a4d7b3", algorithm=MD5\n'
REPLY = """  <send>
    <![CDATA[
SIP/2.0 {status}
[last_Via:]
[last_From:]
[last_To:];tag=[pid]plat[call_number]
[last_Call-ID:]
[last_CSeq:]
{extra}Content-Length: 0

    ]]>
  </send>
"""

SCENARIO = f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="gb28181 platform">
  <recv request="REGISTER" optional="true" next="register"/>
  <recv request="MESSAGE" crlf="true">
    <action>
      <ereg regexp="&lt;CmdType&gt;([A-Za-z]+)&lt;/CmdType&gt;" search_in="body" assign_to="cmdmatch,cmd"/>
      <ereg regexp="&lt;DeviceList[^&gt;]*&gt;\\s*&lt;Item&gt;\\s*&lt;DeviceID&gt;([0-9]+)&lt;"
            search_in="body" assign_to="itemmatch,item"/>
      <strcmp assign_to="keepalivediff" variable="cmd" value="Keepalive"/>
      <test assign_to="keepalive" variable="keepalivediff" compare="equal" value="0"/>
      <strcmp assign_to="itemdiff" variable="item" value="{CHANNEL_ID}"/>
      <test assign_to="rightitem" variable="itemdiff" compare="equal" value="0"/>
      <log message="MESSAGE [$cmd] [$cmdmatch] item [$item] [$itemmatch]"/>
    </action>
  </recv>
{REPLY.format(status="200 OK", extra="")}
  <nop next="done" test="rightitem"/>
  <nop next="query" test="keepalive"/>
  <nop next="bad"/>
  <label id="query"/>
  <send retrans="500">
    <![CDATA[
MESSAGE sip:{DEVICE_ID}@{DOMAIN} SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];rport;branch=[branch]
From: <sip:{PLATFORM_ID}@{DOMAIN}>;tag=[pid]q[call_number]
To: <sip:{DEVICE_ID}@{DOMAIN}>
Call-ID: [call_id]
CSeq: 7 MESSAGE
Content-Type: Application/MANSCDP+xml
Max-Forwards: 70
Content-Length: [len]

<?xml version="1.0" encoding="GB2312"?>
<Query>
<CmdType>Catalog</CmdType>
<SN>17430</SN>
<DeviceID>{DEVICE_ID}</DeviceID>
</Query>
    ]]>
  </send>
  <recv response="200"/>
  <nop next="done"/>
  <label id="register"/>
{REPLY.format(status="401 Unauthorized", extra=CHALLENGE)}
  <recv request="REGISTER">
    <action>
      <verifyauth assign_to="authvalid" username="{DEVICE_ID}" password="{PASSWORD}"/>
    </action>
  </recv>
  <nop next="welcome" test="authvalid"/>
{REPLY.format(status="403 Forbidden", extra="")}
  <nop next="bad"/>
  <label id="welcome"/>
{REPLY.format(status="200 OK", extra="Expires: 3600" + chr(10))}
  <nop next="done"/>
  <label id="bad"/>
  <nop>
    <action><exec int_cmd="stop_now"/></action>
  </nop>
  <label id="done"/>
</scenario>
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def run_sipp_platform(tmp_path: Path, port: int, calls: int) -> asyncio.subprocess.Process:
    path = tmp_path / "platform.xml"
    path.write_text(SCENARIO)
    return await asyncio.create_subprocess_exec(
        "sipp", "-sf", str(path), "-i", "127.0.0.1", "-p", str(port), "-t", "u1", "-m", str(calls),
        "-nostdin", "-timeout", "30", "-timeout_error", "-trace_msg", "-message_file",
        str(tmp_path / "messages.log"), "-trace_err", "-error_file", str(tmp_path / "errors.log"),
        "-trace_logs", "-log_file", str(tmp_path / "sipp.log"),
        cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)


async def test_sipp_platform_registers_the_device_and_gets_its_catalog(tmp_path: Path) -> None:
    port = free_port()
    sipp = await run_sipp_platform(tmp_path, port, calls=3)  # REGISTER, keepalive + query, Catalog answer
    device = SimulatedDevice(DeviceSettings(
        platform_host="127.0.0.1", platform_port=port, platform_id=PLATFORM_ID, device_id=DEVICE_ID,
        password=PASSWORD, keepalive_interval_s=1.0, register_retry_s=3600))
    task = asyncio.ensure_future(device.run())
    try:
        output, _ = await asyncio.wait_for(sipp.communicate(), 60)
    finally:
        await device.close()
        await asyncio.wait_for(task, 10)
    log = (output or b"").decode(errors="replace")[-2000:]
    error_file = tmp_path / "errors.log"
    errors = error_file.read_text(errors="replace") if error_file.exists() else ""
    assert sipp.returncode == 0, log + errors
    assert device.log.registrations == 1 and not device.log.refusals
    assert list(device.log.queries_answered) == ["Catalog"]
    messages = (tmp_path / "messages.log").read_text(errors="replace")
    assert "<CmdType>Catalog</CmdType>" in messages and f"<DeviceID>{CHANNEL_ID}</DeviceID>" in messages


async def test_sipp_platform_refuses_a_wrong_password(tmp_path: Path) -> None:
    port = free_port()
    sipp = await run_sipp_platform(tmp_path, port, calls=1)
    device = SimulatedDevice(DeviceSettings(
        platform_host="127.0.0.1", platform_port=port, platform_id=PLATFORM_ID, device_id=DEVICE_ID,
        password=PASSWORD, faults=parse_faults(["wrong-password"]), register_retry_s=3600))
    task = asyncio.ensure_future(device.run())
    try:
        await asyncio.wait_for(sipp.communicate(), 60)
    finally:
        await device.close()
        await asyncio.wait_for(task, 10)
    assert list(device.log.refusals) == [403] and device.log.registrations == 0
