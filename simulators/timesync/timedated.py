"""A stand-in for systemd-timedated on a D-Bus bus: `org.freedesktop.timedate1`, read-only.

It owns the bus name and answers `org.freedesktop.DBus.Properties.Get`/`GetAll` (and `Introspect`) on
`/org/freedesktop/timedate1` with the properties timedated has, so the real `timedatectl` (or busctl)
pointed at the bus with `DBUS_SYSTEM_BUS_ADDRESS` reads them as it would on a station. Unknown calls
get the error timedated's bus library gives.

Faults, as options: `--synchronised no`; `--ntp-type s` answers NTPSynchronized with the wrong D-Bus
type; `--silent` takes the name but never answers (a hung timedated).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from typing import Any

from jeepney import HeaderFields, MessageType, new_error, new_method_return
from jeepney.bus_messages import message_bus
from jeepney.io.blocking import DBusConnection, open_dbus_connection

BUS_NAME = "org.freedesktop.timedate1"
OBJECT_PATH = "/org/freedesktop/timedate1"
INTERFACE = "org.freedesktop.timedate1"
PROPERTIES = "org.freedesktop.DBus.Properties"
INTROSPECTABLE = "org.freedesktop.DBus.Introspectable"
INTROSPECTION = f"""<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">
<node><interface name="{INTERFACE}">
<property name="Timezone" type="s" access="read"/><property name="LocalRTC" type="b" access="read"/>
<property name="CanNTP" type="b" access="read"/><property name="NTP" type="b" access="read"/>
<property name="NTPSynchronized" type="b" access="read"/><property name="TimeUSec" type="t" access="read"/>
<property name="RTCTimeUSec" type="t" access="read"/></interface></node>"""


class TimedatedSimulator:
    """Serves timedate1 on `bus_address` from a thread until `stop()`."""

    def __init__(self, bus_address: str, *, synchronised: bool = True, ntp_type: str = "b",
                 silent: bool = False) -> None:
        self.bus_address = bus_address
        self.synchronised = synchronised  # may be changed while serving
        self.ntp_type = ntp_type
        self.silent = silent
        self.calls = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def properties(self) -> dict[str, tuple[str, Any]]:
        now_us = int(time.time() * 1_000_000)
        ntp: tuple[str, Any] = (
            ("b", self.synchronised) if self.ntp_type == "b" else ("s", "yes" if self.synchronised else "no")
        )
        return {
            "Timezone": ("s", "Asia/Shanghai"),
            "LocalRTC": ("b", False),
            "CanNTP": ("b", True),
            "NTP": ("b", True),
            "NTPSynchronized": ntp,
            "TimeUSec": ("t", now_us),
            "RTCTimeUSec": ("t", now_us),
        }

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="timedated-sim", daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            raise RuntimeError(f"timedated simulator did not start: {self._error}")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _serve(self) -> None:
        try:
            connection = open_dbus_connection(self.bus_address)
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        with connection:
            connection.send_and_get_reply(message_bus.RequestName(BUS_NAME), timeout=10)
            self._ready.set()
            while not self._stop.is_set():
                try:
                    message = connection.receive(timeout=0.2)
                except TimeoutError:
                    continue
                if message.header.message_type is MessageType.method_call:
                    self.calls += 1
                    if not self.silent:
                        self._answer(connection, message)

    def _answer(self, connection: DBusConnection, message: Any) -> None:
        fields = message.header.fields
        interface = fields.get(HeaderFields.interface, "")
        member = fields.get(HeaderFields.member, "")
        path = fields.get(HeaderFields.path, "")
        if path != OBJECT_PATH:
            error = "org.freedesktop.DBus.Error.UnknownObject"
            reply = new_error(message, error, "s", (f"no object {path}",))
        elif interface == PROPERTIES and member == "GetAll":
            (wanted,) = message.body
            body = self.properties() if wanted in ("", INTERFACE) else {}
            reply = new_method_return(message, "a{sv}", (body,))
        elif interface == PROPERTIES and member == "Get":
            wanted, name = message.body
            properties = self.properties()
            if wanted not in ("", INTERFACE) or name not in properties:
                reply = new_error(message, "org.freedesktop.DBus.Error.UnknownProperty", "s", (name,))
            else:
                reply = new_method_return(message, "v", (properties[name],))
        elif interface == INTROSPECTABLE and member == "Introspect":
            reply = new_method_return(message, "s", (INTROSPECTION,))
        else:
            reply = new_error(message, "org.freedesktop.DBus.Error.UnknownMethod", "s", (f"{member}",))
        connection.send(reply)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simulators timedated",
        description="systemd-timedated stand-in serving org.freedesktop.timedate1 on a D-Bus bus.",
    )
    parser.add_argument("--bus", required=True, help="D-Bus address, e.g. unix:path=/tmp/bus/socket")
    parser.add_argument("--synchronised", choices=("yes", "no"), default="yes")
    parser.add_argument("--ntp-type", choices=("b", "s"), default="b", help="D-Bus type of NTPSynchronized")
    parser.add_argument("--silent", action="store_true", help="own the name but never answer")
    args = parser.parse_args(argv)
    simulator = TimedatedSimulator(args.bus, synchronised=args.synchronised == "yes",
                                   ntp_type=args.ntp_type, silent=args.silent)
    simulator.start()
    print(f"timedated simulator on {args.bus}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        simulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
