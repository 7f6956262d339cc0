"""Several central receivers sharing one PostgreSQL database and one Ceph bucket, for the tests of the
shared tus store (tests/central/test_tus_shared_store.py).

Each receiver has a store directory of its own (a store is locked by one receiver) holding the same
identity (the CA, the signing key, the console key), as an agency's receivers do: the first is made with
`edge central init`, the others are copies of it. A receiver runs in this process (:func:`start_central`)
or as an `edge central run` process of its own that a test can SIGKILL.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from edge.central.config import CentralConfig, load_central_config
from edge.central.console.secret_key import ConsoleSecretKey
from edge.central.identity import init_central
from tests.central.ceph import CephGateway
from tests.central.conftest import PG_PASSWORD_ENV, free_port
from tests.central.pg import PostgresDatabaseUnderTest
from tests.central.s3 import SECRET_ENV, new_bucket

PART_MB = 5


@pytest.fixture
def site(
    tmp_path: Path, pg_database: PostgresDatabaseUnderTest, ceph_gateway: CephGateway,
    monkeypatch: pytest.MonkeyPatch,
) -> ReceiverSite:
    """A site of the test's own: a fresh database, a new bucket, the secrets in the environment (a module
    uses it with ``from tests.central.receivers import site as site``)."""
    monkeypatch.setenv(PG_PASSWORD_ENV, pg_database.password)
    monkeypatch.setenv(SECRET_ENV, ceph_gateway.secret_access_key)
    return ReceiverSite(tmp_path, pg_database, ceph_gateway, new_bucket(ceph_gateway))


@dataclass(frozen=True)
class ReceiverSite:
    """Where the receivers of one test keep their stores, and what they share."""

    workdir: Path
    pg: PostgresDatabaseUnderTest
    gateway: CephGateway
    bucket: str
    # The tus parts' own bucket ([central] objects staging_bucket); None: they go in ``bucket``.
    staging_bucket: str | None = None

    def config_file(self, name: str, *, uploads: str = "", tls: bool = False) -> Path:
        """A configuration of receiver ``name`` (development mode unless ``tls``: plain HTTP on loopback,
        the station named by a header), its store a copy of the first receiver's identity."""
        store = self.workdir / f"store-{name}"
        path = self.workdir / f"central-{name}.toml"
        staging = "" if self.staging_bucket is None else f', staging_bucket = "{self.staging_bucket}"'
        path.write_text(
            f'[central]\nid = "central-test"\nstore_dir = "{store}"\n'
            f'index = {{type = "postgresql", url = "{self.pg.url}", password = "env:{PG_PASSWORD_ENV}"}}\n'
            f'objects = {{type = "s3", endpoint = "{self.gateway.endpoint}", bucket = "{self.bucket}", '
            f'region = "{self.gateway.region}", access_key_id = "{self.gateway.access_key_id}", '
            f'secret_access_key = "env:{SECRET_ENV}", part_size_mb = {PART_MB}{staging}}}\n'
            f'[server]\nlisten = "127.0.0.1"\nport = {free_port()}\n'
            f'insecure_plain_http = {str(not tls).lower()}\n'
            'names = ["localhost", "127.0.0.1"]\n'
            f'[uploads]\ns3_part_mb = {PART_MB}\n{uploads}'
            '[console]\nlisten = "127.0.0.1"\nport = 0\n',
            encoding="utf-8",
        )
        first = self.workdir / "store-first"
        if not first.exists():
            config = load_central_config(path)
            init_central(config)
            if not config.layout.console_key.exists():  # made at the first start otherwise: shared too
                ConsoleSecretKey.create(config.layout.console_key)
            shutil.copytree(store, first)
        elif not store.exists():
            shutil.copytree(first, store)
        return path

    def config(self, name: str, *, uploads: str = "", tls: bool = False) -> CentralConfig:
        return load_central_config(self.config_file(name, uploads=uploads, tls=tls))


class ReceiverProcess:
    """`edge central run` as a process of its own (the environment carries the secrets' variables)."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.config = load_central_config(config_path)
        self.url = f"http://127.0.0.1:{self.config.server.port}"
        self.log = config_path.with_suffix(".log")
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "edge.cli", "central", "run", "--config", str(self.config_path)],
                stdout=log, stderr=subprocess.STDOUT,
            )
        async with aiohttp.ClientSession() as session:
            for _ in range(600):
                assert self.process.poll() is None, self.log.read_text(errors="replace")
                try:
                    async with session.get(f"{self.url}/readyz") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)  # polling for the listener to come up, not proving an absence
        raise AssertionError(f"the receiver did not come up: {self.log.read_text(errors='replace')}")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no clean-up, connections cut as by a power loss of the host."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
