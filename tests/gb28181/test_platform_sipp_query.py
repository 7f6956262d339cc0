"""A query answered by a peer that is not ours: sipp plays a device that registers with digest, then answers
the platform's DeviceInfo query out of call (the query is a MESSAGE of its own, `-oocsf`): 200 at once, then
the answer as a MESSAGE of its own with the query's SN, which the platform matches by device, SN and
CmdType."""

from __future__ import annotations

import asyncio
import shutil
import socket
from pathlib import Path

from edge.gb28181.platform import GbPlatform

from ..prerequisites import requires
from .platform_peer import FakeClock, Ledger, platform_settings
from .test_sip_sipp import DEVICE_ID, DOMAIN, PASSWORD, SERVER_ID, register

pytestmark = requires(shutil.which("sipp") is not None, "needs sipp (Debian package sip-tester)")

MAIN = (
    '<?xml version="1.0" encoding="ISO-8859-1" ?>\n<scenario name="gb28181 device answering a query">\n'
    + register(1, expires=3600, auth=False)
    + '  <recv response="401" auth="true"/>\n'
    + register(2, expires=3600, auth=True)
    + '  <recv response="200"/>\n'
    # The device stays registered while the platform asks it (the out-of-call scenario answers); sipp
    # cannot wait for its out-of-call scenario, so this is its pace, generous for a loaded machine.
    + '  <pause milliseconds="6000"/>\n'
    + "</scenario>\n"
)

OUT_OF_CALL = f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="gb28181 device answering DeviceInfo">
  <recv request="MESSAGE">
    <action>
      <ereg regexp="&lt;SN&gt;([0-9]+)&lt;/SN&gt;" search_in="body" check_it="true" assign_to="whole,sn"/>
    </action>
  </recv>
  <Reference variables="whole"/>
  <send>
    <![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]q[call_number]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

    ]]>
  </send>
  <send retrans="500">
    <![CDATA[
MESSAGE sip:{SERVER_ID}@{DOMAIN} SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];rport;branch=[branch]
From: <sip:{DEVICE_ID}@{DOMAIN}>;tag=[pid]a[call_number]
To: <sip:{SERVER_ID}@{DOMAIN}>
Call-ID: answer-[call_id]
CSeq: 21 MESSAGE
Content-Type: Application/MANSCDP+xml
Max-Forwards: 70
Content-Length: [len]

<?xml version="1.0" encoding="GB2312"?>
<Response>
<CmdType>DeviceInfo</CmdType>
<SN>[$sn]</SN>
<DeviceID>{DEVICE_ID}</DeviceID>
<Result>OK</Result>
<DeviceName>sipp device</DeviceName>
<Manufacturer>SIPp</Manufacturer>
</Response>
    ]]>
  </send>
  <recv response="200"/>
</scenario>
"""


async def test_sipp_answers_a_device_info_query(tmp_path: Path) -> None:
    online = asyncio.Event()
    platform = GbPlatform(platform_settings({DEVICE_ID: PASSWORD}), record=Ledger(),
                          clock_trusted=lambda: False, clock=FakeClock())
    platform.add_online_listener(lambda device_id: online.set())
    await platform.start()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        local_port = probe.getsockname()[1]
    (tmp_path / "main.xml").write_text(MAIN)
    (tmp_path / "ooc.xml").write_text(OUT_OF_CALL)
    process = await asyncio.create_subprocess_exec(
        "sipp", f"127.0.0.1:{platform.transport.port}", "-sf", str(tmp_path / "main.xml"),
        "-oocsf", str(tmp_path / "ooc.xml"), "-m", "1", "-t", "u1", "-i", "127.0.0.1", "-p", str(local_port),
        "-au", DEVICE_ID, "-ap", PASSWORD, "-nostdin", "-timeout", "30", "-timeout_error", "-trace_err",
        "-error_file", str(tmp_path / "errors.log"),
        cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(20):
            await online.wait()
        info = await platform.query_device_info(DEVICE_ID)
        assert (info.result, info.device_name, info.manufacturer) == ("OK", "sipp device", "SIPp")
        state = platform.registry.get(DEVICE_ID)
        assert state is not None and state.device_info["name"] == "sipp device"
        assert state.address is not None and state.address.port == local_port
    finally:
        output, _ = await asyncio.wait_for(process.communicate(), 60)
        await platform.close()
    error_file = tmp_path / "errors.log"
    errors = error_file.read_text(errors="replace") if error_file.exists() else ""
    assert process.returncode == 0, output.decode(errors="replace")[-2000:] + errors[-2000:]
