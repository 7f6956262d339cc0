"""`python -m simulators recorder ...`: run the simulated recorder bus, and plug/unplug/list on it."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from simulators.recorder.bus import BusClient, BusClientError, RecorderBus, RecorderBusServer, RecorderSpec
from simulators.recorder.device import FirmwareFault, UsbSerialFault

logger = logging.getLogger(__name__)

PASSWORD_ENV = "EE_SIM_RECORDER_PASSWORD"
DEFAULT_PASSWORD = "000000"  # the GA/T vendors' factory default, which real recorders ship with

OFFICERS = ("张伟", "王芳", "李娜", "刘洋", "陈静", "杨勇", "赵磊", "黄敏", "周杰", "吴婷")
UNIT_CODE = "330100000000"
UNIT_NAME = "杭州市公安局"

_DESCRIPTION = """\
Simulated USB bus of EE-ZFY body-worn recorders, for the station's pyusb driver.

serve   create (or reload) recorders under --state, plug them on ports 1-1.1 ... 1-1.N, serve the
        bus on --socket until SIGTERM/SIGINT, then unmount every volume. Prints one JSON line:
        {"socket", "state_dir", "mount_root", "password_source", "recorders": [{device_serial,
        usb_serial, officer_no, port_path, mode, msc_only}, ...]}.
plug    plug a recorder of a running bus into a port.
unplug  pull a recorder out of a running bus.
list    print the recorders of a running bus as one JSON array.

The station reaches the bus with the pyusb backend simulators.recorder.backend.get_backend(SOCKET)
(config key usb.simulator_socket). Switching a recorder to mass storage mounts its volume the way
the station's udev rule does: at MOUNT_ROOT/<bay directory>, one directory per USB port (e.g.
platform-dummy_hcd_0-usb-0_1_3_1_0-scsi-0_0_0_0-part1 for port 1-1.3), there before the first docking
and left in place after each unplug. As root it is a bind mount of the recorder's storage, otherwise,
or with faults or a rate limit, a FUSE mount (needs /dev/fuse and fusermount3).

