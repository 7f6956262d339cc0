"""Interop with a SIP peer that is not ours: sipp (Debian package sip-tester) plays a GB/T 28181 device
that registers with digest, keeps alive and unregisters, over UDP and over TCP, to a minimal registrar
built on the transport and the digest server. The registrar is the test's own: the real one is the
platform service's. sipp computes its digest over its own `uri` (the server's address), not over the
request URI, so this also proves the server verifies against the client's `uri`."""

from __future__ import annotations

import asyncio
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from drivers.gb28181.digest import DigestCredentials, DigestError, DigestServer, DigestVerdict
from drivers.gb28181.sip import SipRequest, SipResponse, response_to
from drivers.gb28181.sip_transport import Peer, SipTransport

from ..prerequisites import requires

pytestmark = requires(shutil.which("sipp") is not None, "needs sipp (Debian package sip-tester)")

DEVICE_ID = "34020000001320000001"
SERVER_ID = "34020000002000000001"
DOMAIN = "3402000000"
PASSWORD = "12345678"


@dataclass
class MiniRegistrar:
    """Just enough of a registrar to prove interop: challenge, verify, remember the source address."""

    digest: DigestServer
    passwords: dict[str, str]
    registered: dict[str, Peer] = field(default_factory=dict)
    verdicts: list[DigestVerdict] = field(default_factory=list)
    keepalives: list[Peer] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    digest_uris: list[tuple[str, str]] = field(default_factory=list)  # (the client's uri=, request URI)

    async def __call__(self, req: SipRequest, peer: Peer) -> SipResponse:
        if req.method == "REGISTER":
            return self.register(req, peer)
        if req.method == "MESSAGE":
            device = req.from_.sip_uri.user or ""
            if self.registered.get(device) != peer:
                self.events.append("keepalive refused")
                return response_to(req, 404, to_tag="reg")
            self.keepalives.append(peer)
            self.events.append("keepalive")
            return response_to(req, 200, to_tag="reg")
        return response_to(req, 405, to_tag="reg")

    def register(self, req: SipRequest, peer: Peer) -> SipResponse:
        authorization = req.headers.get("Authorization")
        if authorization is None:
            self.events.append("challenged")
            return response_to(
                req, 401, to_tag="reg", headers=[("WWW-Authenticate", str(self.digest.challenge()))]
            )
        try:
            credentials = DigestCredentials.parse(authorization)
        except DigestError:
            return response_to(req, 400, to_tag="reg")
        self.digest_uris.append((credentials.uri, req.uri))
        password = self.passwords.get(credentials.username)
        if password is None:
            return response_to(req, 403, to_tag="reg")
        verdict = self.digest.verify(credentials, method="REGISTER", password=password)
        self.verdicts.append(verdict)
        if verdict in (DigestVerdict.STALE_NONCE, DigestVerdict.FOREIGN_NONCE):
            challenge = self.digest.challenge(stale=True)
            return response_to(req, 401, to_tag="reg", headers=[("WWW-Authenticate", str(challenge))])
        if verdict is not DigestVerdict.OK:
            self.events.append("refused")
            return response_to(req, 403, to_tag="reg")
        expires = req.expires if req.expires is not None else 3600
        if expires == 0:
            self.registered.pop(credentials.username, None)
            self.events.append("unregistered")
        else:
            self.registered[credentials.username] = peer
            self.events.append("registered")
        return response_to(
            req,
            200,
            to_tag="reg",
            headers=[
                ("Contact", req.headers.get("Contact") or f"<sip:{credentials.username}@{peer.host}>"),
                ("Expires", str(expires)),
            ],
        )


def register(cseq: int, *, expires: int, auth: bool) -> str:
    authorization = "[authentication]\n" if auth else ""  # sipp writes the whole Authorization header
    return f"""  <send retrans="500">
    <![CDATA[
REGISTER sip:{SERVER_ID}@{DOMAIN} SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];rport;branch=[branch]
From: <sip:{DEVICE_ID}@{DOMAIN}>;tag=[pid]dev[call_number]
To: <sip:{DEVICE_ID}@{DOMAIN}>
Call-ID: [call_id]
CSeq: {cseq} REGISTER
Contact: <sip:{DEVICE_ID}@[local_ip]:[local_port]>
{authorization}Max-Forwards: 70
User-Agent: sipp playing a GB/T 28181 device
Expires: {expires}
Content-Length: [len]

    ]]>
  </send>
"""


