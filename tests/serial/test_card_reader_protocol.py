"""The card reader codec against the documented RDM6300 examples, and hostile byte streams."""

from __future__ import annotations

import random

import pytest

from drivers.serial.card_reader_protocol import (
    CardFrameDecoder,
    CardFraming,
    CardRead,
    CardReaderProtocolError,
    encode_hex_line,
    encode_stx_frame,
    xor_checksum,
)

# Documented reads of RDM6300 modules (CARD_READER_PROTOCOL.md §2): the bytes on the wire and the tag.
SEEED_EXAMPLE = bytes.fromhex("02 30 31 30 30 30 37 33 34 45 30 44 32 03")  # 01 00 07 34 E0, sum D2
HOBBY_EXAMPLE = bytes.fromhex("02 31 30 30 30 38 36 46 34 34 34 32 36 03")  # 10 00 86 F4 44, sum 26


def stx(uid: str) -> CardRead:
    return CardRead(uid, CardFraming.STX_FRAME)


def line(uid: str) -> CardRead:
    return CardRead(uid, CardFraming.HEX_LINE)


def test_the_documented_frames_decode_and_encode_byte_for_byte() -> None:
    assert CardFrameDecoder().feed(SEEED_EXAMPLE) == [stx("01000734E0")]
    assert CardFrameDecoder().feed(HOBBY_EXAMPLE) == [stx("100086F444")]
    assert encode_stx_frame("01000734E0") == SEEED_EXAMPLE
    assert encode_stx_frame("100086f444") == HOBBY_EXAMPLE
    # The card number printed on the fob is the decimal of the 4 id bytes (the forum's example).
    assert int("0086F444", 16) == 8844356
    assert xor_checksum(bytes.fromhex("01000734E0")) == 0xD2


def test_a_frame_whose_checksum_does_not_match_is_dropped() -> None:
    # A module that sent 02 00 4D B0 05 with checksum FC (the XOR is FA): a misread, not a card.
    decoder = CardFrameDecoder()
    assert decoder.feed(b"\x020200 4DB005FC\x03".replace(b" ", b"")) == []
    assert decoder.bad_frames == 1
    # Control: the same data with the right checksum reads.
    assert decoder.feed(encode_stx_frame("02004DB005")) == [stx("02004DB005")]


@pytest.mark.parametrize("uid", ["04A21B7C", "01000734E0", "04A21B7C112233", "04A21B7C11223344556F"])
def test_hex_lines_of_every_uid_length_decode_with_any_line_end(uid: str) -> None:
    for end in (b"\r\n", b"\r", b"\n"):
        assert CardFrameDecoder().feed(uid.lower().encode() + end) == [line(uid)]
    assert encode_hex_line(uid) == uid.encode() + b"\r\n"


def test_any_chunking_gives_the_same_reads() -> None:
    stream = SEEED_EXAMPLE + b"04A21B7C\r\n" + HOBBY_EXAMPLE + b"04A21B7C112233\n"
    expected = [stx("01000734E0"), line("04A21B7C"), stx("100086F444"), line("04A21B7C112233")]
    rng = random.Random(7)
    for _ in range(50):
        decoder, reads, position = CardFrameDecoder(), [], 0
        while position < len(stream):
            size = rng.randint(1, 5)
            reads += decoder.feed(stream[position:position + size])
            position += size
        assert reads == expected


@pytest.mark.parametrize(("noise", "why"), [
    (b"0123456\r\n", "7 digits: no UID length"),
    (b"0123456789ABCDEF0123456789\r\n", "26 digits: overlong, and its tail is no UID"),
    (b"04A2\xff1B7C\r\n", "a foreign byte inside a line"),
    (b"junk 04A21B7C\r\n", "digits after noise on the same line"),
    (b"\x0201000734E0D2D2\x03", "an STX frame with two digits too many"),
    (b"\x0201000734E0\x03", "an STX frame without checksum"),
    (b"\x0201000734\r\n", "a line end inside an STX frame"),
    (b"04A21B7C\x03", "a hex line ended by ETX"),
])
def test_hostile_bytes_give_no_read_and_the_next_good_frame_reads(noise: bytes, why: str) -> None:
    decoder = CardFrameDecoder()
    assert decoder.feed(noise) == [], why
    assert decoder.bad_frames + decoder.junk_bytes > 0
    assert decoder.feed(b"\r\n" + SEEED_EXAMPLE) == [stx("01000734E0")]


def test_a_frame_cut_by_a_new_stx_is_dropped_and_the_new_one_reads() -> None:
    decoder = CardFrameDecoder()
    assert decoder.feed(SEEED_EXAMPLE[:7] + HOBBY_EXAMPLE) == [stx("100086F444")]
    assert decoder.bad_frames == 1


def test_random_noise_never_crashes_and_memory_stays_bounded() -> None:
    rng = random.Random(11)
    decoder = CardFrameDecoder()
    for _ in range(2000):
        decoder.feed(bytes(rng.randrange(256) for _ in range(rng.randint(1, 64))))
        assert len(decoder._buffer) <= 20
    assert decoder.feed(b"\r\n" + HOBBY_EXAMPLE) == [stx("100086F444")]


@pytest.mark.parametrize("uid", ["04A21B7", "XYZ", "01000734E0FF"])
def test_encoders_refuse_what_the_framing_cannot_carry(uid: str) -> None:
    with pytest.raises(CardReaderProtocolError):
        encode_stx_frame(uid)