Passwords are never printed. Every recorder's password is $EE_SIM_RECORDER_PASSWORD if set, else
the factory default 000000. A restarted bus keeps identities, clocks, files and passwords from
--state and re-plugs what was plugged (a power cycle: fresh sessions, lockouts cleared).
"""


def _password() -> tuple[str, str]:
    value = os.environ.get(PASSWORD_ENV)
    if value:
        return value, f"env:{PASSWORD_ENV}"
    return DEFAULT_PASSWORD, "default"


def recorder_spec(index: int, args: argparse.Namespace, password: str) -> RecorderSpec:
    """The index-th recorder of a `serve` run; deterministic for (seed, index) so restarts find it."""
    seed = int(args.seed)
    from simulators.recorder.faultfs import VolumeFaults

    faults = VolumeFaults.from_cli_string(args.faults) if args.faults else None
    rate = args.rate_limit_bytes_per_s
    if rate is None and args.rate_limit_mbps is not None:
        rate = int(args.rate_limit_mbps * 1_000_000)
    usb_tag = hashlib.sha256(f"{seed}:{index}".encode()).hexdigest()[:6].upper()
    usb_serial = f"EEZ01{usb_tag}{index + 1:05d}"
    if args.usb_serial == "same":  # identical factory serials: every recorder claims the first one's
        usb_serial = f"EEZ01{hashlib.sha256(f'{seed}:0'.encode()).hexdigest()[:6].upper()}00001"
    elif args.usb_serial == "none":  # shipped without a serial string
        usb_serial = ""
    # Names a serial string but cannot give it: the request STALLs, or there is no LANGID table.
    serial_fault = UsbSerialFault(args.usb_serial) if args.usb_serial in set(UsbSerialFault) else None
    return RecorderSpec(
        device_serial=f"{1_000_000 + (seed * 1000 + index) % 9_000_000}",
        usb_serial=usb_serial,
        officer_no=f"{(100_001 + index) % 1_000_000:06d}",
        officer_name=OFFICERS[index % len(OFFICERS)],
        unit_code=UNIT_CODE,
        unit_name=UNIT_NAME,
        password=password,
        msc_only=index >= args.recorders - args.msc_only,
        clock_offset_s=args.clock_offset_s,
        clock_drift_ppm=args.clock_drift_ppm,
        recording_until_docked=args.recording_until_docked,
        battery_percent=20 + (37 * index) % 80,
        files=args.files,
        file_mb=args.file_mb,
        seed=seed * 1000 + index,
        faults=faults,
        rate_limit_bytes_per_s=rate,
        usb_serial_fault=serial_fault,
        firmware_fault=FirmwareFault(args.firmware_fault) if args.firmware_fault else None,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m simulators recorder", description=_DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{serve,plug,unplug,list}")

    serve = sub.add_parser("serve", help="run the bus", description=_DESCRIPTION,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_argument("--state", type=Path, required=True, help="state directory (recorders, volumes)")
    serve.add_argument("--mount-root", type=Path, required=True,
                       help="where volumes are mounted in mass-storage mode, one directory per port")
    serve.add_argument("--socket", type=Path, required=True, help="UNIX socket to serve the bus on")
    serve.add_argument("--recorders", type=int, default=2, help="number of recorders (default 2)")
    serve.add_argument("--files", type=int, default=5, help="files per recorder volume (default 5)")
    serve.add_argument("--file-mb", type=float, default=1.0, help="size of each video in MiB (default 1)")
    serve.add_argument("--msc-only", type=int, default=0, metavar="N",
                       help="the last N recorders are mass-storage-only (no control interface)")
    serve.add_argument("--usb-serial", choices=("unique", "same", "none", *UsbSerialFault), default="unique",
                       help="USB serials of the recorders: unique (default), the same for all (cheap "
                            "recorders, or one copying another's), none (no serial string), stall (a "
                            "serial string is named but its request STALLs), no-langids (no LANGID "
                            "table, so no string can be asked for), changes (another serial at "
                            "every request: a hostile device), or slow (the serial request is never "
                            "answered: the host's transfer times out)")
    serve.add_argument("--firmware-fault", choices=tuple(FirmwareFault), default=None,
                       help="what every recorder's GET_VERSION gives instead of its firmware version: "
                            "control-chars (terminal escapes, CR LF), not-gbk (undecodable bytes), "
                            "overlong (10 kB for a 32-byte request) or unsupported (older firmware: STALL)")
    serve.add_argument("--clock-offset-s", type=float, default=0.0,
                       help="initial device clock minus host clock, seconds (default 0)")
    serve.add_argument("--clock-drift-ppm", type=float, default=0.0,
                       help="device clock rate error, parts per million (default 0)")
    serve.add_argument("--recording-until-docked", action="store_true",
                       help="volumes carry each recorder's own clock, and the newest recording is closed "
                            "at plug-in (as a recorder still recording when docked)")
    rate = serve.add_mutually_exclusive_group()
    rate.add_argument("--rate-limit-mbps", type=float, default=None,
                      help="volume read rate limit in megabytes (10^6 bytes) per second; USB 2.0 mass "
                           "storage reaches about 35 (default: unlimited)")
    rate.add_argument("--rate-limit-bytes-per-s", type=int, default=None,
                      help="the same, in bytes per second")
    serve.add_argument("--faults", default="",
                       help="volume faults for every recorder, e.g. 'read_error=*.MP4@1048576,"
                            "bit_flip=*_0002.MP4@4096,unplug_after_bytes=5000000,grow=*.WAV,vanish=*.JPG'")
    serve.add_argument("--seed", type=int, default=0, help="seed for identities and media (default 0)")
    serve.add_argument("--verbose", "-v", action="store_true", help="log at DEBUG level to stderr")

    plug = sub.add_parser("plug", help="plug a recorder into a port of a running bus")
    plug.add_argument("--socket", type=Path, required=True)
    plug.add_argument("serial", help="device serial (7 characters)")
    plug.add_argument("--port", default="1-1.1", help="port path like 1-1.3 (default 1-1.1)")

    unplug = sub.add_parser("unplug", help="pull a recorder out of a running bus")
    unplug.add_argument("--socket", type=Path, required=True)
    unplug.add_argument("serial", help="device serial (7 characters)")

    listing = sub.add_parser("list", help="print the recorders of a running bus as JSON")
    listing.add_argument("--socket", type=Path, required=True)
    return parser


def _serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.recorders < 0 or not 0 <= args.msc_only <= args.recorders:
        print("serve: need --recorders >= 0 and 0 <= --msc-only <= --recorders", file=sys.stderr)
        return 2
    password, password_source = _password()
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with RecorderBus(args.state, args.mount_root) as bus:
            specs = [recorder_spec(i, args, password) for i in range(args.recorders)]
            for index, spec in enumerate(specs):
                if stop.is_set():
                    return 0
                if not bus.has_recorder(spec.device_serial):
                    bus.add_recorder(spec)
                if not bus.recorder_state(spec.device_serial).plugged:
                    bus.plug(spec.device_serial, f"1-1.{index + 1}")
            with RecorderBusServer(bus, args.socket):
                # Every recorder on the bus, including ones a previous run with more --recorders left.
                recorders = [_summary(state.to_json()) for state in bus.recorders()]
                print(json.dumps({
                    "socket": str(args.socket),
                    "state_dir": str(args.state),
                    "mount_root": str(args.mount_root),
                    "password_source": password_source,
                    "recorders": recorders,
                }, ensure_ascii=False), flush=True)
                stop.wait()
                logger.info("stopping: unmounting volumes")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _summary(state: dict[str, Any]) -> dict[str, Any]:
    return {
        "device_serial": state["device_serial"],
        "usb_serial": state["usb_serial"],
        "officer_no": state["info"]["officer_no"],
        "port_path": state["port_path"],
        "mode": state["mode"],
        "msc_only": state["msc_only"],
        "mount_point": state["mount_point"],
    }


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    client = BusClient(args.socket)
    try:
        if args.command == "plug":
            result = client.call("plug", serial=args.serial, port_path=args.port)
        elif args.command == "unplug":
            result = client.call("unplug", serial=args.serial)
        else:
            result = client.call("recorders")
    except BusClientError as exc:
        print(f"{args.command}: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    print(json.dumps(result, ensure_ascii=False), flush=True)
    return 0
