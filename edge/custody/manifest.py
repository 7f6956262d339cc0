"""Signing and verifying evidence item manifests.

A manifest is a JSON object (built by the acquisition pipeline, fields per DESIGN.md "Evidence item").
Signing adds one member::

    "signature": {"alg": "Ed25519", "key_id": <hex>, "public_key": <base64 raw key>, "value": <base64>}

and the signature covers ``canonical_json(manifest without "signature")``. The embedded public key lets
anyone check integrity offline; authenticity needs ``trusted_keys`` (the station keys the agency
registered), because anyone can sign a forged manifest with a key of their own.
"""

from __future__ import annotations

import base64
import binascii
import copy
import re
import uuid
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.custody.canonical import canonical_json, parse_json
from edge.custody.errors import CanonicalJsonError, KeyFormatError, ManifestError
from edge.custody.keys import (
    SIGNATURE_ALG,
    StationKey,
    key_id_of,
    public_key_from_b64,
    public_key_raw,
    verify_signature,
)
from edge.custody.problems import Problem

__all__ = ["REQUIRED_FIELDS", "manifest_bytes", "parse_manifest", "sign_manifest", "verify_manifest"]

REQUIRED_FIELDS = ("sha256", "size", "item", "source", "time", "case", "chain")
_HEX64_RE = re.compile(r"[0-9a-f]{64}")


def manifest_bytes(doc: Mapping[str, Any]) -> bytes:
    """The canonical bytes of a (signed) manifest, as stored in the sidecar and the evidence box."""
    return canonical_json(doc)


