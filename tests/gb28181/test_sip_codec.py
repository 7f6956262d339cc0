"""The SIP codec against the standard's examples, what devices really send, and what must be refused."""

from __future__ import annotations

import pytest

from drivers.gb28181.digest import DigestChallenge
from drivers.gb28181.sip import (
    CSeq,
    Dialog,
    Headers,
    NameAddress,
    SipLimits,
    SipProtocolError,
    SipRequest,
    SipResponse,
    SipStreamParser,
    SipUri,
    Via,
    ack_for_non_2xx,
    canonical_header_name,
    parse_datagram,
    request,
    response_to,
    split_header_values,
)


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


# GB/T 28181-2016 Annex J.1 (register): the device's second REGISTER, with the standard's own spelling
# (no space after the colons of Authorization, folded onto one line here).
J1_REGISTER = crlf(
    "REGISTER sip:64010000002000000001@172.18.16.5:5060 SIP/2.0\n"
    "Via: SIP/2.0/UDP 172.18.16.3:5060;rport;branch=z9hG4bK1371463273\n"
    "From: <sip:64010000002020000001@172.18.16.5:5060>;tag=2043466181\n"
    "To: <sip:64010000002020000001@172.18.16.5:5060>\n"
    "Call-ID: 1011047669\n"
    "CSeq: 2 REGISTER\n"
    "Contact: <sip:64010000002020000001@172.18.16.3:5060>\n"
    'Authorization:Digest username="64010000002020000001",realm="64010000",nonce="6fe9ba44a76be22a",'
    'uri="sip:64010000002000000001@172.18.16.5:5060",response="9625d92d1bddea7a911926e0db054968",'
    "algorithm=MD5\n"
    "Max-Forwards: 70\n"
    "User-Agent: IP Camera\n"
    "Expires: 3600\n"
    "Content-Length: 0\n"
    "\n"
)

KEEPALIVE_BODY = (
    b'<?xml version="1.0"?>\r\n<Notify>\r\n<CmdType>Keepalive</CmdType>\r\n<SN>43</SN>\r\n'
    b"<DeviceID>64010000001110000001</DeviceID>\r\n<Status>OK</Status>\r\n</Notify>\r\n"
)
# J.12 (keepalive), with compact header forms as some firmware sends them.
KEEPALIVE_COMPACT = (
    crlf(
        "MESSAGE sip:64010000002000000001@6401000000 SIP/2.0\n"
        "v: SIP/2.0/UDP 172.18.16.3:5060;rport;branch=z9hG4bK1662137437\n"
        "f: <sip:64010000001110000001@6401000000>;tag=1447587047\n"
        "t: <sip:64010000002000000001@6401000000>\n"
        "i: 1409651916\n"
        "CSeq: 20 MESSAGE\n"
        "c: Application/MANSCDP+xml\n"
        "Max-Forwards: 70\n"
        "User-Agent: IP Camera\n"
        f"l: {len(KEEPALIVE_BODY)}\n"
        "\n"
    )
    + KEEPALIVE_BODY
)


def test_the_standards_register_is_parsed_field_by_field() -> None:
    msg = parse_datagram(J1_REGISTER)
    assert isinstance(msg, SipRequest)
    assert (msg.method, msg.uri) == ("REGISTER", "sip:64010000002000000001@172.18.16.5:5060")
    via = msg.top_via
    assert (via.transport, via.host, via.port) == ("UDP", "172.18.16.3", 5060)
    assert via.branch == "z9hG4bK1371463273" and via.wants_rport and via.rport is None
    assert msg.from_.tag == "2043466181" and msg.from_.sip_uri.user == "64010000002020000001"
    assert msg.to.tag is None
    assert msg.call_id == "1011047669"
    assert msg.cseq == CSeq(2, "REGISTER")
    assert msg.expires == 3600
    assert [str(c.sip_uri) for c in msg.contacts] == ["sip:64010000002020000001@172.18.16.3:5060"]
    assert str(msg.headers.get("authorization")).startswith('Digest username="64010000002020000001"')
    assert msg.body == b""


def test_the_standards_register_is_rebuilt_byte_for_byte_but_for_the_space_after_colons() -> None:
    msg = parse_datagram(J1_REGISTER)
    assert msg is not None
    assert msg.to_bytes() == J1_REGISTER.replace(b"Authorization:Digest", b"Authorization: Digest")
    assert parse_datagram(msg.to_bytes()) == msg


def test_compact_forms_are_expanded_and_the_body_is_exactly_content_length() -> None:
    msg = parse_datagram(KEEPALIVE_COMPACT)
    assert isinstance(msg, SipRequest)
    assert [name for name, _ in msg.headers][:6] == ["Via", "From", "To", "Call-ID", "CSeq", "Content-Type"]
    assert msg.call_id == "1409651916"
    assert msg.content_type == "Application/MANSCDP+xml"
    assert msg.body == KEEPALIVE_BODY
    rebuilt = msg.to_bytes()
    assert b"\r\nCall-ID: 1409651916\r\n" in rebuilt and b"\r\ni: " not in rebuilt
    assert parse_datagram(rebuilt) == msg


def test_what_devices_really_send_is_tolerated() -> None:
    sloppy = (
        b"\r\n\r\nmessage  sip:64010000002000000001@6401000000   sip/2.0\n"
        b"via:SIP / 2.0 / udp 10.0.0.7:5060 ; branch=z9hG4bK-1 ; RPORT\n"
        b"FROM:   <sip:64010000001110000001@6401000000>;TAG=abc   \n"
        b"to:<sip:64010000002000000001@6401000000>\n"
        b"call-id:  77@10.0.0.7\t\n"
        b"cseq:5   MESSAGE\n"
        b"X-Folded: first\n"
        b"   second\n"
        b"content-length:   3\n"
        b"\n"
        b"abc"
    )
    msg = parse_datagram(sloppy)
    assert isinstance(msg, SipRequest)
    assert msg.method == "MESSAGE"
    assert msg.top_via == Via("UDP", "10.0.0.7", 5060, (("branch", "z9hG4bK-1"), ("rport", None)))
    assert msg.from_.tag == "abc"
    assert msg.call_id == "77@10.0.0.7"
    assert msg.cseq == CSeq(5, "MESSAGE")
    assert msg.headers.get("x-folded") == "first second"
    assert msg.body == b"abc"


def test_repeated_and_comma_separated_headers_keep_every_value_in_order() -> None:
    msg = parse_datagram(
        crlf(
            "SIP/2.0 200 OK\n"
            "Via: SIP/2.0/UDP a.example:5060;branch=z9hG4bK1, SIP/2.0/TCP b.example;branch=z9hG4bK2\n"
            "Via: SIP/2.0/UDP c.example:5062;branch=z9hG4bK3;received=1.2.3.4;rport=4000\n"
            'Contact: "A, B" <sip:x@h1>;expires=60, <sip:y@h2;lr>\n'
            'WWW-Authenticate: Digest realm="r", nonce="n, not a second value"\n'
            "From: <sip:a@b>;tag=1\nTo: <sip:a@b>;tag=2\nCall-ID: c\nCSeq: 1 REGISTER\n"
            "Content-Length: 0\n\n"
        )
    )
    assert isinstance(msg, SipResponse) and (msg.status, msg.reason) == (200, "OK")
    assert [v.host for v in msg.vias] == ["a.example", "b.example", "c.example"]
    assert msg.vias[2].received == "1.2.3.4" and msg.vias[2].rport == 4000
    assert [(c.display, c.uri) for c in msg.contacts] == [("A, B", "sip:x@h1"), (None, "sip:y@h2;lr")]
    assert msg.contacts[0].params == (("expires", "60"),)
    assert msg.headers.get_all("WWW-Authenticate") == ['Digest realm="r", nonce="n, not a second value"']


def test_builders_produce_exactly_these_bytes() -> None:
    req = request(
        "message",
        "sip:64010000001110000001@10.0.0.7:5060",
        [
            ("v", "SIP/2.0/UDP 10.0.0.1:5060;rport;branch=z9hG4bKabc"),
            ("f", "<sip:p@d>;tag=9"),
            ("t", "<sip:64010000001110000001@d>"),
            ("i", "cid"),
            ("CSeq", "3 MESSAGE"),
            ("c", "Application/MANSCDP+xml"),
            ("Content-Length", "999"),
        ],
        b"<x/>",
    )
    assert req.to_bytes() == (
        b"MESSAGE sip:64010000001110000001@10.0.0.7:5060 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 10.0.0.1:5060;rport;branch=z9hG4bKabc\r\n"
        b"From: <sip:p@d>;tag=9\r\n"
        b"To: <sip:64010000001110000001@d>\r\n"
        b"Call-ID: cid\r\n"
        b"CSeq: 3 MESSAGE\r\n"
        b"Content-Type: Application/MANSCDP+xml\r\n"
        b"Content-Length: 4\r\n"
        b"\r\n<x/>"
    )
    ok = response_to(req, 200, to_tag="t1", headers=[("Expires", "3600")])
    assert ok.to_bytes() == (
        b"SIP/2.0 200 OK\r\n"
        b"Via: SIP/2.0/UDP 10.0.0.1:5060;rport;branch=z9hG4bKabc\r\n"
        b"From: <sip:p@d>;tag=9\r\n"
        b"To: <sip:64010000001110000001@d>;tag=t1\r\n"
        b"Call-ID: cid\r\n"
        b"CSeq: 3 MESSAGE\r\n"
        b"Expires: 3600\r\n"
        b"Content-Length: 0\r\n"
        b"\r\n"
    )
    # A 100 Trying never gets a tag, and an existing tag is kept.
    assert response_to(req, 100, to_tag="t1").to.tag is None
    tagged = parse_datagram(ok.to_bytes())
    assert isinstance(tagged, SipResponse)
    assert response_to(request("BYE", "sip:x@y", list(tagged.headers)), 200, to_tag="other").to.tag == "t1"


def test_builders_refuse_header_injection() -> None:
    with pytest.raises(ValueError, match="line break"):
        request("MESSAGE", "sip:a@b", [("Subject", "x\r\nVia: evil")])
    with pytest.raises(ValueError, match="not a token"):
        request("MESSAGE", "sip:a@b", [("Bad Name", "x")])
    with pytest.raises(ValueError, match="white space"):
        request("MESSAGE", "sip:a@b c", [])
    with pytest.raises(ValueError, match="line break"):
        SipResponse(status=200, reason="OK\r\nX: y")


def test_uris_and_name_addresses() -> None:
    uri = SipUri.parse("sip:64010000041310000345@[2001:db8::1]:5061;transport=tcp")
    assert (uri.user, uri.host, uri.port, uri.params) == (
        "64010000041310000345",
        "2001:db8::1",
        5061,
        (("transport", "tcp"),),
    )
    assert str(uri) == "sip:64010000041310000345@[2001:db8::1]:5061;transport=tcp"
    bare = NameAddress.parse("sip:64010000041310000345@3402000000;tag=77")
    assert (bare.uri, bare.tag) == ("sip:64010000041310000345@3402000000", "77")
    quoted = NameAddress.parse('"Cam <1>" <sip:a@b>;tag=x')
    assert (quoted.display, quoted.uri, quoted.tag) == ("Cam <1>", "sip:a@b", "x")
    assert str(NameAddress("sip:a@b").with_tag("t")) == "<sip:a@b>;tag=t"
    for bad in ("http://a", "sip:a@b:0", "sip:a@b:99999", "sip:a@b:x", "sip:@"):
        with pytest.raises(SipProtocolError):
            SipUri.parse(bad)


def test_header_names_are_canonical_and_lookups_ignore_case() -> None:
    assert canonical_header_name("i") == "Call-ID"
    assert canonical_header_name("CALL-ID") == "Call-ID"
    assert canonical_header_name("x-gb-ver") == "X-GB-Ver"
    assert canonical_header_name("X-Vendor") == "X-Vendor"
    headers = Headers.of([("l", "0"), ("cseq", "1 ACK")])
    assert headers.get("CONTENT-LENGTH") == "0" and headers.get("l") == "0" and "CSeq" in headers
    assert split_header_values('a, "b,c" <sip:x>, <sip:y,z>') == ["a", '"b,c" <sip:x>', "<sip:y,z>"]


