"""A central receiver in a process of its own, as it is deployed: `edge central run --config FILE`.

The demo's `--central-process` and the upload benchmark's pipeline mode use it so that what the station
costs and what the central costs are two processes' CPU, measured apart, and neither shares the other's
event loop or GIL. It is set up as :class:`~edge.central.embedded.EmbeddedCentral` sets one up (`edge
central init`, `edge central enroll STATION` with the station's ledger key, mutual TLS on a free loopback
port, the console's own listener on another), written to ``<workdir>/central.toml``; the process's log
goes to ``<workdir>/central.log``. It is ready when ``/readyz`` answers 200 over its TLS listener (no
client certificate needed there), checked against the central's own CA.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.central.config import CentralConfig
from edge.central.embedded import EmbeddedCentral, free_port
from edge.central.health import READYZ
from edge.custody.keys import load_public_key
from edge.pki.bundle import BUNDLE_CA_CERT

__all__ = ["CentralProcess", "CentralProcessError"]

START_TIMEOUT_S = 180.0  # imports, keys and the index on a loaded machine
STOP_TIMEOUT_S = 120.0  # its graceful stop (uploads in flight are kept) before it is killed
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_LOG_TAIL_BYTES = 4000


class CentralProcessError(RuntimeError):
    """The central's process did not start, or exited while it was needed."""


def _toml_string(value: str) -> str:
    # A JSON string is a TOML basic string for everything json.dumps emits (ASCII, \" \\ \n \uXXXX).
    return json.dumps(value, ensure_ascii=True)


def central_toml(config: CentralConfig) -> str:
    """The configuration file of a demo central (:meth:`EmbeddedCentral.make_config` without [mqtt])."""
    server, console = config.server, config.console
    names = ", ".join(_toml_string(name) for name in server.names)
    return (
        "[central]\n"
        f"id = {_toml_string(config.central.id)}\n"
        f"store_dir = {_toml_string(str(config.central.store_dir))}\n"
        "[server]\n"
        f"listen = {_toml_string(server.listen)}\n"
        f"port = {server.port}\n"
        f"names = [{names}]\n"
        "[console]\n"
        f"listen = {_toml_string(console.listen)}\n"
        f"port = {console.port}\n"
    )


class CentralProcess:
    """`edge central run` on a temporary configuration; see the module docstring."""

    def __init__(self, config: CentralConfig, config_file: Path, bundle_dir: Path, log_file: Path) -> None:
        self.config = config
        self.config_file = config_file
        self.bundle_dir = bundle_dir
        self.log_file = log_file
        self._proc: subprocess.Popen[bytes] | None = None
        self.cpu_s_at_exit: float | None = None  # user + system CPU of its whole life, once reaped

    def __repr__(self) -> str:
        return f"CentralProcess(config={str(self.config_file)!r}, pid={self.pid})"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def url(self) -> str:
        return f"https://{self.config.server.listen}:{self.config.server.port}"

    @property
    def console_url(self) -> str:
        return f"https://{self.config.console.listen}:{self.config.console.port}"

    @property
    def store_dir(self) -> Path:
        return self.config.central.store_dir

    @classmethod
    async def start(cls, workdir: Path, station_id: str, station_store: Path) -> CentralProcess:
        """Initialise a central under ``workdir`` (kept from an earlier run there), enroll the station,
        and start its process; returns once it is ready."""
        config = EmbeddedCentral.make_config(workdir / "central-store")
        loop = asyncio.get_running_loop()
        bundle_dir = await loop.run_in_executor(
            None, EmbeddedCentral.initialise, config, workdir, station_id, station_store)
        return await cls.serve(config, bundle_dir, workdir)

    @classmethod
    async def serve(cls, config: CentralConfig, bundle_dir: Path, workdir: Path) -> CentralProcess:
        """Run an initialised central (``config`` without [mqtt]) from ``<workdir>/central.toml``; returns
        once it is ready. Raises :class:`CentralProcessError` with its log's tail when it is not."""
        if config.console.listen and config.console.port == 0:
            # Any free port would do for the central, but then nobody here would know its URL.
            config = config.model_copy(update={
                "console": config.console.model_copy(update={"port": free_port()}),
            })
        config_file = workdir / "central.toml"
        config_file.write_text(central_toml(config), encoding="utf-8")
        central = cls(config, config_file, bundle_dir, workdir / "central.log")
        central._spawn()
        try:
            await central._wait_ready()
        except BaseException:
            with contextlib.suppress(CentralProcessError):  # the first failure is the one to tell
                await central.stop()
            raise
        return central

    def _spawn(self) -> None:
        with open(self.log_file, "ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", "import sys; from edge.cli import main; sys.exit(main())",
                 "central", "run", "--config", str(self.config_file)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )

    def _log_tail(self) -> str:
        try:
            with open(self.log_file, "rb") as log:
                log.seek(max(0, os.fstat(log.fileno()).st_size - _LOG_TAIL_BYTES))
                return log.read().decode("utf-8", "replace")
        except OSError as exc:
            return f"(its log {self.log_file} cannot be read: {exc.strerror})"

    async def _wait_ready(self) -> None:
        trust = ssl.create_default_context(cafile=str(self.bundle_dir / BUNDLE_CA_CERT))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            while loop.time() < deadline:
                assert self._proc is not None
                if self._proc.poll() is not None:
                    raise CentralProcessError(
                        f"the central's process exited {self._proc.returncode} while starting; its log "
                        f"({self.log_file}) ends:\n{self._log_tail()}")
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                    async with session.get(self.url + READYZ, ssl=trust) as answer:
                        if answer.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise CentralProcessError(f"the central's process was not ready within {START_TIMEOUT_S:g} s; its "
                                  f"log ({self.log_file}) ends:\n{self._log_tail()}")

    def cpu_s(self) -> float:
        """User + system CPU seconds the running process has used so far (every thread), from /proc."""
        if self._proc is None or self._proc.poll() is not None:
            raise CentralProcessError("the central's process is not running")
        fields = Path(f"/proc/{self._proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        # After the command name: utime and stime are fields 14 and 15 of proc(5).
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS

    def uplink_config(self) -> dict[str, Any]:
        """The station's [uplink] section pointing at this central."""
        return {"central_url": self.url, "identity_dir": str(self.bundle_dir)}

    def signing_public_key(self) -> Ed25519PublicKey:
        return load_public_key(self.bundle_dir / "central-signing.pub")

    async def stop(self) -> None:
        """SIGTERM and wait for its graceful stop (SIGKILL after :data:`STOP_TIMEOUT_S`); idempotent.
        Raises :class:`CentralProcessError` when it had to be killed or exited with a failure."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        try:
            status, usage = await asyncio.wait_for(loop.run_in_executor(None, _reap, proc), STOP_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await loop.run_in_executor(None, _reap, proc)
            raise CentralProcessError(f"the central's process did not stop within {STOP_TIMEOUT_S:g} s of "
                                      f"SIGTERM and was killed; its log is {self.log_file}") from None
        if usage is not None:
            self.cpu_s_at_exit = usage.ru_utime + usage.ru_stime
        if status not in (0, None):
            raise CentralProcessError(f"the central's process exited {status}; its log ({self.log_file}) "
                                      f"ends:\n{self._log_tail()}")


def _reap(proc: subprocess.Popen[bytes]) -> tuple[int | None, Any]:
    """Wait for the process; (exit code, its resource usage). A process already reaped by ``poll`` has
    no usage left to read."""
    if proc.returncode is not None:
        return proc.returncode, None
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage
