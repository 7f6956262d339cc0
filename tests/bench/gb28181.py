"""GB/T 28181 media benchmark: K devices stream PS over RTP/UDP at 4 Mbit/s each into the agent's receivers.

    python tests/bench/gb28181.py [--streams 16] [--seconds 20] [--rate-mbit 4] [--json]

One H.264 file is encoded by ffmpeg first (1280x720, 25 fps, constant 4 Mbit/s, so the frame rate seen
by the receivers is the real one), muxed into GB/T 28181 PS by drivers/gb28181/ps.PsMuxer and cut into
RTP payloads of at most 1400 bytes (one timestamp per pack, marker on the last packet). A sender process
paces K streams at the rate each (5 ms ticks, sequence numbers, timestamps and SSRC per stream, the file
looped as needed) to K ports. Two contenders receive the same traffic, each in a process of its own so
that its CPU seconds and peak RSS are its own:

* `edge`: K `edge.gb28181.media` receivers (UDP, SSRC checked, reorder buffer, PS demuxer counting frames,
  raw PS written through the bounded buffer and a worker thread, fsync at the end), ended by their idle
  timeout once the senders stop;
* `baseline`: a plain Python reader: K UDP sockets in one `selectors` loop, each datagram's RTP payload
  (12-byte header dropped) appended to a buffered file, fsync at the end: the least any receiver written
  in Python must do.

Packets lost = sent - taken (for `edge`: packets whose payload reached the raw file; for the baseline:
datagrams read). While `edge` runs, a probe task measures how late the event loop wakes up (a blocking
write would show here): loop_lag_max_ms. The last line printed is one JSON object with, per contender,
cpu_s, cpu_s_per_stream_s, packets_sent, packets_lost, peak_rss_mb, loop_lag_max_ms (edge), and
`ratio` = edge's CPU per stream-second / the baseline's. Target (issue 10): 16 streams, no loss, the
agent under one core (cpu_s_per_stream_s * streams < 1). Not part of `make test`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pickle
import resource
import selectors
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

from drivers.gb28181.ps import Codec, PsMuxer  # noqa: E402

MTU_PAYLOAD = 1400
FRAME_TICKS = 3600
TICK_S = 0.005
SSRC_BASE = 1100000000
IDLE_S = 2.0
RTP_HEADER = struct.Struct("!BBHII")


# -- the media, once ------------------------------------------------------------------------------------


def make_payloads(folder: Path, rate_mbit: float) -> list[tuple[bool, int, bytes]]:
    """(marker, timestamp offset, payload) of 10 s of 4 Mbit/s H.264 as GB/T 28181 PS in RTP payloads."""
    es = folder / "v.h264"
    rate = f"{rate_mbit:g}M"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=25", "-t", "10",
         "-vf", "noise=alls=30:allf=t", "-c:v", "libx264", "-preset", "veryfast", "-g", "50", "-bf", "0",
         "-b:v", rate, "-minrate", rate, "-maxrate", rate, "-bufsize", rate, "-x264-params", "nal-hrd=cbr",
         "-pix_fmt", "yuv420p", "-bsf:v", "h264_mp4toannexb", "-f", "h264", str(es)],
        check=True, timeout=600,
    )
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-f", "h264", "-show_entries", "packet=size,pos,flags", "-of", "csv=p=0",
         str(es)], check=True, capture_output=True, text=True, timeout=120,
    ).stdout.split()
    data = es.read_bytes()
    muxer = PsMuxer(Codec.H264)
    payloads = []
    for i, line in enumerate(out):
        size, pos, flags = line.split(",")[:3]
        pack = muxer.video_frame(data[int(pos):int(pos) + int(size)], FRAME_TICKS * i, key="K" in flags)
        chunks = [pack[at:at + MTU_PAYLOAD] for at in range(0, len(pack), MTU_PAYLOAD)]
        payloads += [(j == len(chunks) - 1, FRAME_TICKS * i, chunk) for j, chunk in enumerate(chunks)]
    return payloads


# -- the sender process ---------------------------------------------------------------------------------


def run_sender(ports: list[int], payload_file: Path, seconds: float, rate_bps: float) -> dict[str, Any]:
    with payload_file.open("rb") as f:
        payloads: list[tuple[bool, int, bytes]] = pickle.load(f)
    span = payloads[-1][1] + FRAME_TICKS
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    streams = len(ports)
    sent = [0] * streams
    sent_bytes = [0] * streams
    index = [0] * streams
    start = time.monotonic()
    bytes_per_s = rate_bps / 8
    while (elapsed := time.monotonic() - start) < seconds:
        due = elapsed * bytes_per_s
        for n in range(streams):
            while sent_bytes[n] < due:
                loop, at = divmod(index[n], len(payloads))
                marker, ts, payload = payloads[at]
                header = RTP_HEADER.pack(0x80, 96 | (0x80 if marker else 0), index[n] % 65536,
                                         (ts + loop * span) % (1 << 32), SSRC_BASE + n)
                try:
                    sock.sendto(header + payload, ("127.0.0.1", ports[n]))
                except BlockingIOError:
                    continue
                index[n] += 1
                sent[n] += 1
                sent_bytes[n] += len(payload) + 12
        time.sleep(max(0.0, TICK_S - (time.monotonic() - start - elapsed)))
    return {"sent": sent, "seconds": time.monotonic() - start}


# -- the receivers ---------------------------------------------------------------------------------------


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of the process (the writer threads too)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_mb() -> float:
    """VmHWM: this process's own peak (ru_maxrss would carry the parent's peak across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise SystemExit("/proc/self/status has no VmHWM")


async def _edge_receivers(streams: int, spool: Path) -> dict[str, Any]:
    from edge.gb28181.media import MediaTransport, open_receiver

    receivers = [
        await open_receiver(MediaTransport.UDP, bind_host="127.0.0.1", port_range=(40000, 49999),
                            ssrc=SSRC_BASE + n, raw_path=spool / f"s{n}.ps", idle_timeout_s=IDLE_S,
                            max_bytes=1 << 34)
        for n in range(streams)
    ]
    print(json.dumps({"ports": [r.local_port for r in receivers]}), flush=True)
    lags: list[float] = []
    stop = asyncio.Event()

    async def probe_lag() -> None:
        while not stop.is_set():
            before = time.monotonic()
            await asyncio.sleep(0.01)
            lags.append(time.monotonic() - before - 0.01)

    prober = asyncio.create_task(probe_lag())
    cpu_before = _cpu_s()
    outcomes = [await r.wait_closed() for r in receivers]
    cpu = _cpu_s() - cpu_before
    stop.set()
    await prober
    return {
        "cpu_s": cpu,
        "taken": [o.packets for o in outcomes],
        "gaps": sum(len(o.gaps) for o in outcomes),
        "video_frames": sum(o.video_frames for o in outcomes),
        "bytes": sum(o.bytes for o in outcomes),
        "ended": sorted({str(o.ended) for o in outcomes}),
        "loop_lag_max_ms": round(max(lags) * 1000, 2),
        "loop_lag_p99_ms": round(sorted(lags)[int(len(lags) * 0.99)] * 1000, 2),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }


def _baseline_receivers(streams: int, spool: Path) -> dict[str, Any]:
    selector = selectors.DefaultSelector()
    socks, files, taken = [], [], [0] * streams
    for n in range(streams):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        socks.append(sock)
        files.append((spool / f"b{n}.ps").open("wb", buffering=256 * 1024))
        selector.register(sock, selectors.EVENT_READ, n)
    print(json.dumps({"ports": [s.getsockname()[1] for s in socks]}), flush=True)
    cpu_before = _cpu_s()
    last = time.monotonic()
    started = False
    while True:
        events = selector.select(timeout=0.2)
        if not events and started and time.monotonic() - last > IDLE_S:
            break
        for key, _ in events:
            n = key.data
            sock = socks[n]
            while True:
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    break
                files[n].write(memoryview(data)[12:])
                taken[n] += 1
            started, last = True, time.monotonic()
    for f in files:
        f.flush()
        os.fsync(f.fileno())
        f.close()
    cpu = _cpu_s() - cpu_before
    return {"cpu_s": cpu, "taken": taken, "peak_rss_mb": round(_peak_rss_mb(), 1)}


# -- the run ---------------------------------------------------------------------------------------------


def _contender(impl: str, streams: int, payloads: Path, seconds: float, rate_bps: float,
               work: Path) -> dict[str, Any]:
    spool = work / impl
    spool.mkdir()
    me = [sys.executable, str(Path(__file__).resolve())]
    receiver = subprocess.Popen([*me, "--role", f"receiver-{impl}", "--streams", str(streams), "--spool",
                                 str(spool)], stdout=subprocess.PIPE, text=True)
    assert receiver.stdout is not None
    ports = json.loads(receiver.stdout.readline())["ports"]
    sender = subprocess.run([*me, "--role", "sender", "--ports", ",".join(map(str, ports)), "--payloads",
                             str(payloads), "--seconds", str(seconds), "--rate-bps", str(rate_bps)],
                            check=True, capture_output=True, text=True)
    sent = json.loads(sender.stdout.strip().splitlines()[-1])
    result = json.loads(receiver.stdout.read().strip().splitlines()[-1])
    if receiver.wait() != 0:
        raise SystemExit(f"the {impl} receivers failed")
    stream_seconds = streams * sent["seconds"]
    lost = sum(s - t for s, t in zip(sent["sent"], result.pop("taken"), strict=True))
    return {**result, "packets_sent": sum(sent["sent"]), "packets_lost": lost,
            "cpu_s": round(result["cpu_s"], 3),
            "cpu_s_per_stream_s": round(result["cpu_s"] / stream_seconds, 5),
            "cores_for_all_streams": round(result["cpu_s"] / sent["seconds"], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate-mbit", type=float, default=4.0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--role", default="main", help=argparse.SUPPRESS)
    parser.add_argument("--spool", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--ports", help=argparse.SUPPRESS)
    parser.add_argument("--payloads", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--rate-bps", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "sender":
        ports = [int(p) for p in args.ports.split(",")]
        print(json.dumps(run_sender(ports, args.payloads, args.seconds, args.rate_bps)))
        return
    if args.role == "receiver-edge":
        print(json.dumps(asyncio.run(_edge_receivers(args.streams, args.spool))))
        return
    if args.role == "receiver-baseline":
        print(json.dumps(_baseline_receivers(args.streams, args.spool)))
        return
    rate_bps = args.rate_mbit * 1e6
    with tempfile.TemporaryDirectory(prefix="bench-gb28181-") as tmp:
        work = Path(tmp)
        payloads = make_payloads(work, args.rate_mbit)
        payload_file = work / "payloads.pickle"
        with payload_file.open("wb") as f:
            pickle.dump(payloads, f)
        edge = _contender("edge", args.streams, payload_file, args.seconds, rate_bps, work)
        baseline = _contender("baseline", args.streams, payload_file, args.seconds, rate_bps, work)
    summary = {
        "streams": args.streams, "seconds": args.seconds, "rate_mbit_per_stream": args.rate_mbit,
        "edge": edge, "baseline": baseline,
        "cpu_s_per_stream_s": edge["cpu_s_per_stream_s"], "packets_lost": edge["packets_lost"],
        "peak_rss_mb": edge["peak_rss_mb"],
        "ratio": round(edge["cpu_s_per_stream_s"] / baseline["cpu_s_per_stream_s"], 2)
        if baseline["cpu_s_per_stream_s"] else None,
        "under_one_core": edge["cores_for_all_streams"] < 1.0,
    }
    if not args.json:
        for name in ("edge", "baseline"):
            r = summary[name]
            print(f"{name:9} cpu {r['cpu_s']:.2f} s = {r['cores_for_all_streams']:.3f} cores for "
                  f"{args.streams} streams, lost {r['packets_lost']}/{r['packets_sent']}, "
                  f"peak RSS {r['peak_rss_mb']} MiB")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