HEAD = "From: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 MESSAGE\r\n"


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        (b"MESSAGE sip:a@b SIP/3.0\r\n\r\n", "request line"),
        (b"HELLO\r\n\r\n", "request line"),
        (b"SIP/2.0 99 Weird\r\n\r\n", "status line|below 100"),
        (b"SIP/2.0 abc OK\r\n\r\n", "status line"),
        (f"MESSAGE sip:a@b SIP/2.0\r\n{HEAD}Content-Length: 10\r\n\r\nshort".encode(), "carries 5 body"),
        (f"MESSAGE sip:a@b SIP/2.0\r\n{HEAD}Content-Length: -1\r\n\r\n".encode(), "not a decimal"),
        (f"MESSAGE sip:a@b SIP/2.0\r\n{HEAD}Content-Length: 0x10\r\n\r\n".encode(), "not a decimal"),
        (f"MESSAGE sip:a@b SIP/2.0\r\n{HEAD}l: 1\r\nContent-Length: 2\r\n\r\nab".encode(), "different"),
        (f"MESSAGE sip:a@b SIP/2.0\r\n{HEAD}Content-Length: 99999999\r\n\r\n".encode(), "above the limit"),
        (b"MESSAGE sip:a@b SIP/2.0\r\n no name\r\n\r\n", "starts with white space"),
        (b"MESSAGE sip:a@b SIP/2.0\r\nNo colon here\r\n\r\n", "expected 'Name: value'"),
        (b"MESSAGE sip:a@b SIP/2.0\r\n\xff\xfe\xff: x\r\n\r\n", "neither UTF-8"),
        # Found by the fuzzer: a bare CR in a value made the parsed message unbuildable (ValueError).
        (f"MESSAGE sip:a@b SIP/2.0\r\n{HEAD}Subject: a\rb\r\n\r\n".encode(), "bare CR"),
        (b"SIP/2.0 200 O\rK\r\n\r\n", "bare CR"),
    ],
)
def test_bad_messages_are_refused_naming_what_was_wrong(data: bytes, complaint: str) -> None:
    with pytest.raises(SipProtocolError, match=complaint):
        parse_datagram(data)


def test_semantic_errors_surface_when_the_field_is_read() -> None:
    msg = parse_datagram(
        f"MESSAGE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h:0\r\nExpires: soon\r\n{HEAD}\r\n".encode()
    )
    assert msg is not None
    with pytest.raises(SipProtocolError, match="port '0'"):
        _ = msg.top_via
    with pytest.raises(SipProtocolError, match="Expires 'soon'"):
        _ = msg.expires
    no_cseq = parse_datagram(b"MESSAGE sip:a@b SIP/2.0\r\nCSeq: one MESSAGE\r\n\r\n")
    assert no_cseq is not None
    with pytest.raises(SipProtocolError, match="CSeq 'one MESSAGE'"):
        _ = no_cseq.cseq
    with pytest.raises(SipProtocolError, match="missing Call-ID"):
        _ = no_cseq.call_id


def test_oversized_header_sections_and_header_counts_are_refused() -> None:
    limits = SipLimits(max_header_bytes=256, max_headers=4, max_body_bytes=16)
    long_head = b"MESSAGE sip:a@b SIP/2.0\r\nX: " + b"y" * 300 + b"\r\n\r\n"
    with pytest.raises(SipProtocolError, match="longer than 256") as raised:
        parse_datagram(long_head, limits)
    assert raised.value.status == 413
    many = b"MESSAGE sip:a@b SIP/2.0\r\n" + b"X: 1\r\n" * 5 + b"\r\n"
    with pytest.raises(SipProtocolError, match="5 header lines"):
        parse_datagram(many, limits)
    # Control: within the limits the same shapes parse.
    assert parse_datagram(b"MESSAGE sip:a@b SIP/2.0\r\n" + b"X: 1\r\n" * 4 + b"\r\n", limits) is not None


def test_a_datagram_of_crlf_is_a_keepalive_and_extra_bytes_after_the_body_are_dropped() -> None:
    assert parse_datagram(b"\r\n\r\n") is None
    assert parse_datagram(b"") is None
    msg = parse_datagram(f"MESSAGE sip:a@b SIP/2.0\r\n{HEAD}Content-Length: 2\r\n\r\nabEXTRA".encode())
    assert msg is not None and msg.body == b"ab"
    no_length = parse_datagram(f"MESSAGE sip:a@b SIP/2.0\r\n{HEAD}\r\nwhole rest".encode())
    assert no_length is not None and no_length.body == b"whole rest"


