"""Central identity: CA, server and client certificates, enrollment bundles, and real mTLS handshakes.

Every TLS test runs a real asyncio TLS server on 127.0.0.1 (port 0) with `server_ssl_context` and
connects with a real client context, so what is asserted is what OpenSSL enforces.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import ssl
import stat
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge.central.config import CentralConfig
from edge.central.identity import (
    CentralIdentity,
    enroll_reader,
    enroll_station,
    init_central,
    load_signing_key,
    server_ssl_context,
)
from edge.custody.keys import StationKey, key_id_of
from edge.pki.bundle import read_bundle
from edge.pki.certs import certificate_sha256
from edge.pki.names import IdentityError, PeerIdentityError
from edge.pki.tls import client_ssl_context, peer_identity

STATION = "ZJ-HZ-XH-0001"


def _config(store: Path, central_id: str = "central-hq", **server: Any) -> CentralConfig:
    return CentralConfig.model_validate(
        {"central": {"id": central_id, "store_dir": str(store)}, "server": {"port": 8443, **server}}
    )


@pytest.fixture
def config(tmp_path: Path) -> CentralConfig:
    return _config(tmp_path / "central")


@pytest.fixture
def initialised(config: CentralConfig) -> CentralIdentity:
    return init_central(config)


@pytest.fixture
def station_pub(tmp_path: Path) -> Path:
    key = StationKey.load_or_create(tmp_path / "station" / "signing.key")
    assert key.public_path is not None
    return key.public_path


@pytest.fixture
def bundle(config: CentralConfig, initialised: CentralIdentity, station_pub: Path, tmp_path: Path) -> Path:
    enroll_station(config, STATION, signing_key_pub=station_pub, out_dir=tmp_path / "bundle")
    return tmp_path / "bundle"


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- a real TLS server ------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What each side saw of one connection attempt."""

    server_peercert: dict[str, Any] | None = None
    client_received: bytes = b""
    client_error: BaseException | None = None
    server_accepted: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


async def _connect(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext, *, server_hostname: str = "127.0.0.1"
) -> Outcome:
    outcome = Outcome()
    handled = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # asyncio calls this only after the server side of the handshake succeeded.
        outcome.server_accepted = True
        outcome.server_peercert = writer.get_extra_info("peercert")
        outcome.extra["version"] = writer.get_extra_info("ssl_object").version()
        writer.write(b"accepted")
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        handled.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    try:
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_context, server_hostname=server_hostname
            )
        except (ssl.SSLError, ConnectionError) as exc:
            outcome.client_error = exc
            return outcome
        try:
            # TLS 1.3: a refused client certificate shows up as an alert on the first read.
            outcome.client_received = await reader.read()
        except (ssl.SSLError, ConnectionError) as exc:
            outcome.client_error = exc
        finally:
            writer.close()
            with contextlib.suppress(ssl.SSLError, ConnectionError):
                await writer.wait_closed()
        if outcome.server_accepted:
            await handled.wait()
    finally:
        server.close()
        await server.wait_closed()
    return outcome


def _mixed_bundle(tmp_path: Path, name: str, *, cert: Path, key: Path, ca: Path) -> Path:
    """A directory laid out like a bundle, from arbitrary pieces (to present foreign certificates)."""
    target = tmp_path / name
    target.mkdir()
    shutil.copy(cert, target / "client.crt")
    shutil.copy(key, target / "client.key")
    os.chmod(target / "client.key", 0o600)
    shutil.copy(ca, target / "ca.crt")
    return target


def _refused(outcome: Outcome) -> None:
    assert not outcome.server_accepted, "the server accepted the connection"
    assert outcome.client_received != b"accepted"
    assert outcome.client_error is not None or outcome.client_received == b""


# -- handshakes -------------------------------------------------------------------------------------------


async def test_enrolled_station_is_accepted_and_identified(config: CentralConfig, bundle: Path) -> None:
    outcome = await _connect(server_ssl_context(config), client_ssl_context(bundle))
    assert outcome.client_error is None
    assert outcome.client_received == b"accepted"
    assert peer_identity(outcome.server_peercert) == (STATION, "station")


@pytest.mark.parametrize("hostname", ["localhost", "::1"])
async def test_server_certificate_names(config: CentralConfig, bundle: Path, hostname: str) -> None:
    # The connection goes to 127.0.0.1; only the name checked against the certificate changes.
    outcome = await _connect(server_ssl_context(config), client_ssl_context(bundle), server_hostname=hostname)
    assert outcome.client_received == b"accepted"


