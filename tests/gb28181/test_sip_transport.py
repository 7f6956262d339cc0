"""The SIP transport over real UDP and TCP sockets: transactions, retransmissions, rport, dialogs, bounds."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from drivers.gb28181.sip import (
    CSeq,
    Dialog,
    SipMessage,
    SipRequest,
    SipResponse,
    SipStreamParser,
    parse_datagram,
    request,
    response_to,
)
from drivers.gb28181.sip_transport import (
    Peer,
    SipTimers,
    SipTransport,
    SipTransportError,
    TransactionTimeout,
    Transport,
    TransportLimits,
)

DEVICE = "34020000001320000001"
SERVER = "34020000002000000001"


def device_request(
    method: str,
    port: int,
    *,
    branch: str = "z9hG4bK-1",
    cseq: int = 1,
    call_id: str = "c1",
    to_tag: str | None = None,
    body: bytes = b"",
    transport: str = "UDP",
) -> bytes:
    to = f"<sip:{SERVER}@3402000000>" + (f";tag={to_tag}" if to_tag else "")
    return request(
        method,
        f"sip:{SERVER}@3402000000",
        [
            # The device believes it is 192.168.1.64 (behind NAT): the transport must record the real source.
            ("Via", f"SIP/2.0/{transport} 192.168.1.64:{port};rport;branch={branch}"),
            ("From", f"<sip:{DEVICE}@3402000000>;tag=dev1"),
            ("To", to),
            ("Call-ID", call_id),
            ("CSeq", f"{cseq} {method}"),
            ("Max-Forwards", "70"),
        ],
        body,
    ).to_bytes()


class Recorder:
    """A handler that records what it was given and answers 200 (or waits for `release` first)."""

    def __init__(self, *, hold: bool = False) -> None:
        self.calls: list[tuple[SipRequest, Peer]] = []
        self.arrived: asyncio.Queue[SipRequest] = asyncio.Queue()
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        if not hold:
            self.release.set()

    async def __call__(self, req: SipRequest, peer: Peer) -> SipResponse | None:
        self.calls.append((req, peer))
        self.arrived.put_nowait(req)
        self.started.set()
        await self.release.wait()
        if req.method == "ACK":
            return None
        if req.method == "INVITE":
            return response_to(req, 486, to_tag="srv")
        return response_to(req, 200, to_tag="srv", headers=[("Expires", "3600")])


class UdpClient(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.DatagramTransport) -> None:  # type: ignore[override]
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.received.put_nowait(data)

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def send(self, data: bytes, port: int) -> None:
        assert self.transport is not None
        self.transport.sendto(data, ("127.0.0.1", port))

    async def next(self) -> SipMessage:
        data = await asyncio.wait_for(self.received.get(), 5)
        message = parse_datagram(data)
        assert message is not None
        return message


@pytest.fixture
async def udp_client() -> AsyncIterator[UdpClient]:
    loop = asyncio.get_running_loop()
    _, client = await loop.create_datagram_endpoint(UdpClient, local_addr=("127.0.0.1", 0))
    yield client
    assert client.transport is not None
    client.transport.close()


async def started(handler: Any, **kwargs: Any) -> SipTransport:
    transport = SipTransport(handler, host="127.0.0.1", port=0, **kwargs)
    await transport.start()
    return transport


async def test_udp_request_is_answered_to_its_source_with_received_and_rport(udp_client: UdpClient) -> None:
    handler = Recorder()
    transport = await started(handler)
    try:
        udp_client.send(device_request("REGISTER", 5060), transport.port)
        answer = await udp_client.next()
        assert isinstance(answer, SipResponse) and answer.status == 200
        via = answer.top_via
        assert (via.host, via.port) == ("192.168.1.64", 5060)  # what the device believes
        assert (via.received, via.rport) == ("127.0.0.1", udp_client.port)  # where it really is
        assert answer.to.tag == "srv" and answer.call_id == "c1"
        ((req, peer),) = handler.calls
        assert peer == Peer(Transport.UDP, "127.0.0.1", udp_client.port)
        assert req.top_via.received == "127.0.0.1"  # the handler sees the stamped request too
    finally:
        await transport.close()


async def test_a_retransmitted_request_gets_the_same_response_without_running_the_handler_again(
    udp_client: UdpClient,
) -> None:
    handler = Recorder(hold=True)
    transport = await started(handler)
    try:
        data = device_request("MESSAGE", 5060, branch="z9hG4bK-retx")
        udp_client.send(data, transport.port)
        await handler.arrived.get()
        udp_client.send(data, transport.port)  # while the handler still runs: absorbed, no answer yet
        udp_client.send(data, transport.port)
        # A new transaction (new branch) runs the handler: the control. Datagrams on loopback arrive in
        # order, so when it reaches the handler both retransmissions were seen (and absorbed).
        udp_client.send(device_request("MESSAGE", 5060, branch="z9hG4bK-new", cseq=2), transport.port)
        assert (await handler.arrived.get()).top_via.branch == "z9hG4bK-new"
        handler.release.set()
        answers = {}
        for _ in range(2):
            answer = await udp_client.next()
            answers[answer.cseq.number] = answer.to_bytes()
        assert sorted(answers) == [1, 2]
        udp_client.send(data, transport.port)  # after the answer: the same answer again
        again = await udp_client.next()
        assert again.to_bytes() == answers[1]
        assert udp_client.received.empty()
        assert [c[0].top_via.branch for c in handler.calls] == ["z9hG4bK-retx", "z9hG4bK-new"]
    finally:
        await transport.close()


async def test_an_invite_gets_100_trying_at_once_and_its_ack_is_absorbed(udp_client: UdpClient) -> None:
    handler = Recorder(hold=True)
    transport = await started(handler)
    try:
        invite = device_request("INVITE", 5060, branch="z9hG4bK-inv")
        udp_client.send(invite, transport.port)
        trying = await udp_client.next()
        assert isinstance(trying, SipResponse) and trying.status == 100 and trying.to.tag is None
        udp_client.send(invite, transport.port)
        assert isinstance(retried := await udp_client.next(), SipResponse) and retried.status == 100
        handler.release.set()
        busy = await udp_client.next()
        assert isinstance(busy, SipResponse) and busy.status == 486
        # The ACK of the 486 carries the INVITE's branch: it ends the transaction, the handler never sees it.
        ack = device_request("ACK", 5060, branch="z9hG4bK-inv", to_tag="srv")
        udp_client.send(ack, transport.port)
        # An ACK of another branch (a 2xx's ACK) does reach the handler: the control.
        udp_client.send(device_request("ACK", 5060, branch="z9hG4bK-other", to_tag="srv"), transport.port)
        assert (await handler.arrived.get()).method == "INVITE"
        control = await asyncio.wait_for(handler.arrived.get(), 5)  # loopback keeps order: the ACK before it
        assert control.top_via.branch == "z9hG4bK-other"
        assert [(c[0].method, c[0].top_via.branch) for c in handler.calls] == [
            ("INVITE", "z9hG4bK-inv"),
            ("ACK", "z9hG4bK-other"),
        ]
    finally:
        await transport.close()


async def test_garbage_datagrams_are_dropped_and_the_transport_keeps_serving(udp_client: UdpClient) -> None:
    handler = Recorder()
    transport = await started(handler)
    try:
        for junk in (
            b"\x00" * 100,
            b"GET / HTTP/1.1\r\n\r\n",
            b"MESSAGE sip:a SIP/2.0\r\nl: 9\r\n\r\n",
            b"MESSAGE sip:a SIP/2.0\r\nVia: nonsense\r\n\r\n",
            b"\r\n\r\n",
        ):
            udp_client.send(junk, transport.port)
        udp_client.send(device_request("MESSAGE", 5060), transport.port)
        answer = await udp_client.next()
        assert isinstance(answer, SipResponse) and answer.status == 200
        assert len(handler.calls) == 1
    finally:
        await transport.close()


class TcpClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.parser = SipStreamParser()
        self.pending: list[SipMessage] = []

    @classmethod
    async def connect(cls, port: int) -> TcpClient:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    @property
    def port(self) -> int:
        return int(self.writer.get_extra_info("sockname")[1])

    async def next(self) -> SipMessage:
        while not self.pending:
            data = await asyncio.wait_for(self.reader.read(65536), 5)
            assert data, "connection closed"
            self.pending += self.parser.feed(data)
        return self.pending.pop(0)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def test_tcp_split_and_coalesced_writes_pings_and_a_second_transaction() -> None:
    handler = Recorder()
    transport = await started(handler)
    client = await TcpClient.connect(transport.port)
    try:
        first = device_request("REGISTER", 5060, branch="z9hG4bK-a", transport="TCP")
        for i in range(len(first)):  # one byte per write
            client.writer.write(first[i : i + 1])
            await client.writer.drain()
        answer = await client.next()
        assert isinstance(answer, SipResponse) and answer.status == 200
        assert answer.top_via.rport == client.port and answer.top_via.received == "127.0.0.1"
        # Two messages and a keepalive ping in one write.
        second = device_request("MESSAGE", 5060, branch="z9hG4bK-b", cseq=2, body=b"<x/>", transport="TCP")
        third = device_request("MESSAGE", 5060, branch="z9hG4bK-c", cseq=3, transport="TCP")
        client.writer.write(b"\r\n\r\n" + second + third)
        pong = await asyncio.wait_for(client.reader.readexactly(2), 5)
        assert pong == b"\r\n"
        answers = [await client.next(), await client.next()]
        assert sorted(a.cseq.number for a in answers) == [2, 3]
        assert [c[1] for c in handler.calls] == [Peer(Transport.TCP, "127.0.0.1", client.port)] * 3
        assert handler.calls[1][0].body == b"<x/>"
    finally:
        await client.close()
        await transport.close()


async def test_tcp_garbage_closes_that_connection_only() -> None:
    handler = Recorder()
    transport = await started(handler)
    bad = await TcpClient.connect(transport.port)
    good = await TcpClient.connect(transport.port)
    try:
        bad.writer.write(b"MESSAGE sip:a SIP/2.0\r\nCall-ID: x\r\n\r\n<no content-length>")
        assert await asyncio.wait_for(bad.reader.read(), 5) == b""  # closed by the transport
        good.writer.write(device_request("MESSAGE", 5060, transport="TCP"))
        answer = await good.next()
        assert isinstance(answer, SipResponse) and answer.status == 200
    finally:
        await bad.close()
        await good.close()
        await transport.close()


async def test_tcp_connections_and_header_sizes_are_bounded() -> None:
    handler = Recorder()
    limits = TransportLimits(max_tcp_connections=2)
    transport = await started(handler, limits=limits)
    clients = [await TcpClient.connect(transport.port) for _ in range(2)]
    try:
        for client in clients:  # both are served
            client.writer.write(device_request("MESSAGE", 5060, transport="TCP", call_id=str(client.port)))
            assert isinstance(await client.next(), SipResponse)
            # As the platform does on an authenticated REGISTER: a proven connection is never closed to
            # make room (review 24), so a newcomer finding every slot proven is refused.
            transport.mark_proven(Peer(Transport.TCP, "127.0.0.1", client.port))
        third = await TcpClient.connect(transport.port)
        assert await asyncio.wait_for(third.reader.read(), 5) == b""  # refused: closed at once
        await third.close()
        assert transport.connections_refused_all_proven == 1 and transport.proven_connections == 2
        # A peer that sends an endless header section is cut off at the limit, not buffered.
        clients[0].writer.write(b"MESSAGE sip:a SIP/2.0\r\n")
        with pytest.raises((ConnectionError, AssertionError)):
            for _ in range(200):
                clients[0].writer.write(b"X-Junk: " + b"y" * 1000 + b"\r\n")
                await clients[0].writer.drain()
            await clients[0].next()
    finally:
        for client in clients:
            client.writer.close()
        await transport.close()


async def test_server_transactions_are_bounded(udp_client: UdpClient) -> None:
    handler = Recorder(hold=True)
    transport = await started(handler, limits=TransportLimits(max_server_transactions=1))
    try:
        udp_client.send(device_request("MESSAGE", 5060, branch="z9hG4bK-1"), transport.port)
        await handler.started.wait()
        udp_client.send(device_request("MESSAGE", 5060, branch="z9hG4bK-2", cseq=2), transport.port)
        refused = await udp_client.next()
        assert isinstance(refused, SipResponse) and (refused.status, refused.cseq.number) == (503, 2)
        handler.release.set()
        accepted = await udp_client.next()
        assert isinstance(accepted, SipResponse) and (accepted.status, accepted.cseq.number) == (200, 1)
    finally:
        await transport.close()


class Schedule:
    """The clock seam: records each timer the transport starts and lets it fire at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.sleep(0.001)


