"""Readers of the station's time-synchronisation state, each usable inside the shipped systemd unit.

`edge-station.service` sets `ProtectClock=yes` and `SystemCallFilter=~@privileged`, and both deny the
whole `@clock` system-call group with EPERM, reads included: `adjtimex(2)` and `clock_adjtime(2)` (which
glibc uses for `adjtimex`) fail inside the service. The state is therefore read from the time daemons
instead, over interfaces the unit allows (files in /run, AF_UNIX/AF_INET sockets, child processes):

- `read_chrony`: `chronyc -c -n tracking`, over chronyd's command socket (or UDP 127.0.0.1:323 for a
  user without access to /run/chrony); cannot tell when chronyc is missing or chronyd does not answer.
- `read_timesyncd`: the mtime of `/run/systemd/timesync/synchronized`, which systemd-timesyncd touches
  at every synchronisation; cannot tell when timesyncd is not running (no `/run/systemd/timesync`).
- `read_timedated`: systemd-timedated's `NTPSynchronized` property over the system D-Bus (AF_UNIX), with
  `busctl get-property`; timedated reads the kernel state in its own, unfiltered process. Cannot tell
  when busctl, the bus or timedated is missing.
- `read_adjtimex`: the kernel directly; cannot tell when the call is refused (always, under the unit).

Each reader returns a `SyncReading`: synchronised True or False when its source could decide, None when
the source is absent or unreadable, and always a reason fit for the ledger. Readers never raise for a
missing, hostile or hanging source: commands run with a timeout and a cap on what is read, and whatever
they print is checked before it is believed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import math
import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from edge.runtime.bounded import run_bounded

TIME_ERROR = 5  # adjtimex(2) return value: the kernel clock is not synchronised
TIMEX_BYTES = 512  # struct timex is 208 bytes on x86-64; room to spare on any ABI
MAX_COMMAND_OUTPUT_BYTES = 16 * 1024  # chronyc and timedatectl print one short line
MAX_REASON_CHARS = 200
# chronyd's reference id when it serves its own clock (`local` directive) or has no reference at all.
CHRONY_LOCAL_REFERENCE_IDS = ("7F7F0101", "00000000")
CHRONY_LEAP_SYNCHRONISED = ("Normal", "Insert second", "Delete second")
CHRONY_LEAP_STATES = (*CHRONY_LEAP_SYNCHRONISED, "Not synchronised", "Invalid")
CHRONY_TRACKING_FIELDS = 14
TIMEDATED_BUS_NAME = "org.freedesktop.timedate1"
TIMEDATED_OBJECT = "/org/freedesktop/timedate1"
TIMEDATED_INTERFACE = "org.freedesktop.timedate1"
# A mtime a little ahead of the clock is a coarse file system or a slewed clock, not a step back.
FLAG_FUTURE_SLACK_S = 2.0

_PRINTABLE_NAME = re.compile(r"[A-Za-z0-9.:_-]{1,64}")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


class TimeSyncError(ValueError):
    """A time daemon's answer could not be understood; the message says what was expected."""


@dataclass(frozen=True)
class SyncReading:
    """What one source says about the station clock."""

    source: str  # "chrony" | "timesyncd" | "timedated" | "adjtimex"
    synchronised: bool | None  # None: this source cannot tell here (absent, refused, unreadable)
    reason: str


@dataclass(frozen=True)
class CommandOutput:
    returncode: int
    stdout: str
    stderr: str


class CommandUnavailable(Exception):
    """A command could not be run or did not answer in time; the message says which and why."""


