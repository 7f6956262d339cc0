"""A local Mosquitto running the agency configuration this project ships (config/mosquitto/): the broker of
`edge demo --transport mqtt`, of the MQTT benchmark and of the MQTT tests.

`LocalBroker` fills the placeholders of the shipped mosquitto.conf and ACL (certificates, central id,
topic prefix, port) and nothing else, so whatever runs against it runs against the agency's rules:
TLS only, a client certificate from the central's CA required, the certificate's CN as the user name,
and each station confined to its own topics. Everything the broker writes (configuration, ACL,
persistence, log) lives under one directory given by the caller: no mount point, /var or /run is
assumed to exist or to be writable, as under a sandboxed systemd unit.

    broker = LocalBroker(workdir / "broker", BrokerTls(ca, cert, key, crl), central_id="DEMO-CENTRAL")
    async with broker:                      # start: until the listener accepts connections
        print(broker.url)                   # mqtts://127.0.0.1:<free port>
        await broker.restart(graceful=False)  # SIGKILL: sessions not yet saved are lost

The broker dies with the process that started it (PR_SET_PDEATHSIG, strictly: with the thread, the
event loop's, that started it), so a crashed demo leaves no broker behind.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import pwd
import re
import shutil
import signal
import socket
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from edge.pki.names import InvalidNameError, validate_station_id

# The templates live in the source tree beside the other example configurations (README "MQTT").
SHIPPED_DIR = Path(__file__).resolve().parents[2] / "config" / "mosquitto"
SHIPPED_CONF = SHIPPED_DIR / "mosquitto.conf"
SHIPPED_ACL = SHIPPED_DIR / "acl"
DEFAULT_TOPIC_PREFIX = "evidence"
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
# A value with a line break would start another option; '@' would read as a placeholder left unfilled.
_UNSAFE_VALUE = re.compile(r"[\x00-\x1f\x7f@]")
# Mosquitto ends a path at white space: the broker's files need paths of one word.
_ONE_WORD = re.compile(r"[^\s#@]+")
_TOPIC_PREFIX = re.compile(r"[A-Za-z0-9_.-]{1,64}(/[A-Za-z0-9_.-]{1,64}){0,7}")
_PR_SET_PDEATHSIG = 1
# Logged once the listeners are bound (log_type information, as the shipped configuration sets).
_RUNNING = re.compile(r"mosquitto version \S+ running$", re.MULTILINE)


class BrokerError(Exception):
    """The local broker cannot be configured, started or reached; the message says why."""


def find_mosquitto() -> str | None:
    """The mosquitto executable (Debian installs it in /usr/sbin, which a non-root PATH often lacks)."""
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def fill_placeholders(template: str, values: dict[str, str]) -> str:
    """The shipped file with every @NAME@ replaced; an unfilled placeholder, or a value that would
    change the file's structure (a line break or another control character, '@'), is a `BrokerError`."""
    text = template
    for name, value in values.items():
        if not value or _UNSAFE_VALUE.search(value):
            raise BrokerError(f"{name} for the broker configuration: expected one line, found {value!r}")
        text = text.replace(f"@{name}@", value)
    leftover = [line for line in text.splitlines() if "@" in line.split("#", 1)[0]]
    if leftover:
        raise BrokerError(f"placeholders left unfilled: {leftover}")
    return text