def _stream_of(*messages: bytes) -> bytes:
    return b"".join(messages)


def test_the_stream_parser_splits_coalesced_messages_and_joins_split_ones() -> None:
    one = parse_datagram(J1_REGISTER)
    two = parse_datagram(KEEPALIVE_COMPACT)
    assert one is not None and two is not None
    stream = b"\r\n\r\n" + one.to_bytes() + b"\r\n" + KEEPALIVE_COMPACT + one.to_bytes()
    whole = SipStreamParser().feed(stream)
    assert whole == [one, two, one]
    for chunk_size in (1, 2, 7, 64, 500):
        parser = SipStreamParser()
        got = []
        for i in range(0, len(stream), chunk_size):
            got += parser.feed(stream[i : i + chunk_size])
        assert got == [one, two, one], chunk_size
        assert parser.pings == 1 and parser.buffered_bytes == 0


def test_the_stream_parser_counts_crlf_pings_across_reads() -> None:
    parser = SipStreamParser()
    assert parser.feed(b"\r\n\r") == [] and parser.pings == 0
    assert parser.feed(b"\n\r\n\r\n") == [] and parser.pings == 2
    assert parser.feed(b"\n\n") == [] and parser.pings == 2  # LF-only blank lines are not RFC 5626 pings


def test_the_stream_parser_refuses_missing_content_length_and_stays_failed() -> None:
    parser = SipStreamParser()
    with pytest.raises(SipProtocolError, match="missing Content-Length on a stream"):
        parser.feed(f"MESSAGE sip:a@b SIP/2.0\r\n{HEAD}\r\n<xml/>".encode())
    with pytest.raises(SipProtocolError, match="already failed"):
        parser.feed(J1_REGISTER)
    assert parser.buffered_bytes == 0


