"""Review 12: the RTP reorder buffer against one stray packet far ahead of the stream.

A packet whose sequence number is far ahead (a spoofed UDP packet with the session's SSRC, which Annex F
makes guessable: "1" + five domain digits + a four-digit stream number; a packet of an old session still
arriving at the port, wvp #208; a corrupted header) makes the buffer give up everything between as lost
and then drop every genuine packet that follows as `Late`, until the stream reaches the stray number. RFC
3550 Appendix A.1 treats a jump beyond MAX_DROPOUT as a restart only once the next packet confirms it.
"""

from __future__ import annotations

from drivers.gb28181.rtp import Delivered, Duplicate, ReorderBuffer, ReorderEvent, RtpPacket


def packet(sequence: int) -> RtpPacket:
    return RtpPacket(payload_type=96, sequence=sequence & 0xFFFF, timestamp=0, ssrc=1100000001, payload=b"ps")


def genuine_delivered(stray: int | None) -> tuple[int, ReorderBuffer]:
    buffer = ReorderBuffer()
    events: list[ReorderEvent] = []
    for sequence in range(1000, 1100):
        events += buffer.push(packet(sequence))
    if stray is not None:
        events += buffer.push(packet(stray))
    for sequence in range(1100, 1400):
        events += buffer.push(packet(sequence))
    events += buffer.flush()
    delivered = sum(1 for e in events if isinstance(e, Delivered) and 1100 <= e.index < 1400)
    return delivered, buffer


def test_one_stray_packet_far_ahead_does_not_discard_the_genuine_stream() -> None:
    # Control: without the stray packet all 300 genuine packets after sequence 1100 are delivered.
    assert genuine_delivered(None)[0] == 300

    # One packet 20 000 ahead: today 20 000 packets are reported lost and the 300 genuine ones that follow
    # are dropped as Late (at 4 Mbit/s, ~350 packets/s: a minute of evidence for one datagram).
    delivered, buffer = genuine_delivered(1100 + 20_000)
    assert delivered == 300, f"{delivered} of 300 delivered; stats {buffer.stats}"


def test_the_streams_first_packet_reordered_past_the_startup_hold_is_not_called_a_duplicate() -> None:
    # The buffer holds the first 8 packets to find where the stream starts. A first packet reordered
    # behind 8 others (a burst at 4x download speed over 4G) is then "before the start": it is dropped and
    # counted as a Duplicate, though it was never seen, so its loss is recorded nowhere (no Gap, no Late)
    # and the recording silently starts one packet late (often the pack header, PSM and IDR start).
    def events_for(order: list[int]) -> list[ReorderEvent]:
        buffer = ReorderBuffer()
        events: list[ReorderEvent] = []
        for sequence in order:
            events += buffer.push(packet(sequence))
        return events + buffer.flush()

    # Control: a real duplicate of an early packet is reported as one.
    control = events_for([10, 11, 12, 13, 14, 15, 16, 17, 11, 18])
    assert [type(e).__name__ for e in control].count("Duplicate") == 1

    events = events_for([10, 11, 12, 13, 14, 15, 16, 17, 9, 18])
    delivered = [e.index for e in events if isinstance(e, Delivered)]
    reported = [e for e in events if not isinstance(e, Delivered)]
    assert 9 in delivered or any(not isinstance(e, Duplicate) for e in reported), (
        f"packet 9, never seen before, was reported as {reported}"
    )


def test_a_device_that_restarts_its_sequence_numbers_lower_keeps_being_recorded() -> None:
    # Devices restart RTP numbering when their encoder or the file being sent changes. A restart to a
    # number below the current one (within 32767 behind) makes every later packet "earlier than the next
    # expected": each is dropped and counted as a Duplicate, which no one reads as loss, until the new
    # numbering catches up with the old (up to 32767 packets, ~90 s at 4 Mbit/s). No Gap is reported.
    def delivered_after_restart(restart_at: int) -> tuple[int, ReorderBuffer]:
        buffer = ReorderBuffer()
        events: list[ReorderEvent] = []
        for sequence in range(30_000, 30_100):
            events += buffer.push(packet(sequence))
        for sequence in range(restart_at, restart_at + 300):
            events += buffer.push(packet(sequence))
        events += buffer.flush()
        return sum(
            1 for e in events if isinstance(e, Delivered) and e.index not in range(30_000, 30_100)
        ), buffer

    # Control: a restart upwards (a jump ahead that the stream then follows) keeps delivering. (A fix in
    # the manner of RFC 3550 A.1, which confirms a restart with its second packet, may lose the first.)
    assert delivered_after_restart(40_000)[0] >= 299
    delivered, buffer = delivered_after_restart(0)
    assert delivered >= 299, f"{delivered} of 300 packets after the restart delivered; stats {buffer.stats}"
