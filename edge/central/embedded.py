"""A central receiver in this process, set up as a real one would be: the demo's and benchmarks' central.

`EmbeddedCentral.start` does what an agency administrator does by hand: `edge central init` (CA,
server certificate, signing key), `edge central enroll STATION` with the station's ledger key, then
serves on a free local port with mutual TLS. The station is pointed at it with `uplink_config()`.
"""

from __future__ import annotations

import secrets
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.central.broker_identity import BROKER_CRL_FILE, issue_broker_certificate, issue_mqtt_identity
from edge.central.config import CentralConfig, CentralLayout
from edge.central.console.credentials import hash_password, new_totp_secret, totp_uri
from edge.central.console.enrolments import enrol_totp
from edge.central.console.state import CONSOLE
from edge.central.identity import enroll_station, init_central
from edge.central.index import Role
from edge.central.revocation import update_crl
from edge.central.service import RunningCentral, start_central
from edge.central.sqlite import SqliteIndex
from edge.custody.keys import StationKey, load_public_key
from edge.durable.files import create_private_file, ensure_private_dir
from edge.ingest.store import StoreLayout
from edge.pki.bundle import BUNDLE_CA_CERT


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@dataclass
class EmbeddedCentral:
    config: CentralConfig
    running: RunningCentral
    bundle_dir: Path

    @property
    def url(self) -> str:
        return str(self.running.url)

    @property
    def console_url(self) -> str:
        """The auditor console's own listener (password sign-in)."""
        return str(self.running.console_url)

    @property
    def store_dir(self) -> Path:
        return self.config.central.store_dir

    @classmethod
    def make_config(
        cls, store_dir: Path, *, port: int | None = None, mqtt: dict[str, Any] | None = None, **uploads: Any
    ) -> CentralConfig:
        """The demo central's configuration; `mqtt`: its [mqtt] section (None: no MQTT receiver)."""
        return CentralConfig.model_validate(
            {
                "central": {"id": "DEMO-CENTRAL", "store_dir": str(store_dir)},
                "server": {
                    "listen": "127.0.0.1",
                    "port": port or free_port(),
                    "names": ["localhost", "127.0.0.1"],
                },
                "uploads": uploads,
                # The console's own listener (password sign-in without a certificate), loopback only.
                "console": {"listen": "127.0.0.1", "port": 0},
                **({"mqtt": mqtt} if mqtt is not None else {}),
            }
        )

    @classmethod
    async def start(
        cls, workdir: Path, station_id: str, station_store: Path, **uploads: Any
    ) -> EmbeddedCentral:
        config = cls.make_config(workdir / "central-store", **uploads)
        bundle_dir = cls.initialise(config, workdir, station_id, station_store)
        return await cls.serve(config, bundle_dir)

    @classmethod
    def initialise(cls, config: CentralConfig, workdir: Path, station_id: str, station_store: Path) -> Path:
        """`edge central init`, then `edge central enroll STATION` unless a bundle from an earlier run in
        the same workdir exists; returns the station's bundle directory."""
        init_central(config)
        bundle_dir = workdir / "station-identity"
        if not (bundle_dir / "enrollment.json").is_file():
            enroll(config, station_id, station_store, bundle_dir)
        return bundle_dir

    @classmethod
    async def serve(cls, config: CentralConfig, bundle_dir: Path) -> EmbeddedCentral:
        """Serve an initialised central (`initialise`) on its configured port."""
        running = await start_central(config)
        return cls(config, running, bundle_dir)

    def uplink_config(self) -> dict[str, Any]:
        """The station's [uplink] section pointing at this central."""
        return {"central_url": self.url, "identity_dir": str(self.bundle_dir)}

    def console_account(self, name: str, password_file: Path) -> None:
        """A supervisor account for the auditor console (as `edge central account add` and `grant` make
        one), with a random password and a TOTP secret (the console requires a second factor by default)
        written to ``password_file`` (mode 0600), never printed: the password on the first line, the
        otpauth URI for an authenticator app on the second."""
        password = secrets.token_urlsafe(18)
        totp_secret = new_totp_secret()
        create_private_file(password_file)
        password_file.write_text(f"{password}\n{totp_uri(name, totp_secret)}\n", encoding="utf-8")
        console = self.running.parts.console
        if console.account(name) is None:
            console.create_account(name, hash_password(password), by="edge-demo")
        else:  # a demo run again in the same --workdir
            console.set_password(name, hash_password(password), by="edge-demo")
        key = self.running.app[CONSOLE].secret_key
        if key is None:
            raise RuntimeError(f"the console key {self.config.layout.console_key} is unusable (logged)")
        enrol_totp(console, key, name, totp_secret, by="edge-demo")
        console.grant(name, Role.SUPERVISOR, (), by="edge-demo", reason="the demo's auditor")

    def signing_public_key(self) -> Ed25519PublicKey:
        return load_public_key(self.bundle_dir / "central-signing.pub")

    async def stop(self) -> None:
        await self.running.stop()


def issue_mqtt_identities(
    config: CentralConfig, identity_dir: Path, broker_dir: Path, broker_names: list[str]
) -> None:
    """What an administrator does once with `edge central mqtt-identity` and `edge central broker-cert`:
    the central's broker client bundle and the broker's server certificate, both from the central's CA.
    Kept from an earlier run in the same workdir (the CA is kept too, so they still fit)."""
    if not (identity_dir / BUNDLE_CA_CERT).is_file():
        index = SqliteIndex.open(CentralLayout(config.central.store_dir).index_db)
        try:
            issue_mqtt_identity(config, index=index, out_dir=identity_dir)
        finally:
            index.close()
    if not (broker_dir / BUNDLE_CA_CERT).is_file():
        issue_broker_certificate(config, names=broker_names, out_dir=broker_dir)
    # The current revocation list for the broker's crlfile, renewed at every run (it has a next update).
    index = SqliteIndex.open(CentralLayout(config.central.store_dir).index_db)
    try:
        update_crl(config, index, copy_to=broker_dir / BROKER_CRL_FILE)
    finally:
        index.close()


def enroll(config: CentralConfig, station_id: str, station_store: Path, bundle_dir: Path) -> None:
    """Enroll a station by its store: its ledger key is made now if the store is new."""
    layout = StoreLayout(station_store)
    ensure_private_dir(layout.root)
    ensure_private_dir(layout.keys_dir)
    key = StationKey.load_or_create(layout.private_key)
    assert key.public_path is not None
    enrollment = enroll_station(config, station_id, signing_key_pub=key.public_path, out_dir=bundle_dir)
    assert enrollment.signing_public_key_b64 is not None
    index = SqliteIndex.open(CentralLayout(config.central.store_dir).index_db)
    try:
        index.enroll_station(station_id, enrollment.signing_public_key_b64, enrollment.cert_sha256)
    finally:
        index.close()