async def test_client_refuses_a_server_name_not_in_its_certificate(
    config: CentralConfig, bundle: Path
) -> None:
    outcome = await _connect(
        server_ssl_context(config), client_ssl_context(bundle), server_hostname="central.example.org"
    )
    assert isinstance(outcome.client_error, ssl.SSLCertVerificationError)
    assert not outcome.server_accepted


async def test_certificate_from_another_ca_is_refused(
    config: CentralConfig, bundle: Path, station_pub: Path, tmp_path: Path
) -> None:
    other = _config(tmp_path / "other-central", "central-other")
    init_central(other)
    enroll_station(other, STATION, signing_key_pub=station_pub, out_dir=tmp_path / "other-bundle")
    # Same station id, same subject, but issued by another CA; it trusts our server (our ca.crt).
    forged = _mixed_bundle(
        tmp_path,
        "forged",
        cert=tmp_path / "other-bundle" / "client.crt",
        key=tmp_path / "other-bundle" / "client.key",
        ca=bundle / "ca.crt",
    )
    _refused(await _connect(server_ssl_context(config), client_ssl_context(forged)))
    # Control: the forged bundle itself works where its CA is trusted, so the CA is the only reason.
    lax = server_ssl_context(config)
    lax.load_verify_locations(cafile=str(other.layout.ca_cert))
    assert (await _connect(lax, client_ssl_context(forged))).client_received == b"accepted"


async def test_station_refuses_a_server_of_another_ca(
    config: CentralConfig, bundle: Path, tmp_path: Path
) -> None:
    other = _config(tmp_path / "other-central", "central-other")
    init_central(other)
    outcome = await _connect(server_ssl_context(other), client_ssl_context(bundle))
    assert isinstance(outcome.client_error, ssl.SSLCertVerificationError)
    assert not outcome.server_accepted


async def test_no_client_certificate_completes_the_handshake_without_a_peer(
    config: CentralConfig, bundle: Path
) -> None:
    """A certificate is asked for, not required: load balancers probe /healthz and /readyz without one.
    The application refuses every other route to such a connection
    (tests/central/test_health_metrics.py); here: the handshake names no peer."""
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.load_verify_locations(cafile=str(bundle / "ca.crt"))
    outcome = await _connect(server_ssl_context(config), anonymous)
    assert outcome.client_received == b"accepted" and not outcome.server_peercert
    # Control: a context that requires one refuses the same client.
    required = server_ssl_context(config)
    required.verify_mode = ssl.CERT_REQUIRED
    _refused(await _connect(required, anonymous))


async def test_expired_certificate_is_refused(
    config: CentralConfig, initialised: CentralIdentity, station_pub: Path, tmp_path: Path
) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    enrollment = enroll_station(
        config, STATION, signing_key_pub=station_pub, out_dir=tmp_path / "expired", valid_from=past, days=1
    )
    assert enrollment.not_after < dt.datetime.now(dt.UTC)
    _refused(await _connect(server_ssl_context(config), client_ssl_context(tmp_path / "expired")))


async def test_not_yet_valid_certificate_is_refused(
    config: CentralConfig, initialised: CentralIdentity, station_pub: Path, tmp_path: Path
) -> None:
    future = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    enroll_station(
        config, STATION, signing_key_pub=station_pub, out_dir=tmp_path / "future", valid_from=future
    )
    _refused(await _connect(server_ssl_context(config), client_ssl_context(tmp_path / "future")))


async def test_server_certificate_cannot_act_as_a_client(
    config: CentralConfig, bundle: Path, tmp_path: Path
) -> None:
    # Issued by our CA, but for serverAuth only: OpenSSL's purpose check refuses it as a client.
    layout = config.layout
    impostor = _mixed_bundle(
        tmp_path, "impostor", cert=layout.server_cert, key=layout.server_key, ca=layout.ca_cert
    )
    _refused(await _connect(server_ssl_context(config), client_ssl_context(impostor)))


