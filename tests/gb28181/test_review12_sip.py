"""Review 12: the SIP codec and transport against a hostile network and a messy device.

Each test has a control that passes on today's code; the finding's own assertion fails until it is fixed.
Bounds are asserted by counted work, never by wall-clock time.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

import drivers.gb28181.sip as sip
from drivers.gb28181.sip import (
    SipRequest,
    SipResponse,
    SipStreamParser,
    parse_datagram,
    request,
    response_to,
)
from drivers.gb28181.sip_transport import Peer, SipTransport, TransportLimits
from tests.gb28181.test_sip_transport import UdpClient

DEVICE = "34020000001320000001"
SERVER = "34020000002000000001"


def device_request(
    method: str,
    *,
    branch: str,
    call_id: str = "c1",
    from_tag: str = "dev1",
    to_tag: str | None = None,
    body: bytes = b"",
    transport: str = "UDP",
    extra: tuple[tuple[str, str], ...] = (),
) -> bytes:
    to = f"<sip:{SERVER}@3402000000>" + (f";tag={to_tag}" if to_tag else "")
    return request(
        method,
        f"sip:{SERVER}@3402000000",
        [
            ("Via", f"SIP/2.0/{transport} 192.168.1.64:5060;rport;branch={branch}"),
            ("From", f"<sip:{DEVICE}@3402000000>;tag={from_tag}"),
            ("To", to),
            ("Call-ID", call_id),
            ("CSeq", f"1 {method}"),
            ("Max-Forwards", "70"),
            *extra,
        ],
        body,
    ).to_bytes()


class Recorder:
    """Records every request it is given; answers 200, or None (`answer=False`: it would answer later)."""

    def __init__(self, *, answer: bool = True) -> None:
        self.calls: list[tuple[SipRequest, Peer]] = []
        self.arrived = asyncio.Event()
        self.answer = answer

    async def __call__(self, req: SipRequest, peer: Peer) -> SipResponse | None:
        self.calls.append((req, peer))
        self.arrived.set()
        if not self.answer or req.method == "ACK":
            return None
        return response_to(req, 200, to_tag="srv")

    async def wait_for_calls(self, count: int) -> None:
        async with asyncio.timeout(5):
            while len(self.calls) < count:
                self.arrived.clear()
                await self.arrived.wait()


@contextlib.asynccontextmanager
async def udp_clients(count: int) -> AsyncIterator[list[UdpClient]]:
    loop = asyncio.get_running_loop()
    clients = [
        (await loop.create_datagram_endpoint(UdpClient, local_addr=("127.0.0.1", 0)))[1] for _ in range(count)
    ]
    try:
        yield clients
    finally:
        for client in clients:
            assert client.transport is not None
            client.transport.close()


@contextlib.asynccontextmanager
async def running(handler: Any, **kwargs: Any) -> AsyncIterator[SipTransport]:
    transport = SipTransport(handler, host="127.0.0.1", port=0, **kwargs)
    await transport.start()
    try:
        yield transport
    finally:
        await transport.close()


# -- the stream parser -------------------------------------------------------------------------------------


class CountingSearch:
    """Stands in for sip._HEADER_END_RE and counts the bytes each search may look at."""

    def __init__(self, pattern: re.Pattern[bytes]) -> None:
        self.pattern = pattern
        self.scanned = 0

    def search(self, data: Any, pos: int = 0, endpos: int | None = None) -> re.Match[bytes] | None:
        stop = len(data) if endpos is None else min(endpos, len(data))
        self.scanned += max(0, stop - pos)
        return self.pattern.search(data, pos, stop)


def test_a_header_trickled_byte_by_byte_is_scanned_in_linear_work(monkeypatch: pytest.MonkeyPatch) -> None:
    # A TCP peer sends a 16 KiB header section one byte per segment (each a read of its own). The stream
    # parser searches for the blank line from the start of its buffer on every read: quadratic work, 1.1 s
    # of CPU per connection here for 16 KiB, and 1024 connections may do it at once (max_tcp_connections).
    counter = CountingSearch(sip._HEADER_END_RE)
    monkeypatch.setattr(sip, "_HEADER_END_RE", counter)
    head = b"MESSAGE sip:a@b SIP/2.0\r\nX-Filler: " + b"a" * 16_000

    # Control: in one read the search is linear (and the counter counts).
    SipStreamParser().feed(head)
    assert len(head) <= counter.scanned <= 2 * len(head)

    counter.scanned = 0
    parser = SipStreamParser()
    for at in range(len(head)):
        parser.feed(head[at : at + 1])
    scanned, fed = counter.scanned, len(head)
    assert scanned <= 8 * fed, f"{scanned} bytes scanned for {fed} bytes fed"


# -- what the platform echoes --------------------------------------------------------------------------------


def test_a_nul_in_an_echoed_header_never_reaches_an_outgoing_message() -> None:
    # RFC 3261 header values never hold NUL or other control characters but HTAB; the codec refuses CR
    # and LF in anything it builds, but a NUL read from the wire (UTF-8 allows it) is copied into the
    # response's Call-ID (From, To and Via too), where C string handling in device stacks cuts the message.
    def answer_bytes(call_id: str) -> bytes | None:
        data = device_request("MESSAGE", branch="z9hG4bK-nul", call_id="placeholder")
        data = data.replace(b"Call-ID: placeholder", b"Call-ID: " + call_id.encode())
        try:
            message = parse_datagram(data)
            assert isinstance(message, SipRequest)
            return response_to(message, 200, to_tag="srv").to_bytes()
        except ValueError:  # SipProtocolError is one: refused on parsing or on building
            return None

    control = answer_bytes("abc@device")
    assert control is not None and b"Call-ID: abc@device\r\n" in control
    # Control: a CR in the value is refused (a bare CR on parsing).
    assert answer_bytes("abc\rX-Injected: 1") is None

    echoed = answer_bytes("abc\x00X-Injected: 1")
    assert echoed is None or b"\x00" not in echoed, "a NUL from the request was echoed into the response"


# -- transactions ------------------------------------------------------------------------------------------


async def test_a_request_from_another_address_is_not_absorbed_as_a_retransmission() -> None:
    # The server transaction key is the top Via's branch and sent-by (RFC 3261 17.2.3), without the source
    # address. A host that predicts a device's branch (embedded stacks often count) and sends first with
    # the device's Via gets the device's genuine request absorbed as a "retransmission": the handler never
    # sees it (a RecordInfo part, a MediaStatus 121) and the device gets the answer made for the forger.
    handler = Recorder()
    async with running(handler) as transport, udp_clients(2) as (device, forger):
        # Control: different branches are two transactions.
        forger.send(
            device_request("MESSAGE", branch="z9hG4bK-1", call_id="forged-1", body=b"<F/>"), transport.port
        )
        await forger.next()
        device.send(
            device_request("MESSAGE", branch="z9hG4bK-2", call_id="genuine-2", body=b"<G/>"), transport.port
        )
        assert (await device.next()).call_id == "genuine-2"

        forger.send(
            device_request("MESSAGE", branch="z9hG4bK-3", call_id="forged-3", body=b"<F/>"), transport.port
        )
        await forger.next()
        device.send(
            device_request("MESSAGE", branch="z9hG4bK-3", call_id="genuine-3", body=b"<G/>"), transport.port
        )
        answer = await device.next()
        seen = [req.call_id for req, _ in handler.calls]
        assert "genuine-3" in seen and answer.call_id == "genuine-3", (
            f"the device's request was absorbed into the forger's transaction: handler saw {seen}, "
            f"the device got the answer to {answer.call_id}"
        )


async def test_a_request_the_handler_answers_later_is_not_handled_again_when_retransmitted() -> None:
    # A handler may return None and answer later with send_response() (the module's docstring says so).
    # The transport then forgets the transaction: every retransmission of the request (UDP, T1 doubling)
    # runs the handler again. Control: a handler that answers at once runs once.
    for answers_at_once in (True, False):
        handler = Recorder(answer=answers_at_once)
        async with running(handler) as transport, udp_clients(1) as (device,):
            data = device_request("MESSAGE", branch="z9hG4bK-later", body=b"<Q/>")
            device.send(data, transport.port)
            await handler.wait_for_calls(1)
            if answers_at_once:
                await device.next()
            else:
                ((req, peer),) = handler.calls
                transport.send_response(response_to(req, 200, to_tag="srv"), peer)
                await device.next()
            device.send(data, transport.port)  # the device did not get the answer yet: it retransmits
            # Another request after it: once its answer is back, the retransmission has been dealt with.
            device.send(device_request("MESSAGE", branch="z9hG4bK-after", body=b"<Q/>"), transport.port)
            await handler.wait_for_calls(2)
            if not answers_at_once:
                transport.send_response(response_to(handler.calls[-1][0], 200, to_tag="srv"), peer)
            methods = [req.top_via.branch for req, _ in handler.calls]
            assert methods.count("z9hG4bK-later") == 1, (
                f"handler answering {'at once' if answers_at_once else 'later'} ran for {methods}"
            )


# -- dialogs -----------------------------------------------------------------------------------------------


async def test_a_bye_without_a_to_tag_is_not_routed_into_a_dialog_by_call_id_alone() -> None:
    # The transport routes a request without a To tag into the only dialog with that Call-ID, for any
    # method (the comment says it is for MediaStatus MESSAGEs of devices that drop the tag). A BYE (or INFO)
    # without a To tag is not in any dialog (RFC 3261 12.2.2: 481 or out-of-dialog handling), and the
    # Call-ID alone, which travels in clear text, becomes enough to end a download.
    main, dialog = Recorder(), Recorder()
    async with running(main) as transport, udp_clients(1) as (peer,):
        transport.add_dialog("call-dl", "srv-tag", dialog)
        # Control: a BYE with the dialog's To tag reaches the dialog.
        peer.send(
            device_request("BYE", branch="z9hG4bK-b1", call_id="call-dl", to_tag="srv-tag"), transport.port
        )
        await peer.next()
        assert [req.method for req, _ in dialog.calls] == ["BYE"]

        peer.send(
            device_request("BYE", branch="z9hG4bK-b2", call_id="call-dl", from_tag="intruder"), transport.port
        )
        await peer.next()
        assert [req.method for req, _ in dialog.calls] == ["BYE"], "a BYE without a To tag reached the dialog"


# -- TCP connections ---------------------------------------------------------------------------------------


async def test_one_source_address_cannot_take_every_tcp_connection_slot() -> None:
    # max_tcp_connections (1024 by default) is shared by every peer, the idle timeout (600 s) restarts with
    # every byte, and no message has a deadline: one host holds every slot for as long as it trickles, and
    # each slot may hold a partial 1 MiB body (1 GiB in all). Devices that use TCP are then refused.
    # (A plain per-address cap is not the whole fix: 4G recorders behind carrier NAT share addresses;
    # making room by dropping connections that never completed a message would pass this test too.)
    async def device_answered(attacker_connections: int) -> bool:
        async with running(Recorder(), limits=TransportLimits(max_tcp_connections=3)) as transport:
            held = [
                await asyncio.open_connection("127.0.0.1", transport.port)
                for _ in range(attacker_connections)
            ]
            try:
                async with asyncio.timeout(5):
                    while transport.open_connections < attacker_connections:
                        await asyncio.sleep(0.01)
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", transport.port, local_addr=("127.0.0.2", 0)
                )
                try:
                    writer.write(device_request("REGISTER", branch="z9hG4bK-reg", transport="TCP"))
                    parser = SipStreamParser()
                    async with asyncio.timeout(5):
                        while data := await reader.read(65536):
                            if parser.feed(data):
                                return True
                    return False  # accepted by the kernel, then closed by the transport
                except ConnectionResetError:
                    return False
                finally:
                    writer.close()
            finally:
                for _, held_writer in held:
                    held_writer.close()

    # Control: two idle connections from one address leave the device its slot.
    assert await device_answered(2)
    assert await device_answered(3), "three idle connections from 127.0.0.1 locked out a device at 127.0.0.2"


async def test_answered_transactions_do_not_hold_the_slots_that_refuse_devices_with_503() -> None:
    # Completed server transactions are remembered 64*T1 = 32 s for retransmissions and count against
    # max_server_transactions (4096) like running ones: 128 tiny datagrams a second with fresh branches,
    # from any (spoofable) source, make the platform answer 503 to every device's REGISTER and Keepalive,
    # so devices go offline. What is remembered only to absorb retransmissions could make room instead.
    async def device_status(flood: int) -> int:
        limits = TransportLimits(max_server_transactions=8)
        async with running(Recorder(), limits=limits) as transport, udp_clients(2) as (device, flooder):
            for i in range(flood):
                flooder.send(device_request("MESSAGE", branch=f"z9hG4bK-flood{i}"), transport.port)
                assert isinstance(answer := await flooder.next(), SipResponse) and answer.status == 200
            device.send(device_request("REGISTER", branch="z9hG4bK-device"), transport.port)
            answer = await device.next()
            assert isinstance(answer, SipResponse)
            return answer.status

    # Control: 7 answered requests leave the device its slot.
    assert await device_status(7) == 200
    assert await device_status(8) == 200, (
        "8 answered requests from another host made the device's REGISTER 503"
    )
