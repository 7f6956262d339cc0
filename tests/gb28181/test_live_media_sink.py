"""The media receiver's sink (edge.gb28181.media), the seam live Play uses: the PS bytes as received, in
order after the reorder buffer, to a callable instead of (or beside) the raw file. Real receiver, real UDP
and TCP sockets, packets swapped in flight."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.gb28181.ps import Codec
from edge.gb28181.media import MediaError, open_receiver
from tests.prerequisites import require

from .media_sender import HAVE_FFMPEG, make_source, ps_packs, reorder, rtp_packets, send_tcp, send_udp

SSRC = 200001234


@pytest.fixture(scope="module")
def packs(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[bytes, int]]:
    require(HAVE_FFMPEG, "needs ffmpeg")
    return ps_packs(make_source(tmp_path_factory.mktemp("sink"), Codec.H264, seconds=2, audio=False))


async def test_the_sink_gets_the_ps_in_order_and_the_same_bytes_as_the_raw_file(
        packs: list[tuple[bytes, int]], tmp_path: Path) -> None:
    taken: list[bytes] = []
    receiver = await open_receiver("udp", bind_host="127.0.0.1", port_range=(31000, 31999), ssrc=SSRC,
                                   raw_path=tmp_path / "raw.ps", idle_timeout_s=5, max_bytes=1 << 30,
                                   sink=taken.append)
    packets = rtp_packets(packs, ssrc=SSRC)
    await send_udp(reorder(packets, seed=7), receiver.local_port)  # swapped in flight, put back in order
    outcome = await receiver.close()
    whole = b"".join(pack for pack, _ in packs)
    assert outcome.lost_packets == 0 and outcome.packets == len(packets)
    assert b"".join(taken) == whole == (tmp_path / "raw.ps").read_bytes()


async def test_without_a_raw_file_nothing_is_written_and_no_size_limit_applies(
        packs: list[tuple[bytes, int]], tmp_path: Path) -> None:
    taken: list[bytes] = []
    whole = b"".join(pack for pack, _ in packs)
    receiver = await open_receiver("tcp-passive", bind_host="127.0.0.1", port_range=(31000, 31999),
                                   ssrc=SSRC, raw_path=None, idle_timeout_s=5, max_bytes=len(whole) // 4,
                                   sink=taken.append)
    await send_tcp(rtp_packets(packs, ssrc=SSRC), receiver.local_port)
    outcome = await receiver.wait_closed()
    assert str(outcome.ended) == "closed" and b"".join(taken) == whole
    assert list(tmp_path.iterdir()) == []
    # The control: with a raw file, the same max_bytes cuts the session off.
    limited = await open_receiver("tcp-passive", bind_host="127.0.0.1", port_range=(31000, 31999),
                                  ssrc=SSRC, raw_path=tmp_path / "raw.ps", idle_timeout_s=5,
                                  max_bytes=len(whole) // 4)
    await send_tcp(rtp_packets(packs, ssrc=SSRC), limited.local_port)
    assert str((await limited.wait_closed()).ended) == "limit"


async def test_a_receiver_with_neither_file_nor_sink_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="needs a raw file or a sink"):
        await open_receiver("udp", bind_host="127.0.0.1", port_range=(31000, 31999), ssrc=SSRC,
                            raw_path=None, idle_timeout_s=5, max_bytes=1 << 20)


async def test_a_failing_sink_ends_the_session_with_its_reason(packs: list[tuple[bytes, int]]) -> None:
    def broken(data: bytes) -> None:
        raise ValueError("consumer bug")

    receiver = await open_receiver("udp", bind_host="127.0.0.1", port_range=(31000, 31999), ssrc=SSRC,
                                   raw_path=None, idle_timeout_s=5, max_bytes=1 << 20, sink=broken)
    await send_udp(rtp_packets(packs, ssrc=SSRC)[:10], receiver.local_port)
    outcome = await receiver.wait_closed()
    assert str(outcome.ended) == "error" and "consumer failed: consumer bug" in outcome.detail