def run_as_user() -> str:
    """The account mosquitto keeps once it has read its files: the one that runs us (by uid, not by
    $USER, which sudo and sandboxes leave stale). Mosquitto reads `user` only when started as root."""
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        # A sandbox's dynamic user without a passwd entry; as non-root mosquitto ignores the option.
        return "root" if uid == 0 else "mosquitto"


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the process that started the broker dies."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass(frozen=True)
class BrokerTls:
    """The broker's TLS files: the CA whose client certificates it accepts (the central's), and its own
    server certificate (issued by that CA: `edge central broker-cert`) and key."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    crl_file: Path
    """The CA's revocation list (`edge central crl --out`; `edge central broker-cert` writes one beside the
    certificate): the shipped configuration names a crlfile, and the broker refuses everyone without it."""


class LocalBroker:
    """One mosquitto process running the shipped configuration; restartable on the same port."""

    def __init__(
        self,
        root: Path,
        tls: BrokerTls,
        *,
        central_id: str,
        topic_prefix: str = DEFAULT_TOPIC_PREFIX,
        port: int | None = None,
        host: str = "127.0.0.1",
        executable: str | None = None,
    ) -> None:
        try:
            validate_station_id(central_id)  # the central id follows the station id rule (a CN)
        except InvalidNameError as exc:
            raise BrokerError(f"central id for the broker's ACL: {exc}") from None
        if not _TOPIC_PREFIX.fullmatch(topic_prefix):
            raise BrokerError(f"topic prefix: expected levels of [A-Za-z0-9_.-], found {topic_prefix!r}")
        self.root = Path(root).resolve()
        self.tls = tls
        self.central_id = central_id
        self.topic_prefix = topic_prefix
        self.port = port or free_port(host)
        self.host = host
        self.executable = executable
        self.process: asyncio.subprocess.Process | None = None
        self.conf_file = self.root / "mosquitto.conf"
        self.acl_file = self.root / "acl"
        self.log_file = self.root / "mosquitto.log"
        self.stderr_file = self.root / "mosquitto.stderr"
        self.data_dir = self.root / "data"
        for what, path in (("directory", self.root), ("CA file", tls.ca_file), ("certificate", tls.cert_file),
                           ("key", tls.key_file)):
            if not _ONE_WORD.fullmatch(str(path)):
                raise BrokerError(f"the broker's {what} {str(path)!r}: mosquitto needs a path without white "
                                  "space, '#' or '@'")
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.data_dir.mkdir(exist_ok=True, mode=0o700)
            self.write_config()
        except OSError as exc:
            raise BrokerError(f"cannot prepare the broker directory {self.root}: {exc}") from None

    @property
    def url(self) -> str:
        """The `broker_url` stations and the central use (`[mqtt] broker_url`)."""
        return f"mqtts://{self.host}:{self.port}"

    def write_config(self) -> None:
        """mosquitto.conf and acl from the shipped templates, placeholders filled."""
        self.acl_file.write_text(
            fill_placeholders(
                SHIPPED_ACL.read_text(),
                {"CENTRAL_ID": self.central_id, "TOPIC_PREFIX": self.topic_prefix},
            )
        )
        self.conf_file.write_text(
            fill_placeholders(
                SHIPPED_CONF.read_text(),
                {
                    "PERSISTENCE_DIR": str(self.data_dir),
                    "RUN_AS_USER": run_as_user(),
                    "PORT": str(self.port),
                    "BIND_ADDRESS": self.host,
                    "CA_FILE": str(Path(self.tls.ca_file).resolve()),
                    "CERT_FILE": str(Path(self.tls.cert_file).resolve()),
                    "KEY_FILE": str(Path(self.tls.key_file).resolve()),
                    "CRL_FILE": str(Path(self.tls.crl_file).resolve()),
                    "ACL_FILE": str(self.acl_file),
                    "LOG_DEST": f"file {self.log_file}",
                },
            )
        )

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def _stderr_text(self) -> str:
        return self.stderr_file.read_text(errors="replace") if self.stderr_file.exists() else ""

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self) -> None:
        """Start mosquitto and return once it says it is running (its listener is bound by then)."""
        executable = self.executable or find_mosquitto()
        if executable is None:
            raise BrokerError("mosquitto is not installed (Debian: apt-get install mosquitto)")
        if self.running:
            raise BrokerError(f"the broker on port {self.port} is already running")
        log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        with self.stderr_file.open("wb") as stderr:
            self.process = await asyncio.create_subprocess_exec(
                executable, "-c", str(self.conf_file),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=stderr,
                preexec_fn=_die_with_parent,
            )
        try:
            await self._wait_running(log_offset)
        except BaseException:
            await self.stop(graceful=False)
            raise

    async def _wait_running(self, log_offset: int) -> None:
        """Until this start's part of the log says "running". Not a TCP probe: another process holding
        the port would answer it while mosquitto fails to bind and exits."""
        assert self.process is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        while True:
            if self.process.returncode is not None:
                raise BrokerError(
                    f"mosquitto exited with status {self.process.returncode}: "
                    f"{self._stderr_text()[-2000:]}\n{self.log_text()[log_offset:][-2000:]}"
                )
            if _RUNNING.search(self.log_text()[log_offset:]):
                return
            if loop.time() > deadline:
                raise BrokerError(
                    f"mosquitto did not start on {self.host}:{self.port} within {START_TIMEOUT_S:g} s: "
                    f"{self.log_text()[log_offset:][-2000:]}"
                )
            # Polls a subprocess becoming ready (mosquitto has no readiness notification); proves nothing.
            await asyncio.sleep(0.02)

    async def stop(self, *, graceful: bool = True) -> None:
        """SIGTERM (mosquitto saves its sessions) or, not graceful, SIGKILL (what was not saved is lost);
        a broker that ignores SIGTERM for STOP_TIMEOUT_S is killed."""
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()

    async def restart(self, *, graceful: bool = True) -> None:
        await self.stop(graceful=graceful)
        await self.start()

    async def __aenter__(self) -> LocalBroker:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
