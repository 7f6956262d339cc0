"""A real Mosquitto on a free port for the MQTT tests: TLS, client certificates from a test PKI made with the
project's own certificate code (edge.pki.certs), and the agency configuration and ACL shipped in
config/mosquitto/ with their placeholders filled in (nothing else: the test broker runs those files). The
broker itself is the runtime one the demo and the benchmark use (edge.mqtt.local_broker.LocalBroker);
this module adds the test PKI and client settings for its bundles.

    pki = TestPki.create(tmp_path / "pki")
    async with running_broker(tmp_path, pki) as broker:
        settings = broker.client_settings(pki.client("STATION-A"))
        await broker.restart(graceful=False)      # SIGKILL: sessions not yet saved are lost

Under CI a missing mosquitto fails the test instead of skipping it (tests/prerequisites.py).
"""

from __future__ import annotations

import asyncio
import getpass
import shutil
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from edge.mqtt.client import MqttSettings, ProtocolVersion
from edge.mqtt.local_broker import (
    SHIPPED_ACL,
    SHIPPED_CONF,
    START_TIMEOUT_S,
    BrokerTls,
    LocalBroker,
    fill_placeholders,
    find_mosquitto,
    free_port,
)
from edge.pki.bundle import BUNDLE_CA_CERT, BUNDLE_CLIENT_CERT, BUNDLE_CLIENT_KEY
from edge.pki.certs import (
    PRIVATE_MODE,
    PUBLIC_MODE,
    alt_names,
    cert_pem,
    install_file,
    issue_ca,
    issue_leaf,
    key_pem,
    subject_name,
    utc_now,
)
from edge.pki.crl import RevokedCertificate, build_crl, write_crl
from edge.pki.names import SERVER_OU, STATION_OU
from edge.pki.tls import broker_ssl_context
from tests.prerequisites import require

__all__ = [
    "CENTRAL_ID",
    "MOSQUITTO",
    "ROOT",
    "SHIPPED_ACL",
    "SHIPPED_CONF",
    "START_TIMEOUT_S",
    "TOPIC_PREFIX",
    "MosquittoBroker",
    "TestPki",
    "fill_placeholders",
    "free_port",
    "password_broker",
    "require_mosquitto",
    "running_broker",
]

ROOT = Path(__file__).resolve().parents[2]
MOSQUITTO = find_mosquitto()
CENTRAL_ID = "TEST-CENTRAL"
TOPIC_PREFIX = "evidence"


def require_mosquitto() -> str:
    require(MOSQUITTO is not None, "needs mosquitto (apt-get install mosquitto)")
    assert MOSQUITTO is not None
    return MOSQUITTO


@dataclass
class TestPki:
    """A CA (standing in for the central's) with the broker's server certificate and client bundles."""

    __test__ = False  # not a test class, despite its name

    root: Path
    ca_cert: x509.Certificate
    ca_key: ec.EllipticCurvePrivateKey = field(repr=False)

    @classmethod
    def create(cls, root: Path, ca_name: str = CENTRAL_ID) -> TestPki:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = ec.generate_private_key(ec.SECP256R1())
        pki = cls(root, issue_ca(key, ca_name), key)
        install_file(pki.ca_file, cert_pem(pki.ca_cert), PUBLIC_MODE, replace=True)
        pki.revoke()
        return pki

    @property
    def crl_file(self) -> Path:
        return self.root / "ca.crl"

    def revoke(self, *certificates: x509.Certificate) -> None:
        """Write the CA's CRL (the broker's `crlfile`) naming exactly `certificates` (none: an empty one)."""
        now = utc_now()
        revoked = [RevokedCertificate(cert.serial_number, now, x509.ReasonFlags.superseded)
                   for cert in certificates]
        write_crl(self.crl_file, build_crl(self.ca_cert, self.ca_key, revoked, now=now))

    @property
    def ca_file(self) -> Path:
        return self.root / "ca.crt"

    def _leaf(
        self, name: str, unit: str, usage: x509.ObjectIdentifier, hosts: list[str] | None = None
    ) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = issue_leaf(
            self.ca_cert, self.ca_key, key.public_key(), subject_name(name, unit), usage,
            days=30, valid_from=None, alt_names=alt_names(hosts) if hosts else None,
        )
        return cert_pem(cert), key_pem(key)

    def server(self) -> tuple[Path, Path]:
        """The broker's certificate and key (names localhost and 127.0.0.1)."""
        cert_file, key_file = self.root / "broker.crt", self.root / "broker.key"
        if not cert_file.exists():
            names = ["localhost", "127.0.0.1"]
            cert, key = self._leaf("broker", SERVER_OU, ExtendedKeyUsageOID.SERVER_AUTH, names)
            install_file(key_file, key, PRIVATE_MODE, replace=True)
            install_file(cert_file, cert, PUBLIC_MODE, replace=True)
        return cert_file, key_file

    def client(self, name: str, unit: str = STATION_OU) -> Path:
        """A bundle directory (client.crt, client.key, ca.crt) for a client whose certificate CN is `name`."""
        bundle = self.root / f"client-{name}"
        if not bundle.exists():
            bundle.mkdir(mode=0o700)
            cert, key = self._leaf(name, unit, ExtendedKeyUsageOID.CLIENT_AUTH)
            install_file(bundle / BUNDLE_CLIENT_KEY, key, PRIVATE_MODE, replace=False)
            install_file(bundle / BUNDLE_CLIENT_CERT, cert, PUBLIC_MODE, replace=False)
            install_file(bundle / BUNDLE_CA_CERT, cert_pem(self.ca_cert), PUBLIC_MODE, replace=False)
        return bundle


