"""The tamper matrix's fixture: a station store and a central store made by the real `edge demo`, a
central serving its store as `edge central --config` does, and `edge verify PATH` run as a command.

The stores are built once; every case works on its own copy (`cp -a`, reflinked where the file system
can), so cases stay independent and cheap. The station copy gets a station configuration of its own
(`store_dir` is the copy), found the documented way without a flag: `$EDGE_STATION_CONFIG`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

EDGE = Path(sys.executable).with_name("edge")
STATION = "DEMO-STATION-01"  # edge.demo.STATION_ID
CENTRAL = "DEMO-CENTRAL"  # edge.central.embedded: the demo central's id
CONFIG_ENV = "EDGE_STATION_CONFIG"  # edge.verify.witness.CONFIG_ENV
_DEMO_TIMEOUT_S = 300
_VERIFY_TIMEOUT_S = 120
_READY_TIMEOUT_S = 60


@dataclass(frozen=True)
class Item:
    """One sealed item of the pristine station store, as the case functions need to find it."""

    item: str
    path: str  # relative to the store
    sha256: str
    sealed_in_file: bool
    acquired_seq: int


@dataclass(frozen=True)
class Pristine:
    """The untouched stores and what the cases need to know about them (read once, before any copy)."""

    workdir: Path
    station_store: Path
    central_store: Path
    bundle: Path  # the station's enrollment bundle (client certificate, CA, pinned central key)
    central_url: str
    items: tuple[Item, ...]  # in acquisition order
    ledger_head: int

    def item(self, *, sealed_in_file: bool) -> Item:
        return next(i for i in self.items if i.sealed_in_file == sealed_in_file)

    @property
    def newest(self) -> Item:
        return self.items[-1]


@dataclass(frozen=True)
class Verdict:
    """What `edge verify PATH` said: its exit status and its output lines."""

    code: int
    stdout: str
    stderr: str

    @property
    def failures(self) -> list[str]:
        return [line for line in self.stdout.splitlines() if line.startswith("FAIL ")]

    def names(self, thing: str) -> bool:
        """Whether a FAIL line names ``thing`` (a note or the summary line does not count)."""
        return any(thing in line for line in self.failures)

    def __str__(self) -> str:
        return f"exit {self.code}\n{self.stdout}{self.stderr}"


def run_edge(
    *args: str, env: Mapping[str, str] | None = None, timeout_s: float = _VERIFY_TIMEOUT_S
) -> Verdict:
    done = subprocess.run(
        [str(EDGE), *args], capture_output=True, text=True, timeout=timeout_s,
        env={**os.environ, **(env or {})},
    )
    return Verdict(done.returncode, done.stdout, done.stderr)


def copy_tree(source: Path, target: Path) -> Path:
    """A private copy of a store, as cheap as the file system allows (reflinks on btrfs/xfs)."""
    subprocess.run(["cp", "-a", "--reflink=auto", str(source), str(target)], check=True)
    return target


def write_station_config(path: Path, store: Path, pristine: Pristine, central_url: str | None = None) -> Path:
    """The station configuration an installation keeps outside the store: it names the store, the
    central and the enrollment bundle (whose pinned central key `edge verify` checks receipts with)."""
    path.write_text(
        f'[station]\nid = "{STATION}"\nstore_dir = "{store}"\n'
        f'[usb]\nmount_root = "{path.parent / "media"}"\n'
        f'[uplink]\ncentral_url = "{central_url or pristine.central_url}"\n'
        f'identity_dir = "{pristine.bundle}"\n',
        encoding="utf-8",
    )
    return path


def verify_station(store: Path, config: Path) -> Verdict:
    """`edge verify STORE` with no flag: the configuration is found through `$EDGE_STATION_CONFIG`."""
    return run_edge("verify", str(store), env={CONFIG_ENV: str(config)})


def verify_central(store: Path) -> Verdict:
    """`edge verify STORE` of a central store, with no flag."""
    return run_edge("verify", str(store), env={CONFIG_ENV: str(store / "no-station-config.toml")})


def build_demo(workdir: Path) -> None:
    """The real demo, end to end: recorders offloaded by the station agent, uploaded to an embedded
    central over mutual TLS, receipts verified and kept, recorders erased after receipt."""
    done = run_edge("demo", "--recorders", "2", "--files", "2", "--file-mb", "0.5", "--workdir", str(workdir),
                    "--json", timeout_s=_DEMO_TIMEOUT_S)
    assert done.code == 0, str(done)
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["items"] == summary["receipts"] == summary["wiped"] == 4, summary
    assert summary["store_verified"] is True and summary["central_verified"] is True, summary


def read_items(store: Path) -> tuple[tuple[Item, ...], int]:
    conn = sqlite3.connect(f"file:{store / 'state.db'}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT items.item, items.path, items.sha256, items.sealed_in_file, ledger.seq FROM items "
            "JOIN ledger ON ledger.item = items.item AND ledger.type = 'acquired' ORDER BY ledger.seq"
        ).fetchall()
        head = int(conn.execute("SELECT max(seq) FROM ledger").fetchone()[0])
    finally:
        conn.close()
    return tuple(Item(r[0], r[1], r[2], bool(r[3]), int(r[4])) for r in rows), head


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def serving_central(store: Path, config_dir: Path) -> Iterator[str]:
    """`edge central --config FILE` serving ``store`` on a free loopback port until the block ends;
    yields its URL once it said READY=1 on its notify socket (the event to await, not a port poll)."""
    port = free_port()
    config = config_dir / "central.toml"
    config.write_text(
        f'[central]\nid = "{CENTRAL}"\nstore_dir = "{store}"\n'
        f'[server]\nlisten = "127.0.0.1"\nport = {port}\nnames = ["localhost", "127.0.0.1"]\n',
        encoding="utf-8",
    )
    # A notify socket path must fit in 108 bytes: not under pytest's long temporary directories.
    with tempfile.TemporaryDirectory(prefix="ntfy", dir="/tmp") as short:
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(f"{short}/notify")
        notify.settimeout(_READY_TIMEOUT_S)
        log = (config_dir / "central.log").open("wb")
        process = subprocess.Popen(
            [str(EDGE), "central", "--config", str(config)],
            env={**os.environ, "NOTIFY_SOCKET": f"{short}/notify"}, stdout=log, stderr=log,
        )
        try:
            said = b""
            while b"READY=1" not in said:
                try:
                    said += notify.recv(4096)
                except TimeoutError:
                    said_so_far = (config_dir / "central.log").read_text(errors="replace")
                    raise AssertionError(f"the central did not get ready: {said_so_far}") from None
            yield f"https://127.0.0.1:{port}"
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            finally:
                if process.returncode is None:
                    process.kill()
                    process.wait()
                log.close()
                notify.close()
