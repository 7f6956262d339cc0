"""A network camera streaming MPEG-TS over TCP (``tcp://HOST:PORT``, as ffmpeg reads it), from a file.

Each client gets the file from its beginning, paced so that it plays in `content_s` station seconds (times
`1 / speed`), with the faults a real camera shows:

* `connect_burst_s`: as it connects, the client gets the first that many seconds of video at once (an RTSP
  camera's or GB/T 28181 IPC's GOP cache / pre-buffer, sent as fast as the network allows: `burst_speed`
  stream seconds per station second, or as fast as the client takes it), then the rest in real time;
* `speed`: a camera whose stream runs faster than real time throughout (a clock that lies, a replayed
  recording): a sustained flood;
* a flood at normal timestamps (:func:`flooding_feed`, ``--flood-mbps``): the feed re-encoded at a constant
  bitrate far above what its picture needs (H.264 filler NAL units, as a CBR camera set to 200 Mbit/s
  sends), with the same frames and timestamps, served in real time: the stream's clock is honest, its
  bytes are not (review 29).

Pacing is by bytes (the file's size over its length), which is close enough for a constant-rate encode.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

TICK_S = 0.04


@dataclass(frozen=True)
class TsCameraConfig:
    """`content_s`: the file's length in seconds of video; `connect_burst_s`: seconds of it sent at once
    to each client as it connects, at `burst_speed` (None: as fast as the client takes them); `speed`:
    stream seconds per station second after that."""

    content_s: float
    connect_burst_s: float = 0.0
    speed: float = 1.0
    burst_speed: float | None = None

    def __post_init__(self) -> None:
        if not self.content_s > 0:
            raise ValueError(f"content_s must be above 0, got {self.content_s}")
        if not 0 <= self.connect_burst_s <= self.content_s:
            raise ValueError(f"connect_burst_s must be within 0..content_s ({self.content_s:g}), "
                             f"got {self.connect_burst_s}")
        if not self.speed > 0:
            raise ValueError(f"speed must be above 0, got {self.speed}")
        if self.burst_speed is not None and not self.burst_speed > 0:
            raise ValueError(f"burst_speed must be above 0, got {self.burst_speed}")


class TsCamera:
    """Serves `feed` (an MPEG-TS file's bytes) to each client (see the module docstring)."""

    def __init__(self, feed: bytes, config: TsCameraConfig) -> None:
        self.feed = feed
        self.config = config
        self.clients = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.clients += 1
        bytes_per_s = len(self.feed) / self.config.content_s
        per_tick = max(188, int(bytes_per_s * self.config.speed * TICK_S))
        burst_bytes = min(len(self.feed), int(bytes_per_s * self.config.connect_burst_s) // 188 * 188)
        burst_speed = self.config.burst_speed
        per_burst_tick = (burst_bytes if burst_speed is None
                          else max(188, int(bytes_per_s * burst_speed * TICK_S)))
        sent = 0
        try:
            while sent < len(self.feed):
                size = min(per_burst_tick, burst_bytes - sent) if sent < burst_bytes else per_tick
                writer.write(self.feed[sent:sent + size])
                await writer.drain()
                sent += size
                if sent < burst_bytes and burst_speed is None:
                    continue
                await asyncio.sleep(TICK_S)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> asyncio.Server:
        return await asyncio.start_server(self.serve, host, port)


def flooding_feed(feed: Path, out: Path, mbit_s: float, *, ffmpeg: str = "ffmpeg",
                  timeout_s: float = 600.0) -> bytes:
    """`feed` (MPEG-TS) re-encoded into `out` at `mbit_s` Mbit/s constant bitrate: x264's HRD in CBR mode
    pads every frame with filler NAL units, which a stream copy keeps. Same frames, same timestamps (the
    frame rate is the feed's), so only the bytes flood. Its bytes."""
    if not mbit_s > 0:
        raise ValueError(f"mbit_s must be above 0, got {mbit_s}")
    rate = f"{mbit_s:g}M"
    # Key frames where the feed has them: a camera's GOP, not x264's default of 250 frames (ffmpeg would
    # hold a whole GOP in memory and write it at once).
    subprocess.run([ffmpeg, "-v", "error", "-y", "-i", str(feed), "-map", "0", "-c:v", "libx264", "-preset",
                    "ultrafast", "-force_key_frames", "source", "-x264-params", "nal-hrd=cbr:filler=1",
                    "-b:v", rate, "-minrate", rate, "-maxrate", rate, "-bufsize", f"{mbit_s / 10:g}M",
                    "-c:a", "copy", "-f", "mpegts", str(out)],
                   check=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    return out.read_bytes()


async def _serve_forever(camera: TsCamera, host: str, port: int) -> None:
    server = await camera.start(host, port)
    log.info("ts camera on tcp://%s:%d", host, server.sockets[0].getsockname()[1])
    async with server:
        await server.serve_forever()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulators ts-camera",
                                     description=(__doc__ or "").split("\n")[0])
    parser.add_argument("feed", type=Path, help="an MPEG-TS file")
    parser.add_argument("--content-s", type=float, required=True, help="the file's length in seconds")
    parser.add_argument("--connect-burst-s", type=float, default=0.0, help="seconds sent at once on connect")
    parser.add_argument("--burst-speed", type=float, default=None,
                        help="stream seconds per second of the burst (default: as fast as the client takes)")
    parser.add_argument("--speed", type=float, default=1.0, help="stream seconds per second afterwards")
    parser.add_argument("--flood-mbps", type=float, default=None,
                        help="fault: serve the feed re-encoded at this many Mbit/s (filler), timestamps "
                        "unchanged: a flood at normal timestamps")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8554)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    try:
        config = TsCameraConfig(args.content_s, args.connect_burst_s, args.speed, args.burst_speed)
    except ValueError as exc:
        parser.error(str(exc))
    feed: bytes = args.feed.read_bytes()
    if args.flood_mbps is not None:
        if not args.flood_mbps > 0:
            parser.error(f"--flood-mbps must be above 0, got {args.flood_mbps}")
        with tempfile.TemporaryDirectory(prefix="ts-camera-") as work:
            feed = flooding_feed(args.feed, Path(work) / "flood.ts", args.flood_mbps)
    camera = TsCamera(feed, config)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(camera, args.host, args.port))
    return 0
