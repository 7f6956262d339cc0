"""Enrollment bundles: the directory a station (or auditor) receives from the central, holding its
client certificate and key, the central's CA to trust, and the central's signing key to pin.

The central writes bundles (`write_bundle`); stations and the auditor tools read them (`read_bundle`),
which cross-checks the pinned key and the certificate against the enrollment record.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.custody.canonical import parse_json
from edge.custody.errors import CustodyError
from edge.custody.keys import key_id_of, load_public_key
from edge.pki.certs import PRIVATE_MODE, PUBLIC_MODE, certificate_sha256, install_file, load_cert, read_pem
from edge.pki.names import IdentityError, checked_name, validate_reader_name, validate_station_id

BUNDLE_CLIENT_CERT = "client.crt"
BUNDLE_CLIENT_KEY = "client.key"
BUNDLE_CA_CERT = "ca.crt"
BUNDLE_CENTRAL_SIGNING_PUB = "central-signing.pub"
BUNDLE_ENROLLMENT = "enrollment.json"
BUNDLE_FILES = (
    BUNDLE_CLIENT_KEY,
    BUNDLE_CLIENT_CERT,
    BUNDLE_CA_CERT,
    BUNDLE_CENTRAL_SIGNING_PUB,
    BUNDLE_ENROLLMENT,
)


@dataclass(frozen=True)
class Enrollment:
    """A client certificate just issued into a bundle directory (no key material held here)."""

    role: Literal["station", "auditor"]
    name: str
    bundle_dir: Path
    cert_sha256: str
    not_after: dt.datetime
    # The station's Ed25519 ledger key (raw, base64) to record in the index; None for auditors.
    signing_public_key_b64: str | None = None


@dataclass(frozen=True)
class EnrollmentBundle:
    """An enrollment bundle as the station (or auditor tool) reads it: what to present, what to pin."""

    bundle_dir: Path
    role: Literal["station", "auditor"]
    name: str
    central_id: str
    central_signing_key_id: str
    cert_sha256: str
    issued: str
    central_public_key: Ed25519PublicKey = field(repr=False)

    @property
    def client_cert(self) -> Path:
        return self.bundle_dir / BUNDLE_CLIENT_CERT

    @property
    def client_key(self) -> Path:
        return self.bundle_dir / BUNDLE_CLIENT_KEY

    @property
    def ca_cert(self) -> Path:
        return self.bundle_dir / BUNDLE_CA_CERT


def write_bundle(
    out_dir: Path,
    *,
    key_pem: bytes,
    cert_pem: bytes,
    ca_pem: bytes,
    central_signing_pub_pem: bytes,
    record: dict[str, Any],
) -> None:
    """Write a complete bundle into an empty `out_dir`; on any failure nothing of it is left."""
    contents = {
        BUNDLE_CLIENT_KEY: (key_pem, PRIVATE_MODE),
        BUNDLE_CLIENT_CERT: (cert_pem, PUBLIC_MODE),
        BUNDLE_CA_CERT: (ca_pem, PUBLIC_MODE),
        BUNDLE_CENTRAL_SIGNING_PUB: (central_signing_pub_pem, PUBLIC_MODE),
        # Last: its presence marks a complete bundle.
        BUNDLE_ENROLLMENT: ((json.dumps(record, indent=2) + "\n").encode("utf-8"), PUBLIC_MODE),
    }
    try:
        for filename, (data, mode) in contents.items():
            if not install_file(out_dir / filename, data, mode, replace=False):
                raise IdentityError(f"{out_dir / filename} appeared while the bundle was being written")
    except BaseException:
        discard_bundle(out_dir)
        raise


def prepare_bundle_dir(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise IdentityError(f"cannot create bundle directory {out_dir}: {exc.strerror or exc}") from None
    if not out_dir.is_dir():
        raise IdentityError(f"{out_dir}: expected a directory for the enrollment bundle")
    leftovers = sorted(p.name for p in out_dir.iterdir())
    if leftovers:
        raise IdentityError(
            f"{out_dir} is not empty ({', '.join(leftovers[:5])}): a bundle is never written over another; "
            f"choose a new --out directory"
        )


def discard_bundle(bundle_dir: Path) -> None:
    """Remove the files of a bundle (for example when recording it in the index failed)."""
    for filename in BUNDLE_FILES:
        with contextlib.suppress(FileNotFoundError):
            (bundle_dir / filename).unlink()
    with contextlib.suppress(OSError):
        bundle_dir.rmdir()  # only when nothing else is in it


def read_bundle(bundle_dir: Path) -> EnrollmentBundle:
    """Read and cross-check an enrollment bundle: the pinned central key and the certificate's hash."""
    bundle_dir = Path(bundle_dir)
    raw = read_pem(bundle_dir / BUNDLE_ENROLLMENT, secret=False)
    try:
        doc = parse_json(raw)
    except CustodyError as exc:
        raise IdentityError(f"{bundle_dir / BUNDLE_ENROLLMENT}: {exc}") from None
    if not isinstance(doc, dict):
        raise IdentityError(f"{bundle_dir / BUNDLE_ENROLLMENT}: expected a JSON object")
    role: Literal["station", "auditor"] = "station" if "station" in doc else "auditor"
    expected = {
        "station" if role == "station" else "reader",
        "central_id",
        "central_signing_key_id",
        "cert_sha256",
        "issued",
    }
    if set(doc) != expected or not all(isinstance(v, str) for v in doc.values()):
        raise IdentityError(
            f"{bundle_dir / BUNDLE_ENROLLMENT}: expected string fields {sorted(expected)}, "
            f"found {sorted(doc)}"
        )
    try:
        central_pub = load_public_key(bundle_dir / BUNDLE_CENTRAL_SIGNING_PUB)
    except CustodyError as exc:
        raise IdentityError(str(exc)) from None
    if key_id_of(central_pub) != doc["central_signing_key_id"]:
        raise IdentityError(
            f"{bundle_dir / BUNDLE_CENTRAL_SIGNING_PUB} is key {key_id_of(central_pub)}, but the enrollment "
            f"names {doc['central_signing_key_id']}: one of the files was replaced"
        )
    cert = load_cert(bundle_dir / BUNDLE_CLIENT_CERT)
    if certificate_sha256(cert) != doc["cert_sha256"]:
        raise IdentityError(
            f"{bundle_dir / BUNDLE_CLIENT_CERT} has sha256 {certificate_sha256(cert)}, but the enrollment "
            f"names {doc['cert_sha256']}: one of the files was replaced"
        )
    return EnrollmentBundle(
        bundle_dir=bundle_dir,
        role=role,
        name=checked_name(
            validate_station_id if role == "station" else validate_reader_name,
            doc["station" if role == "station" else "reader"],
        ),
        central_id=doc["central_id"],
        central_signing_key_id=doc["central_signing_key_id"],
        cert_sha256=doc["cert_sha256"],
        issued=doc["issued"],
        central_public_key=central_pub,
    )