def platform_message(method: str = "MESSAGE") -> SipRequest:
    return request(
        method,
        f"sip:{DEVICE}@127.0.0.1",
        [
            ("From", f"<sip:{SERVER}@3402000000>;tag=p1"),
            ("To", f"<sip:{DEVICE}@3402000000>"),
            ("Call-ID", "q1"),
            ("CSeq", f"1 {method}"),
            ("Max-Forwards", "70"),
        ],
        b"<Query/>",
    )


async def sent_until_marker(transport: SipTransport, client: UdpClient) -> list[bytes]:
    """Every datagram the transport sent the client so far: a marker sent last through the same socket
    arrives after them (loopback keeps order), so no wait is needed to know nothing else came."""
    marker = response_to(platform_message(), 299, "marker")
    await transport.send_stateless(marker, Peer(Transport.UDP, "127.0.0.1", client.port))
    got = []
    while (data := await asyncio.wait_for(client.received.get(), 5)) != marker.to_bytes():
        got.append(data)
    return got


@pytest.mark.parametrize(
    ("method", "waits", "sends"),
    [
        # Non-INVITE (Timer E then F): 0.5 doubling to T2 = 4, until 64*T1 = 32 s: 11 transmissions.
        ("MESSAGE", [0.5, 1, 2, 4, 4, 4, 4, 4, 4, 4, 0.5], 11),
        # INVITE (Timer A then B): doubling without cap: 7 transmissions.
        ("INVITE", [0.5, 1, 2, 4, 8, 16, 0.5], 7),
    ],
)
async def test_client_transactions_retransmit_over_udp_on_the_rfc_3261_schedule(
    udp_client: UdpClient, method: str, waits: list[float], sends: int
) -> None:
    schedule = Schedule()
    transport = await started(Recorder(), sleep=schedule)
    try:
        device = Peer(Transport.UDP, "127.0.0.1", udp_client.port)
        with pytest.raises(TransactionTimeout, match="no final response in 32 s"):
            await transport.request(platform_message(method), device)
        assert schedule.waits == waits
        got = await sent_until_marker(transport, udp_client)
        assert len(got) == sends
        assert len({g for g in got}) == 1  # the same bytes each time
        sent = parse_datagram(got[0])
        assert isinstance(sent, SipRequest) and sent.top_via.branch and sent.top_via.wants_rport
        assert sent.top_via.port == transport.port
    finally:
        await transport.close()