def test_the_stream_parser_bounds_what_it_buffers() -> None:
    limits = SipLimits(max_header_bytes=128, max_headers=8, max_body_bytes=64)
    parser = SipStreamParser(limits)
    parser.feed(b"MESSAGE sip:a@b SIP/2.0\r\n")
    with pytest.raises(SipProtocolError, match="no end of header section within 128"):
        for _ in range(100):
            parser.feed(b"X-Junk: 0123456789\r\n")
    assert parser.buffered_bytes == 0
    body_parser = SipStreamParser(limits)
    with pytest.raises(SipProtocolError, match="Content-Length 65 is above the limit of 64"):
        body_parser.feed(b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 65\r\n\r\n")
    # Control: a body at the limit is accepted, and the parser holds it only until it is complete.
    ok = SipStreamParser(limits)
    assert ok.feed(b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 64\r\n\r\n" + b"x" * 63) == []
    assert ok.buffered_bytes == 63
    (msg,) = ok.feed(b"x")
    assert msg.body == b"x" * 64 and ok.buffered_bytes == 0


def test_the_ack_of_a_non_2xx_answer_follows_rfc_3261_17_1_1_3() -> None:
    invite = request(
        "INVITE",
        "sip:34020000001320000001@10.0.0.7:5060",
        [
            ("Via", "SIP/2.0/UDP 10.0.0.1:5060;rport;branch=z9hG4bKinv"),
            ("Route", "<sip:proxy.example;lr>"),
            ("From", "<sip:34020000002000000001@3402000000>;tag=p1"),
            ("To", "<sip:34020000001320000001@3402000000>"),
            ("Call-ID", "inv-1"),
            ("CSeq", "7 INVITE"),
            ("Subject", "34020000001320000001:1,34020000002000000001:0"),
        ],
        b"v=0\r\n",
    )
    busy = response_to(invite, 486, to_tag="dev")
    assert ack_for_non_2xx(invite, busy).to_bytes() == (
        b"ACK sip:34020000001320000001@10.0.0.7:5060 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 10.0.0.1:5060;rport;branch=z9hG4bKinv\r\n"
        b"From: <sip:34020000002000000001@3402000000>;tag=p1\r\n"
        b"To: <sip:34020000001320000001@3402000000>;tag=dev\r\n"
        b"Call-ID: inv-1\r\n"
        b"CSeq: 7 ACK\r\n"
        b"Route: <sip:proxy.example;lr>\r\n"
        b"Max-Forwards: 70\r\n"
        b"Content-Length: 0\r\n"
        b"\r\n"
    )


def test_a_dialog_from_a_2xx_builds_bye_and_ack_in_order() -> None:
    invite = request(
        "INVITE",
        "sip:34020000001320000001@3402000000",
        [
            ("Via", "SIP/2.0/UDP 10.0.0.1:5060;rport;branch=z9hG4bKinv"),
            ("From", '"platform" <sip:34020000002000000001@3402000000>;tag=p1'),
            ("To", "<sip:34020000001320000001@3402000000>"),
            ("Call-ID", "dl-1"),
            ("CSeq", "20 INVITE"),
        ],
    )
    ok = response_to(
        invite,
        200,
        to_tag="dev9",
        headers=[
            ("Contact", "<sip:34020000001320000001@192.168.1.64:5060>"),
            ("Record-Route", "<sip:p1.example;lr>, <sip:p2.example;lr>"),
        ],
    )
    dialog = Dialog.from_2xx(invite, ok)
    assert (dialog.call_id, dialog.local_tag, dialog.remote_tag) == ("dl-1", "p1", "dev9")
    assert dialog.ack().to_bytes() == (
        b"ACK sip:34020000001320000001@192.168.1.64:5060 SIP/2.0\r\n"
        b'From: "platform" <sip:34020000002000000001@3402000000>;tag=p1\r\n'
        b"To: <sip:34020000001320000001@3402000000>;tag=dev9\r\n"
        b"Call-ID: dl-1\r\n"
        b"CSeq: 20 ACK\r\n"
        b"Route: <sip:p2.example;lr>\r\n"
        b"Route: <sip:p1.example;lr>\r\n"
        b"Max-Forwards: 70\r\n"
        b"Content-Length: 0\r\n"
        b"\r\n"
    )
    dialog, bye = dialog.request("bye")
    assert (bye.method, bye.cseq, bye.uri) == (
        "BYE",
        CSeq(21, "BYE"),
        "sip:34020000001320000001@192.168.1.64:5060",
    )
    dialog, info = dialog.request("INFO", headers=[("Content-Type", "Application/MANSRTSP")], body=b"PAUSE")
    assert info.cseq == CSeq(22, "INFO") and info.body == b"PAUSE"
    assert dialog.ack().cseq == CSeq(20, "ACK")  # the ACK keeps the INVITE's number
    # Without a To tag there is no dialog; without a Contact the INVITE's URI is the target.
    with pytest.raises(SipProtocolError, match="To tag"):
        Dialog.from_2xx(invite, response_to(invite, 200))
    bare = Dialog.from_2xx(invite, response_to(invite, 200, to_tag="x"))
    assert bare.remote_target == invite.uri
    with pytest.raises(SipProtocolError, match="not 486"):
        Dialog.from_2xx(invite, response_to(invite, 486, to_tag="x"))


# J.1 again: the platform's challenge and its final answer, with the standard's spacing (none after the
# colons) and its GB-format Date (Beijing time, milliseconds).
J1_CHALLENGE = crlf(
    "SIP/2.0 401 Unauthorized\n"
    "To:<sip:64010000002020000001@172.18.16.5:5060>;tag=1739640193\n"
    "Via:SIP/2.0/UDP 172.18.16.3:5060;rport=5060;branch=z9hG4bK1371463273;received=172.18.16.3\n"
    "CSeq:1 REGISTER\n"
    "Call-ID:1011047669\n"
    "From:<sip:64010000002020000001@172.18.16.5:5060>;tag=2043466181\n"
    'WWW-Authenticate:Digest realm="64010000",nonce="6fe9ba44a76be22a"\n'
    "Content-Length:0\n"
    "\n"
)
J1_OK = crlf(
    "SIP/2.0 200 OK\n"
    "To:<sip:64010000002020000001@172.18.16.5:5060>;tag=217451228\n"
    "Contact:<sip:64010000002020000001@172.18.16.3:5060>\n"
    "Via:SIP/2.0/UDP 172.18.16.3:5060;rport=5060;branch=z9hG4bK1371463273;received=172.18.16.3\n"
    "CSeq:2 REGISTER\n"
    "Call-ID:1011047669\n"
    "From:<sip:64010000002020000001@172.18.16.5:5060>;tag=2043466181\n"
    "Date:2010-11-02T15:01:26.115\n"
    "Expires:3600\n"
    "Content-Length:0\n"
    "\n"
)


def test_the_standards_challenge_and_final_answer_parse_and_rebuild() -> None:
    challenge = parse_datagram(J1_CHALLENGE)
    assert isinstance(challenge, SipResponse) and (challenge.status, challenge.reason) == (
        401,
        "Unauthorized",
    )
    assert challenge.top_via.rport == 5060 and challenge.top_via.received == "172.18.16.3"
    www = DigestChallenge.parse(str(challenge.headers.get("WWW-Authenticate")))
    assert (www.realm, www.nonce, www.qop) == ("64010000", "6fe9ba44a76be22a", ())
    ok = parse_datagram(J1_OK)
    assert isinstance(ok, SipResponse) and ok.expires == 3600
    assert ok.headers.get("Date") == "2010-11-02T15:01:26.115"
    assert ok.to.tag == "217451228" and ok.cseq == CSeq(2, "REGISTER")
    # Rebuilt byte for byte but for the one space this codec writes after each header name's colon.
    for original, message in ((J1_CHALLENGE, challenge), (J1_OK, ok)):
        start, *header_lines = original.split(b"\r\n\r\n")[0].split(b"\r\n")
        spaced = [start] + [line.replace(b":", b": ", 1) for line in header_lines]
        assert message.to_bytes() == b"\r\n".join(spaced) + b"\r\n\r\n"


J17_SDP = crlf(
    "v=0\n"
    "o=64010000002020000001 0 0 IN IP4 172.18.16.3\n"
    "s=Download\n"
    "u=64010000041310000345:3\n"
    "c=IN IP4 172.18.16.3\n"
    "t=1288625085 1288625871\n"
    "m=video 6000 RTP/AVP 96 98 97\n"
    "a=recvonly\n"
    "a=rtpmap:96 PS/90000\n"
    "a=rtpmap:98 H264/90000\n"
    "a=rtpmap:97 MPEG4/90000\n"
    "a=downloadspeed:4\n"
    "y=1100000000\n"
)
# J.17 (download): the platform's INVITE carrying the standard's SDP offer, with the Subject of Annex K.
J17_INVITE = (
    crlf(
        "INVITE sip:64010000041310000345@172.18.16.5:5060 SIP/2.0\n"
        "Via: SIP/2.0/UDP 172.18.16.3:5060;rport;branch=z9hG4bK1826409727\n"
        "From: <sip:64010000002020000001@6401000000>;tag=1766478932\n"
        "To: <sip:64010000041310000345@6401000000>\n"
        "Call-ID: 306366781@172_18_16_3\n"
        "CSeq: 1 INVITE\n"
        "Contact: <sip:64010000002020000001@172.18.16.3:5060>\n"
        "Content-Type: APPLICATION/SDP\n"
        "Max-Forwards: 70\n"
        "Subject: 64010000041310000345:1100000000,64010000002020000001:0\n"
        f"Content-Length: {len(J17_SDP)}\n"
        "\n"
    )
    + J17_SDP
)


def test_the_standards_download_invite_parses_and_rebuilds_byte_for_byte() -> None:
    invite = parse_datagram(J17_INVITE)
    assert isinstance(invite, SipRequest) and invite.method == "INVITE"
    assert invite.content_type == "APPLICATION/SDP" and invite.body == J17_SDP
    assert invite.headers.get("s") == "64010000041310000345:1100000000,64010000002020000001:0"
    assert invite.to.sip_uri.user == "64010000041310000345"
    assert invite.to_bytes() == J17_INVITE
    (split,) = SipStreamParser().feed(J17_INVITE)
    assert split == invite
