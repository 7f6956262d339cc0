"""`python -m simulators gb28181-device ...`: run one simulated GB/T 28181 device until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

from .device import SimulatedDevice
from .media import MediaError, generate_recordings
from .settings import DeviceSettings, SettingsError, SipTransportKind, parse_faults


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {text!r}")
    return host, int(port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simulators gb28181-device",
        description="A GB/T 28181 device (4G body-worn recorder or IPC) over real sockets: registers with "
        "digest, keeps alive, answers Catalog/DeviceInfo/DeviceStatus/RecordInfo, streams its files as "
        "PS over RTP for Play/Playback/Download. See the simulators.gb28181 docstring for the faults.")
    parser.add_argument("--platform", type=_host_port, required=True, help="the platform's SIP HOST:PORT")
    parser.add_argument("--platform-id", required=True, help="the platform's 20-digit SIP id")
    parser.add_argument("--device-id", required=True, help="this device's 20-digit SIP id")
    parser.add_argument("--password-file", type=Path, required=True,
                        help="file holding the digest password (first line)")
    parser.add_argument("--media-dir", type=Path, help="directory of recordings (MP4 or raw H.264/H.265)")
    parser.add_argument("--transport", choices=[t.value for t in SipTransportKind], default="udp",
                        help="SIP over udp or tcp (default udp)")
    parser.add_argument("--domain", help="SIP domain (default: the platform id's first 10 digits)")
    parser.add_argument("--bind", default="127.0.0.1", help="local address for SIP and media")
    parser.add_argument("--sip-port", type=int, default=0, help="local SIP port (default: any free)")
    parser.add_argument("--contact-host", help="address put in Via and Contact (e.g. a 4G private address)")
    parser.add_argument("--media-host", help="address put in SDP answers (default: --bind)")
    parser.add_argument("--ignore-date", action="store_true",
                        help="do not set the clock from the REGISTER 200's Date header")
    parser.add_argument("--expires", type=int, default=3600, help="REGISTER Expires in seconds")
    parser.add_argument("--keepalive-interval", type=float, default=60.0, help="seconds between keepalives")
    parser.add_argument("--register-retry", type=float, default=60.0, help="seconds before a retry")
    parser.add_argument("--clock-offset", type=float, default=0.0, help="device clock error in seconds")
    parser.add_argument("--utc-offset", type=int, default=8 * 3600, help="device local time minus UTC, s")
    parser.add_argument("--records-per-message", type=int, default=10, help="RecordInfo items per MESSAGE")
    parser.add_argument("--generate", type=int, default=0, metavar="N",
                        help="first make N recordings (ffmpeg test pattern, H.264 + AAC) in --media-dir, "
                        "ending now by the device's clock")
    parser.add_argument("--live-file", type=Path, help="the file Play loops (default: first recording)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the packet faults")
    parser.add_argument("--fault", action="extend", nargs="+", default=[], metavar="NAME[=P]",
                        help="faults (several after one --fault, or --fault repeated): wrong-password, "
                        "no-121, different-y, missing-y, "
                        "ssrc-mismatch, loss=P, reorder=P, duplicate=P, nat-rebind, gb2312-name, "
                        "split-recordinfo, slow, die-mid-stream, stall=SECONDS, audio-drop=SECONDS, "
                        "late-stall=SECONDS, keepalive-only=SECONDS")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


async def _serve(device: SimulatedDevice) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    runner = asyncio.ensure_future(device.run())
    await device.started()
    print(f"gb28181-device {device.settings.device_id} SIP port {device.sip_port}", flush=True)
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
    await device.close()
    stopper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await runner


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        password = args.password_file.read_text(encoding="utf-8").splitlines()[0].strip()
    except (OSError, IndexError, UnicodeDecodeError) as exc:
        parser.error(f"--password-file: cannot read a password: {exc}")
    try:
        settings = DeviceSettings(
            platform_host=args.platform[0], platform_port=args.platform[1], platform_id=args.platform_id,
            device_id=args.device_id, password=password, media_dir=args.media_dir, domain=args.domain,
            transport=SipTransportKind(args.transport), bind_host=args.bind, sip_port=args.sip_port,
            register_expires_s=args.expires, register_retry_s=args.register_retry,
            keepalive_interval_s=args.keepalive_interval, clock_offset_s=args.clock_offset,
            utc_offset_s=args.utc_offset, records_per_message=args.records_per_message,
            live_file=args.live_file, seed=args.seed, faults=parse_faults(args.fault),
            contact_host=args.contact_host, media_host=args.media_host, accept_date=not args.ignore_date)
    except SettingsError as exc:
        parser.error(str(exc))
    if args.generate:
        if settings.media_dir is None:
            parser.error("--generate needs --media-dir")
        spacing = timedelta(minutes=10)
        now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
        local_now = now + timedelta(seconds=settings.utc_offset_s + settings.clock_offset_s)
        try:
            generate_recordings(settings.media_dir, args.generate, start=local_now - args.generate * spacing,
                                spacing=spacing)
        except MediaError as exc:
            parser.error(f"--generate: {exc}")
    if settings.media_dir is not None and not settings.media_dir.is_dir():
        parser.error(f"--media-dir {settings.media_dir} is not a directory")
    asyncio.run(_serve(SimulatedDevice(settings)))
    return 0