def parse_manifest(data: bytes) -> dict[str, Any]:
    """Parse manifest bytes strictly; raises :class:`ManifestError` unless they hold a JSON object."""
    try:
        doc = parse_json(data)
    except CanonicalJsonError as exc:
        raise ManifestError(f"manifest is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ManifestError(f"expected a manifest JSON object, found {type(doc).__name__}")
    return doc


def sign_manifest(manifest: Mapping[str, Any], key: StationKey) -> dict[str, Any]:
    """A copy of ``manifest`` with a ``signature`` member added.

    Raises :class:`ManifestError` when the manifest is already signed (a signed manifest is never
    re-signed: changes are new ledger entries) or cannot be serialised canonically.
    """
    if "signature" in manifest:
        raise ManifestError("manifest is already signed; a signed manifest is never changed")
    try:
        payload = canonical_json(manifest)
    except CanonicalJsonError as exc:
        raise ManifestError(f"manifest cannot be serialised canonically: {exc}") from None
    signed: dict[str, Any] = copy.deepcopy(dict(manifest))
    signed["signature"] = {
        "alg": SIGNATURE_ALG,
        "key_id": key.key_id,
        "public_key": key.public_key_b64,
        "value": base64.b64encode(key.sign(payload)).decode("ascii"),
    }
    return signed


def _where(doc: Mapping[str, Any]) -> str:
    item = doc.get("item")
    if isinstance(item, str) and len(item) <= 64:
        return f"item {item}"
    return "manifest"


def _field_problems(doc: Mapping[str, Any], where: str) -> list[Problem]:
    problems: list[Problem] = []
    for name in REQUIRED_FIELDS:
        if name not in doc:
            problems.append(Problem(where, f"required field {name!r} is missing"))
    sha = doc.get("sha256")
    if "sha256" in doc and not (isinstance(sha, str) and _HEX64_RE.fullmatch(sha)):
        problems.append(Problem(where, f"sha256 must be 64 lower-case hex digits, found {str(sha)[:80]!r}"))
    size = doc.get("size")
    if "size" in doc and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        problems.append(Problem(where, f"size must be an integer >= 0, found {str(size)[:40]!r}"))
    item = doc.get("item")
    if "item" in doc:
        try:
            canonical_item = str(uuid.UUID(item)) if isinstance(item, str) else None
        except ValueError:
            canonical_item = None
        if canonical_item != item:
            problems.append(Problem(where, f"item must be a lower-case hyphenated UUID, found "
                                           f"{str(item)[:80]!r}"))
    for name in ("source", "time", "case", "chain"):
        if name in doc and not isinstance(doc[name], Mapping):
            problems.append(Problem(where, f"{name} must be an object, found {type(doc[name]).__name__}"))
    chain = doc.get("chain")
    if isinstance(chain, Mapping):
        seq = chain.get("seq")
        if "seq" in chain and (not isinstance(seq, int) or isinstance(seq, bool) or seq < 1):
            problems.append(Problem(where, f"chain.seq must be a positive integer, found {str(seq)[:40]!r}"))
        for name in ("hash", "entry_hash"):
            chain_hash = chain.get(name)
            if name in chain and not (isinstance(chain_hash, str) and _HEX64_RE.fullmatch(chain_hash)):
                problems.append(
                    Problem(where, f"chain.{name} must be 64 hex digits, found {str(chain_hash)[:80]!r}")
                )
    return problems


def _signature_problems(
    doc: Mapping[str, Any], where: str, trusted_keys: Mapping[str, Ed25519PublicKey] | None
) -> list[Problem]:
    sig = doc.get("signature")
    if sig is None:
        return [Problem(where, "manifest is not signed (no signature member)")]
    if not isinstance(sig, Mapping):
        return [Problem(where, f"signature must be an object, found {type(sig).__name__}")]
    alg, key_id, public_b64, value_b64 = (sig.get(name) for name in ("alg", "key_id", "public_key", "value"))
    if alg != SIGNATURE_ALG:
        return [Problem(where, f"signature algorithm {str(alg)[:40]!r} is not supported (expected "
                               f"{SIGNATURE_ALG})")]
    if not isinstance(key_id, str) or not isinstance(public_b64, str) or not isinstance(value_b64, str):
        return [Problem(where, "signature must hold key_id, public_key and value as strings")]
    try:
        embedded = public_key_from_b64(public_b64)
    except KeyFormatError as exc:
        return [Problem(where, f"signature public_key is malformed: {exc}")]
    if key_id_of(embedded) != key_id:
        return [Problem(where, f"signature key_id {key_id[:80]!r} does not match its public key "
                               f"(which has id {key_id_of(embedded)})")]
    verify_key = embedded
    if trusted_keys is not None:
        trusted = trusted_keys.get(key_id)
        if trusted is None:
            return [Problem(where, f"signed by unknown key {key_id}: not among the "
                                   f"{len(trusted_keys)} trusted keys")]
        if public_key_raw(trusted) != public_key_raw(embedded):
            return [Problem(where, f"signature public_key differs from the trusted key with id {key_id}")]
        verify_key = trusted
    try:
        signature = base64.b64decode(value_b64.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        return [Problem(where, "signature value is not base64")]
    body = {name: value for name, value in doc.items() if name != "signature"}
    try:
        payload = canonical_json(body)
    except CanonicalJsonError as exc:
        return [Problem(where, f"manifest cannot be serialised canonically: {exc}")]
    if not verify_signature(verify_key, signature, payload):
        return [Problem(where, f"signature by key {key_id} does not verify: the manifest was altered "
                               "after signing")]
    return []


def verify_manifest(
    doc: Mapping[str, Any], trusted_keys: Mapping[str, Ed25519PublicKey] | None
) -> list[Problem]:
    """Problems with a signed manifest; an empty list means it verifies.

    Checks the signature (present, supported, key id consistent with the embedded key, valid), that the
    key is trusted when ``trusted_keys`` is given, and the required fields and their shapes.
    """
    if not isinstance(doc, Mapping):
        return [Problem("manifest", f"expected a JSON object, found {type(doc).__name__}")]
    where = _where(doc)
    return _signature_problems(doc, where, trusted_keys) + _field_problems(doc, where)
