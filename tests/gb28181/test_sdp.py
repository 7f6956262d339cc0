"""SDP codec: the standard's Download example and the DVR's answer, device quirks, builders, hostile input."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.gb28181.sdp import (
    PS,
    Direction,
    MediaTransport,
    RtpMap,
    SdpError,
    SessionKind,
    Setup,
    answer_to,
    build_sdp,
    format_ssrc,
    history_offer,
    make_ssrc,
    parse_sdp,
    play_offer,
    with_ssrc,
)

# GB/T 28181-2016 J.17.3: the platform's Download offer (CRLF as on the wire).
DOWNLOAD_OFFER_J17 = (
    b"v=0\r\no=64010000002020000001 0 0 IN IP4 172.18.16.3\r\ns=Download\r\nu=64010000041310000345:3\r\n"
    b"c=IN IP4 172.18.16.3\r\nt=1288625085 1288625871\r\nm=video 6000 RTP/AVP 96 98 97\r\na=recvonly\r\n"
    b"a=rtpmap:96 PS/90000\r\na=rtpmap:98 H264/90000\r\na=rtpmap:97 MPEG4/90000\r\na=downloadspeed:4\r\n"
    b"y=1100000000\r\n"
)
# J.17.4: the DVR's 200 OK, free text in s=.
DOWNLOAD_ANSWER_J17 = (
    b"v=0\r\no=64010000041110000044 0 0 IN IP4 172.24.18.44\r\ns=EmbeddedNetDVR\r\nc=IN IP4 172.24.18.44\r\n"
    b"t=0 0\r\nm=video 9412 RTP/AVP 96 98\r\na=sendonly\r\na=rtpmap:96 PS/90000\r\na=rtpmap:98 H264/90000\r\n"
    b"a=filesize:10485760\r\ny=1100000000\r\n"
)


def test_the_standards_download_offer() -> None:
    offer = parse_sdp(DOWNLOAD_OFFER_J17)
    assert offer.kind is SessionKind.DOWNLOAD and offer.uri == "64010000041310000345:3"
    assert (offer.start_time, offer.stop_time) == (1288625085, 1288625871)
    assert offer.origin_user == "64010000002020000001" and offer.media_address() == "172.18.16.3"
    video = offer.video
    assert (video.kind, video.port, video.transport) == ("video", 6000, "RTP/AVP")
    assert video.payload_types == (96, 98, 97)
    assert video.rtpmap(96) == PS and video.rtpmap(98) == RtpMap(98, "H264", 90000)
    assert video.direction is Direction.RECVONLY and video.download_speed == 4 and not video.is_tcp
    assert offer.ssrc == 1100000000 and offer.ssrc_text == "1100000000"
    assert build_sdp(offer) == DOWNLOAD_OFFER_J17  # written back byte for byte


def test_the_dvrs_answer_with_filesize() -> None:
    answer = parse_sdp(DOWNLOAD_ANSWER_J17)
    assert answer.kind is None and answer.session_name == "EmbeddedNetDVR"
    assert answer.video.port == 9412 and answer.video.file_size_bytes == 10485760
    assert answer.video.direction is Direction.SENDONLY and answer.media_address() == "172.24.18.44"
    assert answer.ssrc == 1100000000
    assert build_sdp(answer) == DOWNLOAD_ANSWER_J17


def test_device_quirks_missing_or_odd_ssrc_extra_lines_lf_and_case() -> None:
    no_y = DOWNLOAD_ANSWER_J17.replace(b"y=1100000000\r\n", b"")
    assert parse_sdp(no_y).ssrc is None and parse_sdp(no_y).ssrc_text is None
    odd = DOWNLOAD_ANSWER_J17.replace(b"y=1100000000", b"y=0x1234")
    assert parse_sdp(odd).ssrc is None and parse_sdp(odd).ssrc_text == "0x1234"
    too_big = DOWNLOAD_ANSWER_J17.replace(b"y=1100000000", b"y=4294967296")
    assert parse_sdp(too_big).ssrc is None
    other = DOWNLOAD_ANSWER_J17.replace(b"y=1100000000", b"y=0200001234")
    assert parse_sdp(other).ssrc == 200001234
    quirky = (DOWNLOAD_OFFER_J17.replace(b"\r\n", b"\n").replace(b"s=Download", b"s=DoWnload")
              + b"f=v/2/4/25/1/4096a///\nb=AS:4096\na=stream:0\n\n\x00")
    offer = parse_sdp(quirky)
    assert offer.kind is SessionKind.DOWNLOAD and offer.format == "v/2/4/25/1/4096a///"
    assert offer.extra_lines == ("b=AS:4096",)
    assert ("stream", "0") in offer.video.attributes


def test_tcp_setup_and_connection_and_media_level_address() -> None:
    body = DOWNLOAD_ANSWER_J17.replace(b"RTP/AVP", b"TCP/RTP/AVP").replace(
        b"a=sendonly\r\n", b"c=IN IP4 10.0.0.9\r\na=sendonly\r\na=setup:ACTIVE\r\na=connection:new\r\n")
    answer = parse_sdp(body)
    assert answer.video.is_tcp and answer.video.setup is Setup.ACTIVE and answer.video.connection == "new"
    assert answer.media_address() == "10.0.0.9"  # the section's own c= wins over the session's


@pytest.mark.parametrize(("body", "complaint"), [
    (DOWNLOAD_OFFER_J17.replace(b"m=video 6000", b"m=video 70000"), "m= port 70000"),
    (DOWNLOAD_OFFER_J17.replace(b"96 98 97", b"96 98 200"), "payload type 200"),
    (DOWNLOAD_OFFER_J17.replace(b"m=video 6000 RTP/AVP 96 98 97\r\n", b""), "no m= line"),
    (DOWNLOAD_OFFER_J17.replace(b"a=recvonly", b"recvonly"), "not 'x=value'"),
    (DOWNLOAD_OFFER_J17.replace(b"t=1288625085 1288625871", b"t=yesterday"), "t= is not"),
    (DOWNLOAD_OFFER_J17.replace(b"c=IN IP4 172.18.16.3", b"c=IP4 x"), "c= is not"),
    (DOWNLOAD_OFFER_J17.replace(b"a=downloadspeed:4", b"a=downloadspeed:fast"), "downloadspeed"),
    (DOWNLOAD_OFFER_J17.replace(b"a=recvonly", b"a=setup:sideways"), "a=setup"),
    (DOWNLOAD_OFFER_J17.replace(b"v=0", b"v=1"), "expected v=0"),
    (DOWNLOAD_OFFER_J17 * 20, "exceeds"),
])
def test_malformed_sdp_names_what_was_wrong(body: bytes, complaint: str) -> None:
    with pytest.raises(SdpError, match=complaint):
        parse_sdp(body)


def test_ssrc_composition_and_format() -> None:
    # Annex F: first digit 1 for history, digits 4-8 of the domain id, 4-digit stream number.
    assert make_ssrc(history=True, domain_id="64010000002000000001", stream_number=1) == 1100000001
    live = make_ssrc(history=False, domain_id="34020000002000000001", stream_number=42)
    assert format_ssrc(live) == "0200000042"
    with pytest.raises(SdpError):
        format_ssrc(2**32)


def test_offers_and_the_simulators_answer_round_trip() -> None:
    offer = history_offer(SessionKind.DOWNLOAD, owner_id="34020000002000000001",
                          channel_id="34020000001320000001", address="192.0.2.1", port=30000,
                          ssrc=1200000001, start_time=1764900000,
                          stop_time=1764900600, transport=MediaTransport.TCP, setup=Setup.PASSIVE,
                          download_speed=4)
    body = build_sdp(offer)
    assert body == (
        b"v=0\r\no=34020000002000000001 0 0 IN IP4 192.0.2.1\r\ns=Download\r\nu=34020000001320000001:0\r\n"
        b"c=IN IP4 192.0.2.1\r\nt=1764900000 1764900600\r\nm=video 30000 TCP/RTP/AVP 96 98 97\r\n"
        b"a=recvonly\r\na=rtpmap:96 PS/90000\r\na=rtpmap:98 H264/90000\r\na=rtpmap:97 MPEG4/90000\r\n"
        b"a=setup:passive\r\na=connection:new\r\na=downloadspeed:4\r\ny=1200000001\r\n"
    )
    assert parse_sdp(body) == offer
    answer = answer_to(parse_sdp(body), owner_id="34020000001320000001", address="192.0.2.7", port=0,
                       ssrc=1200000001, file_size_bytes=123)
    parsed = parse_sdp(build_sdp(answer))
    assert parsed.video.setup is Setup.ACTIVE and parsed.video.direction is Direction.SENDONLY
    assert parsed.video.file_size_bytes == 123 and parsed.ssrc == 1200000001 and parsed.video.is_tcp
    assert parse_sdp(build_sdp(with_ssrc(answer, None))).ssrc is None
    live = play_offer(owner_id="34020000002000000001", address="192.0.2.1", port=30002, ssrc=200000002)
    parsed_live = parse_sdp(build_sdp(live))
    assert parsed_live.kind is SessionKind.PLAY and (parsed_live.start_time, parsed_live.stop_time) == (0, 0)
    assert parsed_live.uri is None and parsed_live.ssrc_text == "0200000002"
    with pytest.raises(SdpError, match="TCP offer needs a=setup"):
        play_offer(owner_id="1", address="192.0.2.1", port=1, ssrc=1, transport=MediaTransport.TCP)
    with pytest.raises(SdpError, match="Download only"):
        history_offer(SessionKind.PLAYBACK, owner_id="1", channel_id="2", address="192.0.2.1", port=1, ssrc=1,
                      start_time=0, stop_time=1, download_speed=2)


def test_a_line_break_cannot_be_smuggled_into_a_built_sdp() -> None:
    offer = play_offer(owner_id="34020000002000000001", address="192.0.2.1", port=30002, ssrc=1)
    from dataclasses import replace
    with pytest.raises(SdpError, match="line break"):
        build_sdp(replace(offer, session_name="Play\r\na=sendrecv"))


# -- hostile input: nothing escapes but SdpError -----------------------------------------------------------

SDP_PIECES = ["v=0", "o=1 0 0 IN IP4 1.2.3.4", "s=Play", "c=IN IP4 1.2.3.4", "t=0 0",
              "m=video 1 RTP/AVP 96",
              "a=rtpmap:96 PS/90000", "a=setup:passive", "a=downloadspeed:4", "a=filesize:1", "y=0100000001",
              "m=video", "a=rtpmap:", "a=rtpmap:96", "a=rtpmap:x PS/y", "c=", "o=", "t=1", "\x00", "=", "a="]


@settings(max_examples=400, deadline=None)
@given(st.one_of(
    st.binary(max_size=400),
    st.lists(st.one_of(st.sampled_from(SDP_PIECES), st.text(max_size=12)), max_size=30)
    .map(lambda lines: "\r\n".join(lines).encode("utf-8", "surrogatepass")),
))
def test_fuzzed_sdp_raises_only_sdp_error(body: bytes) -> None:
    with contextlib.suppress(SdpError):
        parse_sdp(body)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_real_sdp_raises_only_sdp_error(data: st.DataObject) -> None:
    body = bytearray(data.draw(st.sampled_from([DOWNLOAD_OFFER_J17, DOWNLOAD_ANSWER_J17])))
    for _ in range(data.draw(st.integers(1, 6))):
        body[data.draw(st.integers(0, len(body) - 1))] = data.draw(st.integers(0, 255))
    with contextlib.suppress(SdpError):
        parse_sdp(bytes(body))