def _allow_tls_below_1_2(context: ssl.SSLContext, *, only: bool = False) -> ssl.SSLContext:
    """Let `context` speak TLS 1.0 and 1.1 (with `only`, nothing newer): no version floor, and OpenSSL
    security level 0 (from level 1 up, OpenSSL itself refuses the SHA-1 handshake signatures of
    TLS < 1.2, whatever the floor says)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # setting up an old protocol is deprecated too
        context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        if only:
            context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


async def test_tls_below_1_2_is_refused(config: CentralConfig, bundle: Path) -> None:
    # A client that speaks only TLS 1.0 and 1.1 and is willing to (security level 0), so that a refusal
    # cannot come from the client's own OpenSSL policy. (Without SECLEVEL=0 it refuses by itself with
    # NO_CIPHERS_AVAILABLE, and the test would pass against a server that accepts TLS 1.0.)
    old = _allow_tls_below_1_2(client_ssl_context(bundle), only=True)
    _refused(await _connect(server_ssl_context(config), old))
    # Still refused with the server's cipher policy lowered too: the server's version floor refuses,
    # not only OpenSSL's default security level.
    floor_only = server_ssl_context(config)
    floor_only.set_ciphers("DEFAULT:@SECLEVEL=0")
    _refused(await _connect(floor_only, old))
    # Control: the same client with the same certificates is served by a server without the floor, so
    # this probe does see a server that accepts TLS < 1.2.
    outcome = await _connect(_allow_tls_below_1_2(server_ssl_context(config)), old)
    assert outcome.client_received == b"accepted"
    assert outcome.extra["version"] in ("TLSv1", "TLSv1.1")


async def test_reader_certificate_is_an_auditor_not_a_station(
    config: CentralConfig, initialised: CentralIdentity, tmp_path: Path
) -> None:
    enroll_reader(config, "auditor.zhang", out_dir=tmp_path / "reader")
    outcome = await _connect(server_ssl_context(config), client_ssl_context(tmp_path / "reader"))
    # The central's authoriser refuses it at station endpoints (test_app: 403, OU='auditor').
    assert peer_identity(outcome.server_peercert) == ("auditor.zhang", "auditor")


def test_context_settings(config: CentralConfig, bundle: Path) -> None:
    server = server_ssl_context(config)
    assert server.minimum_version == ssl.TLSVersion.TLSv1_2
    # Asked for, verified when presented; required per route by the application (see above).
    assert server.verify_mode == ssl.CERT_OPTIONAL
    # Only our CA: no system trust store.
    assert [c["subject"] for c in server.get_ca_certs()] == [
        ((("organizationName", "evidence-edge"),), (("commonName", "central-hq evidence CA"),))
    ]
    client = client_ssl_context(bundle)
    assert client.minimum_version == ssl.TLSVersion.TLSv1_2
    assert client.check_hostname and client.verify_mode == ssl.CERT_REQUIRED
    assert len(client.get_ca_certs()) == 1


def test_server_context_before_init_says_what_to_do(config: CentralConfig) -> None:
    with pytest.raises(IdentityError, match=r"ca\.crt, .*server\.key missing: run `edge central init"):
        server_ssl_context(config)


def test_server_key_readable_by_others_is_refused(
    config: CentralConfig, initialised: CentralIdentity
) -> None:
    os.chmod(config.layout.server_key, 0o640)
    with pytest.raises(IdentityError, match="mode 0640"):
        server_ssl_context(config)


def test_client_key_readable_by_others_is_refused(bundle: Path) -> None:
    os.chmod(bundle / "client.key", 0o644)
    with pytest.raises(IdentityError, match="mode 0644"):
        client_ssl_context(bundle)


# -- peer identity ----------------------------------------------------------------------------------------


def _subject(*pairs: tuple[str, str]) -> dict[str, Any]:
    return {"subject": tuple(((k, v),) for k, v in pairs)}


@pytest.mark.parametrize(
    ("peercert", "message"),
    [
        (None, "no client certificate"),
        ({}, "no client certificate"),
        (_subject(("commonName", "S1")), "exactly one CN and one OU"),
        (_subject(("organizationalUnitName", "station")), "exactly one CN and one OU"),
        (
            _subject(("commonName", "S1"), ("commonName", "S2"), ("organizationalUnitName", "station")),
            "exactly one CN and one OU",
        ),
        (
            _subject(("commonName", "S1"), ("organizationalUnitName", "a"), ("organizationalUnitName", "b")),
            "exactly one CN and one OU",
        ),
        (_subject(("commonName", "../S1"), ("organizationalUnitName", "station")), "station id"),
        (_subject(("commonName", ""), ("organizationalUnitName", "station")), "station id"),
        ({"subject": 42}, "malformed"),
        ({"subject": ((("commonName",),),)}, "malformed"),
    ],
)
def test_peer_identity_refuses_unclear_subjects(peercert: Mapping[str, Any] | None, message: str) -> None:
    with pytest.raises(PeerIdentityError, match=message):
        peer_identity(peercert)


# -- init -------------------------------------------------------------------------------------------------


def test_init_creates_everything_with_private_modes(
    config: CentralConfig, initialised: CentralIdentity
) -> None:
    layout = config.layout
    assert _mode(layout.identity_dir) == 0o700
    for secret in (layout.ca_key, layout.server_key, layout.signing_key):
        assert _mode(secret) == 0o600, secret
    for public in (layout.ca_cert, layout.server_cert, layout.signing_pub):
        assert _mode(public) == 0o600, public  # public material, but nothing in a store is for others
    assert len(initialised.created) == 3 and initialised.kept == ()
    assert initialised.ca_sha256 == certificate_sha256(_cert(layout.ca_cert))
    assert initialised.signing_key.key_id == load_signing_key(config).key_id


def test_ca_certificate_profile(config: CentralConfig, initialised: CentralIdentity) -> None:
    ca = _cert(config.layout.ca_cert)
    assert ca.issuer == ca.subject
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    years = (ca.not_valid_after_utc - ca.not_valid_before_utc).days / 365
    assert 9.9 < years < 10.1
    public = ca.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp256r1"


def test_server_certificate_profile(config: CentralConfig, initialised: CentralIdentity) -> None:
    server = _cert(config.layout.server_cert)
    server.verify_directly_issued_by(_cert(config.layout.ca_cert))
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost"} <= set(sans.get_values_for_type(x509.DNSName))
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_init_is_idempotent(config: CentralConfig, initialised: CentralIdentity) -> None:
    layout = config.layout
    files = [layout.ca_cert, layout.ca_key, layout.server_cert, layout.server_key, layout.signing_key]
    before = {path: path.read_bytes() for path in files}
    again = init_central(config)
    assert again.created == ()
    assert len(again.kept) == 3
    assert any(line.startswith("CA (sha256 " + initialised.ca_sha256) for line in again.kept)
    assert {path: path.read_bytes() for path in files} == before
    assert again.signing_key.key_id == initialised.signing_key.key_id


def test_new_server_names_reissue_only_the_server_certificate(
    config: CentralConfig, initialised: CentralIdentity, tmp_path: Path
) -> None:
    layout = config.layout
    ca_before, signing_before = layout.ca_key.read_bytes(), layout.signing_key.read_bytes()
    renamed = _config(layout.store_dir, names=["central.example.org", "10.1.2.3"])
    result = init_central(renamed)
    assert [line for line in result.created if "reissued: server.names changed" in line]
    sans = _cert(layout.server_cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["central.example.org"]
    assert layout.ca_key.read_bytes() == ca_before and layout.signing_key.read_bytes() == signing_before


def test_configured_server_certificate_is_left_alone(tmp_path: Path) -> None:
    config = _config(tmp_path / "c", tls_cert="/etc/pki/central.crt", tls_key="/etc/pki/central.key")
    result = init_central(config)
    assert not config.layout.server_cert.exists()
    assert any("not managed by init" in line for line in result.kept)


def test_interrupted_init_completes_the_ca_from_its_key(
    config: CentralConfig, initialised: CentralIdentity
) -> None:
    layout = config.layout
    key_before = layout.ca_key.read_bytes()
    layout.ca_cert.unlink()
    result = init_central(config)
    assert layout.ca_key.read_bytes() == key_before
    assert any(line.startswith("CA") for line in result.created)
    # The old server certificate is from the same key, so it still verifies and is kept.
    assert any(line.startswith("server certificate") for line in result.kept)


def test_ca_certificate_without_its_key_is_not_replaced(
    config: CentralConfig, initialised: CentralIdentity
) -> None:
    config.layout.ca_key.unlink()
    cert_before = config.layout.ca_cert.read_bytes()
    with pytest.raises(IdentityError, match="Restore the key from backup"):
        init_central(config)
    assert config.layout.ca_cert.read_bytes() == cert_before
    assert not config.layout.ca_key.exists()


def test_exposed_ca_key_is_refused(config: CentralConfig, initialised: CentralIdentity) -> None:
    os.chmod(config.layout.ca_key, 0o644)
    with pytest.raises(IdentityError, match=r"mode 0644.*group or others"):
        init_central(config)


def test_replaced_ca_certificate_is_detected(
    config: CentralConfig, initialised: CentralIdentity, tmp_path: Path
) -> None:
    other = _config(tmp_path / "other")
    init_central(other)
    shutil.copy(other.layout.ca_cert, config.layout.ca_cert)
    with pytest.raises(IdentityError, match="do not belong together"):
        init_central(config)


def test_stale_temporaries_of_dead_processes_are_removed(config: CentralConfig) -> None:
    config.layout.identity_dir.mkdir(parents=True)
    stale = config.layout.identity_dir / ".ca.key.99999999.abcd1234.tmp"
    stale.write_bytes(b"half a key")
    init_central(config)
    assert not stale.exists()


def test_signing_key_is_never_made_outside_init(config: CentralConfig) -> None:
    with pytest.raises(IdentityError, match="edge central init"):
        load_signing_key(config)
    assert not config.layout.signing_key.exists()


# -- enrollment -------------------------------------------------------------------------------------------


def test_station_bundle_contents(
    config: CentralConfig, initialised: CentralIdentity, station_pub: Path, tmp_path: Path
) -> None:
    out = tmp_path / "deep" / "bundle"
    enrollment = enroll_station(config, STATION, signing_key_pub=station_pub, out_dir=out)
    assert sorted(p.name for p in out.iterdir()) == [
        "ca.crt",
        "central-signing.pub",
        "client.crt",
        "client.key",
        "enrollment.json",
    ]
    assert _mode(out) == 0o700 and _mode(out / "client.key") == 0o600
    doc = json.loads((out / "enrollment.json").read_text(encoding="utf-8"))
    assert set(doc) == {"station", "central_id", "central_signing_key_id", "cert_sha256", "issued"}
    assert doc["station"] == STATION and doc["central_id"] == "central-hq"
    assert doc["central_signing_key_id"] == initialised.signing_key.key_id
    assert doc["cert_sha256"] == enrollment.cert_sha256 == certificate_sha256(_cert(out / "client.crt"))
    assert (out / "ca.crt").read_bytes() == config.layout.ca_cert.read_bytes()
    assert (out / "central-signing.pub").read_bytes() == config.layout.signing_pub.read_bytes()
    station_key = StationKey.load_or_create(station_pub.with_name("signing.key"))
    assert enrollment.signing_public_key_b64 == station_key.public_key_b64

    cert = _cert(out / "client.crt")
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == STATION
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "station"
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 730
    cert.verify_directly_issued_by(_cert(config.layout.ca_cert))

    read = read_bundle(out)
    assert (read.role, read.name, read.central_id) == ("station", STATION, "central-hq")
    assert key_id_of(read.central_public_key) == initialised.signing_key.key_id
    assert read.client_key == out / "client.key"


def test_reader_bundle(config: CentralConfig, initialised: CentralIdentity, tmp_path: Path) -> None:
    enrollment = enroll_reader(config, "auditor.li", out_dir=tmp_path / "r")
    assert enrollment.role == "auditor" and enrollment.signing_public_key_b64 is None
    doc = json.loads((tmp_path / "r" / "enrollment.json").read_text(encoding="utf-8"))
    assert doc["reader"] == "auditor.li" and "station" not in doc
    assert read_bundle(tmp_path / "r").role == "auditor"
    cert = _cert(tmp_path / "r" / "client.crt")
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 365


@pytest.mark.parametrize("station_id", ["", "../etc", "a b", "-rf", "a/b", "x" * 65, "站"])
def test_enroll_refuses_bad_station_ids(
    config: CentralConfig, initialised: CentralIdentity, station_pub: Path, tmp_path: Path, station_id: str
) -> None:
    with pytest.raises(IdentityError, match="station id"):
        enroll_station(config, station_id, signing_key_pub=station_pub, out_dir=tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_enroll_before_init(config: CentralConfig, station_pub: Path, tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="edge central init"):
        enroll_station(config, STATION, signing_key_pub=station_pub, out_dir=tmp_path / "b")


def test_enroll_never_writes_over_a_bundle(config: CentralConfig, bundle: Path, station_pub: Path) -> None:
    before = {p.name: p.read_bytes() for p in bundle.iterdir()}
    with pytest.raises(IdentityError, match="not empty"):
        enroll_station(config, STATION, signing_key_pub=station_pub, out_dir=bundle)
    assert {p.name: p.read_bytes() for p in bundle.iterdir()} == before


@pytest.mark.parametrize("content", [b"", b"not a key", b"\x00" * 100])
def test_enroll_refuses_a_bad_signing_key(
    config: CentralConfig, initialised: CentralIdentity, tmp_path: Path, content: bytes
) -> None:
    bad = tmp_path / "bad.pub"
    bad.write_bytes(content)
    with pytest.raises(IdentityError, match="--signing-key"):
        enroll_station(config, STATION, signing_key_pub=bad, out_dir=tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_enroll_refuses_the_central_key_as_station_key(
    config: CentralConfig, initialised: CentralIdentity, tmp_path: Path
) -> None:
    with pytest.raises(IdentityError, match="central's own signing key"):
        enroll_station(config, STATION, signing_key_pub=config.layout.signing_pub, out_dir=tmp_path / "b")


def test_enroll_refuses_nonpositive_validity(
    config: CentralConfig, initialised: CentralIdentity, station_pub: Path, tmp_path: Path
) -> None:
    with pytest.raises(IdentityError, match="positive number of days"):
        enroll_station(config, STATION, signing_key_pub=station_pub, out_dir=tmp_path / "b", days=0)


def test_failed_bundle_write_leaves_nothing(
    config: CentralConfig,
    initialised: CentralIdentity,
    station_pub: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from edge.pki import bundle as pki_bundle

    real = pki_bundle.install_file  # type: ignore[attr-defined]
    calls: list[Path] = []

    def failing(path: Path, data: bytes, mode: int, *, replace: bool) -> bool:
        calls.append(path)
        if path.name == "central-signing.pub":
            raise OSError(28, "No space left on device")
        return real(path, data, mode, replace=replace)

    monkeypatch.setattr(pki_bundle, "install_file", failing)
    with pytest.raises(OSError, match="No space"):
        enroll_station(config, STATION, signing_key_pub=station_pub, out_dir=tmp_path / "b")
    assert [p.name for p in calls][:3] == ["client.key", "client.crt", "ca.crt"]
    assert not (tmp_path / "b").exists()


def test_read_bundle_detects_replaced_files(bundle: Path, tmp_path: Path, config: CentralConfig) -> None:
    other = _config(tmp_path / "other", "central-other")
    init_central(other)
    enroll_reader(other, "x", out_dir=tmp_path / "x")
    shutil.copy(tmp_path / "x" / "client.crt", bundle / "client.crt")
    with pytest.raises(IdentityError, match=r"client\.crt has sha256"):
        read_bundle(bundle)
    shutil.copy(tmp_path / "x" / "central-signing.pub", bundle / "central-signing.pub")
    with pytest.raises(IdentityError, match=r"central-signing\.pub is key"):
        read_bundle(bundle)


@pytest.mark.parametrize(
    "document",
    [
        b"[]",
        b'{"station": "S", "station": "T"}',
        b'{"station": "S", "central_id": "c", "central_signing_key_id": "k", "cert_sha256": "x", '
        b'"issued": 5}',
        b'{"station": "S", "central_id": "c", "central_signing_key_id": "k", "cert_sha256": "x", '
        b'"issued": "t", "extra": "e"}',
        b"\xff\xfe",
    ],
)
def test_read_bundle_refuses_malformed_enrollment(bundle: Path, document: bytes) -> None:
    (bundle / "enrollment.json").write_bytes(document)
    with pytest.raises(IdentityError, match=r"enrollment\.json"):
        read_bundle(bundle)


# -- nothing secret in reprs or logs ---------------------------------------------------------------------


def _key_material(path: Path) -> list[str]:
    lines = path.read_text(encoding="ascii").splitlines()
    return [line for line in lines if line and not line.startswith("-----")]


def test_nothing_secret_in_reprs_or_logs(
    config: CentralConfig, station_pub: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    identity = init_central(config)
    enrollment = enroll_station(config, STATION, signing_key_pub=station_pub, out_dir=tmp_path / "b")
    reader = enroll_reader(config, "auditor.w", out_dir=tmp_path / "r")
    bundle = read_bundle(tmp_path / "b")
    layout = config.layout
    secrets_ = [
        *_key_material(layout.ca_key),
        *_key_material(layout.server_key),
        *_key_material(layout.signing_key),
        *_key_material(tmp_path / "b" / "client.key"),
        *_key_material(tmp_path / "r" / "client.key"),
    ]
    assert len(secrets_) >= 5
    signing_raw = StationKey.load_or_create(layout.signing_key)._private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    texts = [repr(identity), repr(enrollment), repr(reader), repr(bundle), caplog.text]
    for text in texts:
        assert "PRIVATE KEY" not in text
        assert signing_raw.hex() not in text
        for secret in secrets_:
            assert secret not in text
    assert "issued station certificate for ZJ-HZ-XH-0001" in caplog.text