def clean_text(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """Text from a child process, fit for a ledger reason: one line, printable ASCII, bounded."""
    line = " ".join(text.split())
    line = _UNPRINTABLE.sub("?", line)
    return line if len(line) <= limit else line[: limit - 3] + "..."


def run_command(
    argv: list[str], *, timeout_s: float, max_bytes: int = MAX_COMMAND_OUTPUT_BYTES
) -> CommandOutput:
    """Run a status command (`edge.runtime.bounded.run_bounded`: no stdin, its own process group, killed at
    the deadline or when it prints more than `max_bytes`) in the C locale; `CommandUnavailable` says why
    there is no answer."""
    env = {**os.environ, "LC_ALL": "C", "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"}
    try:
        run = run_bounded(argv, timeout_s=timeout_s, max_output_bytes=max_bytes, max_error_bytes=max_bytes,
                          env=env)
    except FileNotFoundError as exc:
        raise CommandUnavailable(f"{argv[0]} is not installed") from exc
    except OSError as exc:
        raise CommandUnavailable(f"{argv[0]} cannot be run: {exc.strerror or exc}") from exc
    if run.output_exceeded:
        raise CommandUnavailable(f"{argv[0]} printed more than {max_bytes} bytes and was killed")
    if run.timed_out or run.returncode is None:
        raise CommandUnavailable(f"{argv[0]} did not answer within {timeout_s:g} s")
    return CommandOutput(
        run.returncode, run.stdout.decode("utf-8", "replace"), run.stderr_tail.decode("utf-8", "replace")
    )


# -- chrony ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChronyTracking:
    """The fields of `chronyc -c tracking` that decide trust (chronyc's CSV, 14 fields in one line)."""

    reference_id: str  # 8 hex digits
    reference_name: str  # IP address or reference-clock name; printable, bounded
    stratum: int
    system_offset_s: float  # chronyc's sign: positive means the system clock is slow of NTP time
    root_delay_s: float
    root_dispersion_s: float
    leap_status: str

    @property
    def max_error_s(self) -> float:
        """chrony's bound on the clock error: remaining correction + root dispersion + half the delay."""
        return abs(self.system_offset_s) + self.root_dispersion_s + self.root_delay_s / 2


def parse_chrony_tracking(text: str) -> ChronyTracking:
    """Parse `chronyc -c tracking`: ref id, name, stratum, ref time, system time, last offset, RMS
    offset, frequency, residual frequency, skew, root delay, root dispersion, update interval, leap."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) != 1:
        raise TimeSyncError(f"expected one CSV line from chronyc, got {len(lines)} lines")
    fields = lines[0].strip().split(",")
    if len(fields) != CHRONY_TRACKING_FIELDS:
        raise TimeSyncError(f"expected {CHRONY_TRACKING_FIELDS} CSV fields from chronyc, got {len(fields)}")
    reference_id = fields[0].upper()
    if not re.fullmatch(r"[0-9A-F]{8}", reference_id):
        raise TimeSyncError(f"chronyc reference id must be 8 hex digits, got {clean_text(fields[0], 20)!r}")
    name = fields[1] if _PRINTABLE_NAME.fullmatch(fields[1]) else ""
    if not fields[2].isascii() or not fields[2].isdigit() or int(fields[2]) > 16:
        raise TimeSyncError(f"chronyc stratum must be 0..16, got {clean_text(fields[2], 20)!r}")
    numbers: dict[str, float] = {}
    for label, index in (("system time", 4), ("root delay", 10), ("root dispersion", 11)):
        numbers[label] = _finite(fields[index], label)
    if numbers["root delay"] < 0 or numbers["root dispersion"] < 0:
        raise TimeSyncError("chronyc root delay and dispersion must not be negative")
    leap = fields[13].strip()
    if leap not in CHRONY_LEAP_STATES:
        raise TimeSyncError(f"unknown chronyc leap status {clean_text(leap, 40)!r}")
    return ChronyTracking(
        reference_id=reference_id,
        reference_name=name,
        stratum=int(fields[2]),
        system_offset_s=numbers["system time"],
        root_delay_s=numbers["root delay"],
        root_dispersion_s=numbers["root dispersion"],
        leap_status=leap,
    )


def _finite(text: str, label: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise TimeSyncError(f"chronyc {label} must be a number, got {clean_text(text, 40)!r}") from None
    if not math.isfinite(value) or not text.isascii():
        raise TimeSyncError(f"chronyc {label} must be a finite number, got {clean_text(text, 40)!r}")
    return value


def judge_chrony(tracking: ChronyTracking, max_error_s: float) -> SyncReading:
    """Synchronised when chronyd tracks a real reference with a leap status other than unsynchronised
    and its own error bound is within `max_error_s`."""
    where = tracking.reference_name or tracking.reference_id
    if tracking.leap_status not in CHRONY_LEAP_SYNCHRONISED:
        return SyncReading(
            "chrony", False, f"chronyd is not synchronised (leap status {tracking.leap_status})"
        )
    if tracking.reference_id in CHRONY_LOCAL_REFERENCE_IDS:
        return SyncReading(
            "chrony", False, f"chronyd serves its own clock (reference {tracking.reference_id}), no source"
        )
    if not 1 <= tracking.stratum <= 15:
        return SyncReading("chrony", False, f"chronyd reports stratum {tracking.stratum}: no usable source")
    error_ms = tracking.max_error_s * 1000
    if tracking.max_error_s > max_error_s:
        return SyncReading(
            "chrony",
            False,
            f"chronyd follows {where} (stratum {tracking.stratum}) but its clock may be off by up to "
            f"{error_ms:.0f} ms (limit {max_error_s * 1000:.0f} ms)",
        )
    return SyncReading(
        "chrony",
        True,
        f"chronyd synchronised to {where} (stratum {tracking.stratum}, leap status {tracking.leap_status}), "
        f"error within {error_ms:.1f} ms",
    )


def read_chrony(chronyc: str, *, max_error_s: float, timeout_s: float) -> SyncReading:
    try:
        out = run_command([chronyc, "-c", "-n", "tracking"], timeout_s=timeout_s)
    except CommandUnavailable as exc:
        return SyncReading("chrony", None, str(exc))
    if out.returncode != 0:
        # "506 Cannot talk to daemon": chronyd is not running (or refuses this user).
        said = clean_text(out.stderr or out.stdout) or "no message"
        return SyncReading("chrony", None, f"chronyc failed (exit {out.returncode}): {said}")
    try:
        tracking = parse_chrony_tracking(out.stdout)
    except TimeSyncError as exc:
        return SyncReading("chrony", None, f"chronyc answer not understood: {exc}")
    return judge_chrony(tracking, max_error_s)


# -- systemd-timesyncd ------------------------------------------------------------------------------------


def boot_time_s() -> float:
    """When this boot started, on today's wall clock (CLOCK_BOOTTIME keeps counting through suspend)."""
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


def read_timesyncd(
    flag: Path, *, max_age_s: float, now_s: float | None = None, boot_s: float | None = None
) -> SyncReading:
    """systemd-timesyncd touches `flag` at every successful synchronisation, at most PollIntervalMaxSec
    (2048 s by default) apart; its runtime directory exists only while it runs."""
    now = time.time() if now_s is None else now_s
    boot = boot_time_s() if boot_s is None else boot_s
    try:
        info = os.stat(flag)
    except FileNotFoundError:
        if flag.parent.is_dir():
            return SyncReading(
                "timesyncd", False, f"systemd-timesyncd runs but has not synchronised since boot (no {flag})"
            )
        return SyncReading("timesyncd", None, f"systemd-timesyncd is not running (no {flag.parent})")
    except OSError as exc:
        return SyncReading("timesyncd", None, f"cannot read {flag}: {exc.strerror or exc}")
    if not stat.S_ISREG(info.st_mode):
        return SyncReading("timesyncd", None, f"{flag} is not a regular file")
    age_s = now - info.st_mtime
    if info.st_mtime < boot:
        return SyncReading("timesyncd", False, f"{flag} is from before this boot: no synchronisation since")
    if age_s < -FLAG_FUTURE_SLACK_S:
        return SyncReading(
            "timesyncd",
            False,
            f"{flag} is {-age_s:.0f} s in the future: the clock went back after the last synchronisation",
        )
    if age_s > max_age_s:
        return SyncReading(
            "timesyncd",
            False,
            f"systemd-timesyncd last synchronised {age_s:.0f} s ago (limit {max_age_s:.0f} s)",
        )
    return SyncReading("timesyncd", True, f"systemd-timesyncd synchronised {max(age_s, 0.0):.0f} s ago")


# -- systemd-timedated over D-Bus -------------------------------------------------------------------------


def read_timedated(busctl: str, *, timeout_s: float) -> SyncReading:
    """systemd-timedated's NTPSynchronized: the kernel's synchronisation state, read by timedated in its
    own process (so the service's seccomp filter does not apply), fetched over the system bus with
    busctl (timedatectl would do, but refuses to run at all where systemd is not PID 1)."""
    argv = [
        busctl,
        "--system",
        "--no-pager",
        "get-property",  # busctl waits 25 s for a hung timedated whatever --timeout says: run_command ends it
        TIMEDATED_BUS_NAME,
        TIMEDATED_OBJECT,
        TIMEDATED_INTERFACE,
        "NTPSynchronized",
    ]
    try:
        out = run_command(argv, timeout_s=timeout_s)
    except CommandUnavailable as exc:
        return SyncReading("timedated", None, str(exc))
    if out.returncode != 0:
        said = clean_text(out.stderr or out.stdout) or "no message"
        return SyncReading("timedated", None, f"busctl failed (exit {out.returncode}): {said}")
    value = out.stdout.strip()
    if value == "b true":
        return SyncReading("timedated", True, "systemd-timedated reports the clock synchronised")
    if value == "b false":
        return SyncReading("timedated", False, "systemd-timedated reports the clock not synchronised")
    said = clean_text(value, 60)
    return SyncReading("timedated", None, f"NTPSynchronized answer not understood: {said!r}, not a boolean")


# -- the kernel, directly ---------------------------------------------------------------------------------


def read_adjtimex() -> SyncReading:
    """adjtimex(2) with modes 0 (read only). Refused under ProtectClock=yes or ~@privileged."""
    path = ctypes.util.find_library("c")
    if path is None:
        return SyncReading("adjtimex", None, "no C library to call adjtimex through")
    try:
        libc = ctypes.CDLL(path, use_errno=True)
        buffer = ctypes.create_string_buffer(TIMEX_BYTES)  # modes = 0: read only, change nothing
        state = int(libc.adjtimex(buffer))
    except (OSError, AttributeError) as exc:
        return SyncReading("adjtimex", None, f"adjtimex unavailable: {exc}")
    if state == -1:
        code = ctypes.get_errno()
        why = (
            " (the service's ProtectClock=/SystemCallFilter= forbid clock system calls)"
            if code == errno.EPERM
            else ""
        )
        return SyncReading("adjtimex", None, f"adjtimex refused: {os.strerror(code)}{why}")
    if state == TIME_ERROR:
        return SyncReading("adjtimex", False, "the kernel reports the clock not synchronised (TIME_ERROR)")
    return SyncReading("adjtimex", True, f"the kernel reports the clock synchronised (state {state})")