class MosquittoBroker(LocalBroker):
    """The runtime `LocalBroker` (edge/mqtt/local_broker.py) with the test PKI's CA and server
    certificate, the test central id, and client settings for the test PKI's bundles."""

    def __init__(self, root: Path, pki: TestPki, *, port: int | None = None) -> None:
        self.pki = pki
        cert, key = pki.server()
        super().__init__(
            root, BrokerTls(pki.ca_file, cert, key, pki.crl_file), central_id=CENTRAL_ID,
            topic_prefix=TOPIC_PREFIX, port=port,
        )

    def client_settings(
        self,
        bundle: Path | None,
        *,
        client_id: str | None = None,
        protocol: ProtocolVersion = ProtocolVersion.V5,
        ca_file: Path | None = None,
        **overrides: object,
    ) -> MqttSettings:
        """Settings to reach this broker presenting `bundle`'s certificate (None: no certificate)."""
        tls = broker_ssl_context(ca_file=ca_file or self.pki.ca_file, bundle_dir=bundle)
        name = client_id or (bundle.name.removeprefix("client-") if bundle is not None else "anonymous")
        settings = MqttSettings(
            host=self.host, port=self.port, client_id=name, tls=tls, protocol=protocol,
            keepalive_s=10, connect_timeout_s=5.0, publish_timeout_s=10.0,
        )
        return settings if not overrides else _with(settings, overrides)

    async def start(self) -> None:
        # Under CI a missing mosquitto fails the test instead of skipping it.
        require_mosquitto()
        await super().start()

    async def reload(self) -> None:
        """SIGHUP, until mosquitto logged that it reads its configuration again (it does so in its main
        loop, before it takes the next connection; what it re-reads: README "Broker setup")."""
        assert self.process is not None and self.process.returncode is None, "not running"
        before = self.log_text().count("Reloading config.")
        self.process.send_signal(signal.SIGHUP)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        while self.log_text().count("Reloading config.") == before:  # polls a log file; proves nothing
            if loop.time() > deadline:
                raise AssertionError(f"mosquitto did not reload: {self.log_text()[-2000:]}")
            await asyncio.sleep(0.02)


def _with(settings: MqttSettings, overrides: dict[str, object]) -> MqttSettings:
    return replace(settings, **overrides)  # type: ignore[arg-type]


@asynccontextmanager
async def running_broker(root: Path, pki: TestPki) -> AsyncIterator[MosquittoBroker]:
    broker = MosquittoBroker(root / "broker", pki)
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()



async def password_broker(root: Path, pki: TestPki, users: dict[str, str]) -> MosquittoBroker:
    """A broker for password logins (TLS without client certificates, a mosquitto_passwd file): the
    `[mqtt] username`/`password` mode. Test-only: the shipped agency configuration uses certificates."""
    require_mosquitto()
    passwd_tool = shutil.which("mosquitto_passwd") or shutil.which("mosquitto_passwd", path="/usr/bin")
    require(passwd_tool is not None, "needs mosquitto_passwd (package mosquitto)")
    assert passwd_tool is not None
    broker = MosquittoBroker(root, pki)
    passwords = root / "passwd"
    passwords.touch(mode=0o600)
    for user, password in users.items():
        done = await asyncio.create_subprocess_exec(passwd_tool, "-b", str(passwords), user, password)
        assert await done.wait() == 0
    cert, key = pki.server()
    broker.conf_file.write_text(
        f"per_listener_settings false\nallow_anonymous false\npersistence false\nuser {getpass.getuser()}\n"
        f"listener {broker.port} {broker.host}\ncafile {pki.ca_file}\ncertfile {cert}\nkeyfile {key}\n"
        f"require_certificate false\npassword_file {passwords}\nlog_dest file {broker.log_file}\n"
    )
    await broker.start()
    return broker