async def test_a_client_transaction_returns_the_final_response_after_provisional_ones(
    udp_client: UdpClient,
) -> None:
    schedule = Schedule()
    transport = await started(Recorder(), sleep=schedule, timers=SipTimers(t1_s=0.5))
    try:
        pending = asyncio.ensure_future(
            transport.request(platform_message(), Peer(Transport.UDP, "127.0.0.1", udp_client.port))
        )
        sent = await udp_client.next()
        assert isinstance(sent, SipRequest)
        # The device answers the first transmission: 100, then a stray 200 of another branch, then 200.
        udp_client.send(response_to(sent, 100).to_bytes(), transport.port)
        stray = response_to(sent, 404)
        stray_via = stray.top_via.with_param("branch", "z9hG4bKnot-ours")
        stray = SipResponse(headers=stray.headers.replaced("Via", str(stray_via)), status=404, reason="x")
        udp_client.send(stray.to_bytes(), transport.port)
        udp_client.send(response_to(sent, 200, to_tag="d").to_bytes(), transport.port)
        final = await asyncio.wait_for(pending, 5)
        assert final.status == 200 and final.to.tag == "d"
    finally:
        await transport.close()


async def test_requests_to_a_device_reuse_its_tcp_connection() -> None:
    handler = Recorder()
    transport = await started(handler)
    device = await TcpClient.connect(transport.port)
    try:
        device.writer.write(device_request("REGISTER", 5060, transport="TCP"))
        await device.next()
        ((_, peer),) = handler.calls
        assert peer.transport is Transport.TCP
        pending = asyncio.ensure_future(transport.request(platform_message(), peer))
        query = await device.next()
        assert isinstance(query, SipRequest) and query.method == "MESSAGE" and query.body == b"<Query/>"
        assert query.top_via.transport == "TCP"
        device.writer.write(response_to(query, 200, to_tag="d").to_bytes())
        assert (await asyncio.wait_for(pending, 5)).status == 200
    finally:
        await device.close()
        await transport.close()


async def test_a_request_over_tcp_opens_a_connection_when_the_device_has_none() -> None:
    received: asyncio.Queue[SipRequest] = asyncio.Queue()
    hung_up = asyncio.Event()

    async def device_side(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = SipStreamParser()
        try:
            while data := await reader.read(65536):
                for message in parser.feed(data):
                    assert isinstance(message, SipRequest)
                    received.put_nowait(message)
                    writer.write(response_to(message, 200, to_tag="d").to_bytes())
        finally:
            writer.close()
            hung_up.set()

    device = await asyncio.start_server(device_side, "127.0.0.1", 0)
    transport = await started(Recorder())
    try:
        port = device.sockets[0].getsockname()[1]
        answer = await transport.request(platform_message(), Peer(Transport.TCP, "127.0.0.1", port))
        assert answer.status == 200
        assert (await received.get()).method == "MESSAGE"
    finally:
        await transport.close()
        await hung_up.wait()  # the transport closed the connection it opened
        device.close()
        await device.wait_closed()


async def test_in_dialog_requests_are_routed_by_call_id_and_tag(udp_client: UdpClient) -> None:
    main, dialog = Recorder(), Recorder()
    transport = await started(main)
    try:
        transport.add_dialog("call-dl", "srv-tag", dialog)
        # MediaStatus 121 inside the download dialog (Hikvision's From may not be the device id).
        udp_client.send(device_request("MESSAGE", 5060, call_id="call-dl", to_tag="srv-tag"), transport.port)
        assert isinstance(await udp_client.next(), SipResponse)
        # A BYE naming a dialog that does not exist: 481, no handler runs.
        udp_client.send(
            device_request("BYE", 5060, branch="z9hG4bK-bye", call_id="gone", to_tag="x"), transport.port
        )
        unknown = await udp_client.next()
        assert isinstance(unknown, SipResponse) and unknown.status == 481
        # Out of dialog: the main handler.
        udp_client.send(device_request("MESSAGE", 5060, branch="z9hG4bK-2", call_id="other"), transport.port)
        await udp_client.next()
        transport.remove_dialog("call-dl", "srv-tag")
        udp_client.send(
            device_request("BYE", 5060, branch="z9hG4bK-3", call_id="call-dl", to_tag="srv-tag"),
            transport.port,
        )
        assert isinstance(after := await udp_client.next(), SipResponse) and after.status == 481
        assert [c[0].call_id for c in dialog.calls] == ["call-dl"]
        assert [c[0].call_id for c in main.calls] == ["other"]
    finally:
        await transport.close()


async def test_a_device_that_moves_is_reported_at_its_new_source_address(udp_client: UdpClient) -> None:
    handler = Recorder()
    transport = await started(handler)
    loop = asyncio.get_running_loop()
    _, moved = await loop.create_datagram_endpoint(UdpClient, local_addr=("127.0.0.1", 0))
    try:
        udp_client.send(device_request("MESSAGE", 5060, branch="z9hG4bK-1"), transport.port)
        await udp_client.next()
        # NAT rebinding: the same device, a new source port.
        moved.send(device_request("MESSAGE", 5060, branch="z9hG4bK-2", cseq=2), transport.port)
        answer = await moved.next()
        assert isinstance(answer, SipResponse) and answer.top_via.rport == moved.port
        assert [c[1].port for c in handler.calls] == [udp_client.port, moved.port]
    finally:
        assert moved.transport is not None
        moved.transport.close()
        await transport.close()


async def test_a_handler_that_fails_gives_500_and_a_closed_transport_refuses_requests(
    udp_client: UdpClient,
) -> None:
    async def broken(req: SipRequest, peer: Peer) -> SipResponse:
        raise RuntimeError("bug")

    transport = await started(broken)
    udp_client.send(device_request("MESSAGE", 5060), transport.port)
    answer = await udp_client.next()
    assert isinstance(answer, SipResponse) and answer.status == 500
    await transport.close()
    with pytest.raises(SipTransportError, match="closed"):
        await transport.request(platform_message(), Peer(Transport.UDP, "127.0.0.1", udp_client.port))


async def test_a_non_2xx_answer_to_our_invite_is_acknowledged_and_again_when_retransmitted(
    udp_client: UdpClient,
) -> None:
    unmatched: asyncio.Queue[SipResponse] = asyncio.Queue()
    transport = await started(Recorder(), on_unmatched_response=lambda resp, peer: unmatched.put_nowait(resp))
    try:
        device = Peer(Transport.UDP, "127.0.0.1", udp_client.port)
        pending = asyncio.ensure_future(transport.request(platform_message("INVITE"), device))
        invite = await udp_client.next()
        assert isinstance(invite, SipRequest) and invite.method == "INVITE"
        busy = response_to(invite, 486, to_tag="dev")
        udp_client.send(busy.to_bytes(), transport.port)
        assert (await asyncio.wait_for(pending, 5)).status == 486
        ack = await udp_client.next()
        assert isinstance(ack, SipRequest) and ack.method == "ACK"
        assert ack.top_via.branch == invite.top_via.branch and ack.to.tag == "dev"
        assert ack.cseq.number == invite.cseq.number
        udp_client.send(busy.to_bytes(), transport.port)  # the device did not get our ACK: it repeats
        again = await udp_client.next()
        assert again.to_bytes() == ack.to_bytes()
        # A response of no transaction of ours (a 2xx retransmission) goes to the hook.
        ok = response_to(invite, 200, to_tag="dev")
        udp_client.send(ok.to_bytes(), transport.port)
        assert (await asyncio.wait_for(unmatched.get(), 5)).status == 200
    finally:
        await transport.close()


async def test_the_ack_of_a_2xx_reaches_the_handler_even_with_the_invites_branch(
    udp_client: UdpClient,
) -> None:
    seen: asyncio.Queue[str] = asyncio.Queue()

    async def accepting(req: SipRequest, peer: Peer) -> SipResponse | None:
        seen.put_nowait(req.method)
        return None if req.method == "ACK" else response_to(req, 200, to_tag="srv")

    transport = await started(accepting)
    try:
        udp_client.send(device_request("INVITE", 5060, branch="z9hG4bK-same"), transport.port)
        assert [(await udp_client.next()).status for _ in range(2)] == [100, 200]  # type: ignore[union-attr]
        # RFC 2543-style devices reuse the INVITE's branch for the 2xx's ACK: the dialog must still see it.
        udp_client.send(device_request("ACK", 5060, branch="z9hG4bK-same", to_tag="srv"), transport.port)
        assert [await seen.get(), await seen.get()] == ["INVITE", "ACK"]
    finally:
        await transport.close()


async def test_a_download_dialog_over_tcp_invite_ack_in_dialog_media_status_and_bye() -> None:
    """The platform's side of a download as the next layer will drive it, against a device over TCP."""
    platform_side: asyncio.Queue[SipRequest] = asyncio.Queue()

    async def media_status(req: SipRequest, peer: Peer) -> SipResponse:
        platform_side.put_nowait(req)
        return response_to(req, 200)

    transport = await started(Recorder())
    device = await TcpClient.connect(transport.port)
    try:
        device.writer.write(device_request("REGISTER", 5060, transport="TCP"))
        await device.next()
        peer = Peer(Transport.TCP, "127.0.0.1", device.port)
        invite = request(
            "INVITE",
            f"sip:{DEVICE}@3402000000",
            [
                ("From", f"<sip:{SERVER}@3402000000>;tag=plat"),
                ("To", f"<sip:{DEVICE}@3402000000>"),
                ("Call-ID", "download-1"),
                ("CSeq", "1 INVITE"),
                ("Content-Type", "APPLICATION/SDP"),
            ],
            b"v=0\r\ns=Download\r\n",
        )
        pending = asyncio.ensure_future(transport.request(invite, peer))
        got = await device.next()
        assert isinstance(got, SipRequest) and got.method == "INVITE"
        device.writer.write(response_to(got, 100).to_bytes())
        ok = response_to(
            got, 200, to_tag="devtag", headers=[("Contact", f"<sip:{DEVICE}@192.168.1.64:5060>")]
        )
        device.writer.write(ok.to_bytes())
        answer = await asyncio.wait_for(pending, 5)
        dialog = Dialog.from_2xx(invite, answer)
        transport.add_dialog(dialog.call_id, dialog.local_tag, media_status)
        await transport.send_ack(dialog.ack(), peer)
        ack = await device.next()
        assert isinstance(ack, SipRequest) and ack.method == "ACK" and ack.cseq == CSeq(1, "ACK")
        assert ack.top_via.branch != got.top_via.branch  # a 2xx's ACK is a transaction of its own
        # MediaStatus 121 inside the dialog, from the device.
        notify = request(
            "MESSAGE",
            f"sip:{SERVER}@3402000000",
            [
                ("Via", "SIP/2.0/TCP 192.168.1.64:5060;rport;branch=z9hG4bK-ms"),
                ("From", f"<sip:{DEVICE}@3402000000>;tag=devtag"),
                ("To", f"<sip:{SERVER}@3402000000>;tag=plat"),
                ("Call-ID", "download-1"),
                ("CSeq", "2 MESSAGE"),
            ],
            b"<Notify><CmdType>MediaStatus</CmdType><NotifyType>121</NotifyType></Notify>",
        )
        device.writer.write(notify.to_bytes())
        assert (await asyncio.wait_for(platform_side.get(), 5)).body.endswith(b"</Notify>")
        status_ok = await device.next()
        assert isinstance(status_ok, SipResponse) and status_ok.status == 200
        # BYE from the platform, in the dialog.
        dialog, bye = dialog.request("BYE")
        pending_bye = asyncio.ensure_future(transport.request(bye, peer))
        got_bye = await device.next()
        assert isinstance(got_bye, SipRequest) and got_bye.method == "BYE" and got_bye.cseq.number == 2
        assert got_bye.uri == f"sip:{DEVICE}@192.168.1.64:5060" and got_bye.to.tag == "devtag"
        device.writer.write(response_to(got_bye, 200).to_bytes())
        assert (await asyncio.wait_for(pending_bye, 5)).status == 200
        transport.remove_dialog(dialog.call_id, dialog.local_tag)
    finally:
        await device.close()
        await transport.close()


async def test_an_idle_tcp_connection_is_closed() -> None:
    transport = await started(Recorder(), limits=TransportLimits(tcp_idle_timeout_s=0.2))
    client = await TcpClient.connect(transport.port)
    try:
        client.writer.write(device_request("MESSAGE", 5060, transport="TCP"))
        assert isinstance(await client.next(), SipResponse)  # in use: open
        assert await asyncio.wait_for(client.reader.read(), 10) == b""  # then idle: closed by the transport
    finally:
        await client.close()
        await transport.close()


async def test_seeded_garbage_streams_close_their_connections_and_leave_nothing_behind() -> None:
    handler = Recorder()
    transport = await started(handler)
    rng = random.Random(28181)
    valid = device_request("MESSAGE", 5060, transport="TCP")
    try:
        for i in range(40):
            client = await TcpClient.connect(transport.port)
            kind = i % 4
            if kind == 0:
                junk = rng.randbytes(rng.randrange(1, 4096))
            elif kind == 1:  # a valid message with bytes flipped
                flipped = bytearray(valid)
                for _ in range(rng.randrange(1, 6)):
                    flipped[rng.randrange(len(flipped))] = rng.randrange(256)
                junk = bytes(flipped)
            elif kind == 2:  # an endless header section
                junk = b"MESSAGE sip:a SIP/2.0\r\n" + b"X: y\r\n" * 4000
            else:  # a valid message cut short, then the peer hangs up
                junk = valid[: rng.randrange(1, len(valid))]
            for start in range(0, len(junk), 997):  # split writes
                client.writer.write(junk[start : start + 997])
            with contextlib.suppress(ConnectionError):
                await client.writer.drain()
            client.writer.write_eof()
            with contextlib.suppress(ConnectionError):
                while await asyncio.wait_for(client.reader.read(65536), 10):
                    pass  # answers to the flipped messages that were still valid, then the close
            await client.close()
        survivor = await TcpClient.connect(transport.port)
        survivor.writer.write(valid)
        assert isinstance(answer := await survivor.next(), SipResponse) and answer.status == 200
        await survivor.close()
        while transport.open_connections:
            await asyncio.sleep(0.01)  # the last close is being processed
        assert transport.open_connections == 0
    finally:
        await transport.close()


@pytest.mark.parametrize(("advertised", "expected"), [(None, "127.0.0.1"), ("203.0.113.5", "203.0.113.5")])
async def test_our_via_names_the_route_to_the_device_or_the_configured_public_address(
    udp_client: UdpClient, advertised: str | None, expected: str
) -> None:
    transport = SipTransport(Recorder(), host="0.0.0.0", port=0, advertised_host=advertised)
    await transport.start()
    try:
        pending = asyncio.ensure_future(
            transport.request(platform_message(), Peer(Transport.UDP, "127.0.0.1", udp_client.port))
        )
        sent = await udp_client.next()
        assert isinstance(sent, SipRequest)
        assert (sent.top_via.host, sent.top_via.port) == (expected, transport.port)
        udp_client.send(response_to(sent, 200, to_tag="d").to_bytes(), transport.port)
        assert (await asyncio.wait_for(pending, 5)).status == 200
    finally:
        await transport.close()


async def test_a_handler_that_hangs_gets_its_request_a_500_and_gives_its_slot_back(
    udp_client: UdpClient,
) -> None:
    hanging = Recorder(hold=True)  # never released
    now = [1000.0]
    limits = TransportLimits(max_server_transactions=1, handler_timeout_s=0.2)
    transport = await started(hanging, limits=limits, clock=lambda: now[0])
    try:
        udp_client.send(device_request("MESSAGE", 5060, branch="z9hG4bK-1"), transport.port)
        answer = await udp_client.next()
        assert isinstance(answer, SipResponse) and answer.status == 500 and "timeout" in answer.reason
        # The answered transaction is remembered for retransmissions (Timer J): a retransmission gets
        # the same answer without running the handler again ...
        udp_client.send(device_request("MESSAGE", 5060, branch="z9hG4bK-1"), transport.port)
        again = await udp_client.next()
        assert isinstance(again, SipResponse) and (again.status, again.cseq.number) == (500, 1)
        # ... but it does not fill the one slot (review 12: answered transactions never refuse a new
        # request with 503), and the hung handler holds nothing.
        udp_client.send(device_request("MESSAGE", 5060, branch="z9hG4bK-2", cseq=2), transport.port)
        second = await udp_client.next()
        assert isinstance(second, SipResponse) and (second.status, second.cseq.number) == (500, 2)
        now[0] += 32.1  # past Timer J: forgotten
        udp_client.send(device_request("MESSAGE", 5060, branch="z9hG4bK-3", cseq=3), transport.port)
        third = await udp_client.next()
        assert isinstance(third, SipResponse) and (third.status, third.cseq.number) == (500, 3)
        assert len(hanging.calls) == 3
    finally:
        await transport.close()


async def test_a_tcp_peer_that_never_reads_its_answers_is_disconnected(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def bulky(req: SipRequest, peer: Peer) -> SipResponse:
        return response_to(req, 200, body=b"x" * 65536)  # a large Catalog answer, say

    limits = TransportLimits(max_tcp_unsent_bytes=256 * 1024)
    transport = await started(bulky, limits=limits)
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: the answers back up
    probe.setblocking(False)
    await asyncio.get_running_loop().sock_connect(probe, ("127.0.0.1", transport.port))
    _unread, writer = await asyncio.open_connection(sock=probe)
    try:
        # 200 answers of 64 KiB (13 MB) exceed the kernel's socket buffers and then our 256 KiB.
        with contextlib.suppress(ConnectionError):
            for i in range(200):
                writer.write(
                    device_request("MESSAGE", 5060, branch=f"z9hG4bK-{i}", cseq=i + 1, transport="TCP")
                )
                await writer.drain()
        while transport.open_connections:
            await asyncio.sleep(0.01)  # the transport is working through what it already read
        assert "does not read what we send" in caplog.text
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        await transport.close()


async def test_a_request_with_a_wrong_content_length_is_answered_400_naming_it(udp_client: UdpClient) -> None:
    handler = Recorder()
    transport = await started(handler)
    try:
        good = device_request("MESSAGE", 5060, body=b"<Notify/>")
        udp_client.send(good.replace(b"Content-Length: 9", b"Content-Length: 900"), transport.port)
        answer = await udp_client.next()
        assert isinstance(answer, SipResponse) and answer.status == 400
        assert "Content-Length 900 but the datagram carries 9 body bytes" in answer.reason
        assert answer.top_via.rport == udp_client.port and answer.call_id == "c1"
        # Control: the same request with its length right reaches the handler.
        udp_client.send(good, transport.port)
        assert isinstance(ok := await udp_client.next(), SipResponse) and ok.status == 200
        assert len(handler.calls) == 1
    finally:
        await transport.close()


async def test_requests_racing_to_a_device_share_one_connection_and_a_refused_one_is_a_transport_error() -> (
    None
):
    connections: list[asyncio.StreamWriter] = []

    async def device_side(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        parser = SipStreamParser()
        try:
            while data := await reader.read(65536):
                for message in parser.feed(data):
                    assert isinstance(message, SipRequest)
                    writer.write(response_to(message, 200, to_tag="d").to_bytes())
        finally:
            writer.close()

    device = await asyncio.start_server(device_side, "127.0.0.1", 0)
    transport = await started(Recorder())
    try:
        port = device.sockets[0].getsockname()[1]
        peer = Peer(Transport.TCP, "127.0.0.1", port)
        answers = await asyncio.gather(*(transport.request(platform_message(), peer) for _ in range(5)))
        assert [a.status for a in answers] == [200] * 5
        assert len(connections) == 1 and transport.open_connections == 1
        device.close()
        await device.wait_closed()
        with socket.socket() as unused:  # a port nobody listens on
            unused.bind(("127.0.0.1", 0))
            closed_port = unused.getsockname()[1]
        with pytest.raises(SipTransportError, match="cannot connect"):
            await transport.request(platform_message(), Peer(Transport.TCP, "127.0.0.1", closed_port))
    finally:
        await transport.close()


async def _closed_by_transport(client: TcpClient) -> bool:
    """True when the transport closes the connection within 5 s (reads what comes until then)."""
    try:
        async with asyncio.timeout(5):
            while await client.reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return True


async def test_a_message_trickled_past_its_deadline_closes_its_connection() -> None:
    # Review 12: the idle timer restarted with every byte, so one byte a minute held a slot (and a
    # partial message) forever. A message that has started must be complete within a deadline.
    transport = await started(Recorder(), limits=TransportLimits(tcp_message_deadline_s=0.5))
    message = device_request("MESSAGE", 5060, transport="TCP", body=b"<Notify/>")
    control, trickler = await TcpClient.connect(transport.port), await TcpClient.connect(transport.port)
    try:
        # Control: a message sent in two parts, well within the deadline, is answered.
        control.writer.write(message[:40])
        await asyncio.sleep(0.05)
        control.writer.write(message[40:])
        assert isinstance(await control.next(), SipResponse)

        async def trickle() -> None:
            for byte in message[:-1]:
                trickler.writer.write(bytes([byte]))
                await asyncio.sleep(0.05)

        sending = asyncio.ensure_future(trickle())
        try:
            assert await _closed_by_transport(trickler), "a message trickled for 5 s kept its connection"
            assert not sending.done(), "the whole message was sent before the connection closed"
        finally:
            sending.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await sending
    finally:
        control.writer.close()
        trickler.writer.close()
        await transport.close()


async def test_unfinished_messages_over_all_connections_are_bounded() -> None:
    # Review 12: each of 1024 connections could hold a partial 1 MiB body (1 GiB in all). Past the total
    # bound, the connection holding the most is closed; the others go on.
    transport = await started(Recorder(), limits=TransportLimits(max_tcp_buffered_bytes=64 * 1024))
    big_body, small_body = b"x" * 60_000, b"y" * 30_000
    hog, device = await TcpClient.connect(transport.port), await TcpClient.connect(transport.port)
    try:
        hogged = device_request("MESSAGE", 5060, transport="TCP", call_id="hog", body=big_body)
        hog.writer.write(hogged[:-10_000])
        async with asyncio.timeout(5):
            while transport.tcp_buffered_bytes < 50_000:
                await asyncio.sleep(0.01)
        whole = device_request("MESSAGE", 5060, transport="TCP", call_id="device", body=small_body)
        device.writer.write(whole[:-10_000])  # together: over 64 KiB
        assert await _closed_by_transport(hog), "the connection holding the most was kept"
        device.writer.write(whole[-10_000:])
        answer = await device.next()  # the other one goes on
        assert isinstance(answer, SipResponse) and answer.call_id == "device"
        assert transport.tcp_buffered_bytes == 0
    finally:
        hog.writer.close()
        device.writer.close()
        await transport.close()


async def _until(condition: str, check: Callable[[], bool]) -> None:
    for _ in range(3000):  # up to 30 s on a loaded machine
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not reached in 30 s: {condition}")


async def test_one_address_gets_at_most_its_share_of_tcp_connections() -> None:
    """Review 12: max_tcp_connections_per_host bounds what one address holds even while slots are free.
    Review 26: a newcomer from an address at its bound closes the address's oldest unproven connection (a
    stranger behind the devices' NAT address must not lock them out); it is refused only when every
    connection of the address is proven, and another address is served meanwhile."""
    transport = await started(Recorder(), limits=TransportLimits(max_tcp_connections_per_host=2))
    held = [await TcpClient.connect(transport.port) for _ in range(2)]
    clients = list(held)
    try:
        await _until("two connections open", lambda: transport.open_connections == 2)
        third = await TcpClient.connect(transport.port)
        clients.append(third)
        assert await _closed_by_transport(held[0]), "the address's oldest unproven connection stayed open"
        await _until("room made", lambda: transport.connections_shed == 1)
        assert transport.open_connections == 2  # the address still holds its share, no more
        kept = [held[1], third]
        for client in kept:  # served, then proven as by an authenticated REGISTER
            client.writer.write(device_request("MESSAGE", 5060, transport="TCP", call_id=str(client.port)))
            assert isinstance(await client.next(), SipResponse)
            transport.mark_proven(Peer(Transport.TCP, "127.0.0.1", client.port))
        fourth = await TcpClient.connect(transport.port)
        clients.append(fourth)
        assert await _closed_by_transport(fourth), "a third connection from one address was kept"
        assert transport.connections_refused_all_proven == 1 and transport.proven_connections == 2
        other = TcpClient(
            *await asyncio.open_connection("127.0.0.1", transport.port, local_addr=("127.0.0.2", 0))
        )
        try:
            other.writer.write(device_request("MESSAGE", 5060, transport="TCP", call_id="other"))
            answer = await other.next()  # control: another address is served
            assert isinstance(answer, SipResponse) and answer.call_id == "other"
        finally:
            other.writer.close()
        for client in kept:  # and the two the address holds still work
            client.writer.write(device_request("MESSAGE", 5060, transport="TCP", call_id=str(client.port),
                                               branch="z9hG4bK-again"))
            assert isinstance(await client.next(), SipResponse)
    finally:
        for client in clients:
            client.writer.close()
        await transport.close()


async def test_a_connection_nobody_vouched_for_is_closed_soon_a_proven_one_stays() -> None:
    """Review 22: strangers' connections (even ones sending valid requests) cannot hold descriptors for
    the idle timeout; one over which the platform saw an authenticated REGISTER (`mark_proven`) can. The
    two open together, so the proven one still answering once the other was closed is the control."""
    limits = TransportLimits(tcp_unproven_timeout_s=0.5, tcp_idle_timeout_s=600)
    transport = await started(Recorder(), limits=limits)
    stranger = await TcpClient.connect(transport.port)
    device = await TcpClient.connect(transport.port)
    try:
        for n, client in enumerate((stranger, device)):
            client.writer.write(device_request("MESSAGE", 5060, transport="TCP", call_id=f"c{n}"))
            assert isinstance(await client.next(), SipResponse)
        transport.mark_proven(Peer(Transport.TCP, "127.0.0.1", device.port))
        assert await asyncio.wait_for(stranger.reader.read(), 30) == b""  # closed by the transport
        again = device_request("MESSAGE", 5060, transport="TCP", call_id="c2", branch="z9hG4bK-2")
        device.writer.write(again)
        assert isinstance(await device.next(), SipResponse)
        assert transport.open_connections == 1
    finally:
        stranger.writer.close()
        await device.close()
        await transport.close()


async def test_the_tcp_budget_follows_the_descriptor_limit() -> None:
    """Review 22: the connections allowed are a quarter of RLIMIT_NOFILE's soft limit when that is lower
    than the configured bound, and one address a quarter of those; with room to spare, the configured
    bounds. (The process-level proof, descriptors left for a download, is test_review22_fd_exhaustion.)"""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
        roomy = await started(Recorder(), limits=TransportLimits(max_tcp_connections=100))
        await roomy.close()
        assert (roomy.tcp_connection_budget, roomy.tcp_connections_per_host) == (100, 64)
        resource.setrlimit(resource.RLIMIT_NOFILE, (200, hard))
        tight = await started(Recorder())
        await tight.close()
        assert (tight.tcp_connection_budget, tight.tcp_connections_per_host) == (50, 12)
        assert tight.nofile_soft_limit == 200
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_connections_refused_in_a_flood_are_counted_not_each_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    """Review 22: under a connection flood the transport refuses (or closes to make room) many connections;
    each is counted, but the log gets one line per interval with how many more, not one per connection.
    (From one address at its bound each newcomer closes the address's oldest unproven one: review 26.)"""
    transport = await started(Recorder(), limits=TransportLimits(max_tcp_connections_per_host=2))
    clients = []
    try:
        with caplog.at_level("WARNING", logger="drivers.gb28181.sip_transport"):
            for _ in range(2 + 20):
                clients.append(await TcpClient.connect(transport.port))
            for client in clients[:20]:  # each closed by the transport for a newer one of its address
                assert await asyncio.wait_for(client.reader.read(), 30) == b""
        await _until("20 closed to make room", lambda: transport.connections_shed == 20)
        assert transport.open_connections == 2
        shed = [r for r in caplog.records if "to make room" in r.getMessage() or "refused" in r.getMessage()]
        assert 1 <= len(shed) <= 2, [r.getMessage() for r in shed]
    finally:
        for client in clients:
            client.writer.close()
        await transport.close()