KEEPALIVE = f"""  <send retrans="500">
    <![CDATA[
MESSAGE sip:{SERVER_ID}@{DOMAIN} SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];rport;branch=[branch]
From: <sip:{DEVICE_ID}@{DOMAIN}>;tag=[pid]ka[call_number]
To: <sip:{SERVER_ID}@{DOMAIN}>
Call-ID: [call_id]
CSeq: 20 MESSAGE
Content-Type: Application/MANSCDP+xml
Max-Forwards: 70
Content-Length: [len]

<?xml version="1.0"?>
<Notify>
<CmdType>Keepalive</CmdType>
<SN>43</SN>
<DeviceID>{DEVICE_ID}</DeviceID>
<Status>OK</Status>
</Notify>
    ]]>
  </send>
"""


def scenario(*, password_right: bool) -> str:
    steps = [
        register(1, expires=3600, auth=False),
        '  <recv response="401" auth="true"/>\n',
        register(2, expires=3600, auth=True),
    ]
    if password_right:
        steps += [
            '  <recv response="200"/>\n',
            KEEPALIVE,
            '  <recv response="200"/>\n',
            register(3, expires=0, auth=False),
            '  <recv response="401" auth="true"/>\n',
            register(4, expires=0, auth=True),
            '  <recv response="200"/>\n',
        ]
    else:
        steps += ['  <recv response="403"/>\n']
    return (
        '<?xml version="1.0" encoding="ISO-8859-1" ?>\n<scenario name="gb28181 device register">\n'
        + "".join(steps)
        + "</scenario>\n"
    )


async def run_sipp(
    tmp_path: Path, port: int, transport_mode: str, password: str, text: str
) -> tuple[int, str]:
    # sipp's own default local port is 5060, which another test or a real service may hold: take a free one.
    with socket.socket(
        socket.AF_INET, socket.SOCK_DGRAM if transport_mode == "u1" else socket.SOCK_STREAM
    ) as probe:
        probe.bind(("127.0.0.1", 0))
        local_port = probe.getsockname()[1]
    path = tmp_path / "device.xml"
    path.write_text(text)
    process = await asyncio.create_subprocess_exec(
        "sipp",
        f"127.0.0.1:{port}",
        "-sf",
        str(path),
        "-m",
        "1",
        "-t",
        transport_mode,
        "-i",
        "127.0.0.1",
        "-p",
        str(local_port),
        "-au",
        DEVICE_ID,
        "-ap",
        password,
        "-nostdin",
        "-timeout",
        "30",
        "-timeout_error",
        "-trace_err",
        "-error_file",
        str(tmp_path / "errors.log"),
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    errors = (
        (tmp_path / "errors.log").read_text(errors="replace") if (tmp_path / "errors.log").exists() else ""
    )
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")[-2000:] + errors[-2000:]


@pytest.mark.parametrize("transport_mode", ["u1", "t1"])
async def test_sipp_registers_with_digest_keeps_alive_and_unregisters(
    tmp_path: Path, transport_mode: str
) -> None:
    registrar = MiniRegistrar(DigestServer(DOMAIN, b"sipp-test-secret-0123456789"), {DEVICE_ID: PASSWORD})
    async with SipTransport(registrar, host="127.0.0.1", port=0) as transport:
        code, log = await run_sipp(
            tmp_path, transport.port, transport_mode, PASSWORD, scenario(password_right=True)
        )
    assert code == 0, log
    assert registrar.events == ["challenged", "registered", "keepalive", "challenged", "unregistered"]
    assert registrar.verdicts == [DigestVerdict.OK, DigestVerdict.OK]
    assert registrar.registered == {}
    assert len(registrar.keepalives) == 1 and registrar.keepalives[0].host == "127.0.0.1"
    # sipp digests over the server's address, not over the request URI: verified against its own uri=.
    for client_uri, request_uri in registrar.digest_uris:
        assert client_uri == f"sip:127.0.0.1:{transport.port}" and request_uri == f"sip:{SERVER_ID}@{DOMAIN}"


@pytest.mark.parametrize("transport_mode", ["u1", "t1"])
async def test_sipp_with_a_wrong_password_is_refused(tmp_path: Path, transport_mode: str) -> None:
    registrar = MiniRegistrar(DigestServer(DOMAIN, b"sipp-test-secret-0123456789"), {DEVICE_ID: PASSWORD})
    async with SipTransport(registrar, host="127.0.0.1", port=0) as transport:
        code, log = await run_sipp(
            tmp_path, transport.port, transport_mode, "87654321", scenario(password_right=False)
        )
    assert code == 0, log
    assert registrar.verdicts == [DigestVerdict.WRONG_RESPONSE]
    assert registrar.events == ["challenged", "refused"]
    assert registrar.registered == {}
