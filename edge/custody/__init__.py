"""Custody primitives: canonical JSON, the station key, the hash-chained ledger, signed manifests and
the ISO-BMFF evidence seal. Pure building blocks: no configuration, no event loop, no state of their own
beyond the SQLite connection and files the caller hands in.

Modules, one job each: ``canonical`` (RFC 8785 bytes, SHA-256), ``keys`` (Ed25519 station key),
``ledger`` (append-only chain + signed checkpoints + verification), ``manifest`` (sign/verify item
manifests), ``isobmff`` (top-level box parsing, evidence box), ``seal`` (append/verify sealed files),
``merkle`` (RFC 9162 trees and proofs), ``receipt`` (tree heads, leaves, receipts), ``witness`` (the
central's witnessed heads of a station's ledger), ``witness_log`` (what a station keeps of them),
``fields`` (strict field checks of signed documents), ``problems`` (the finding type every verifier
returns), ``errors`` (the exception hierarchy).
"""

from edge.custody.canonical import canonical_json, parse_json, sha256_hex
from edge.custody.errors import (
    CanonicalJsonError,
    CustodyError,
    IsoBmffError,
    KeyFileError,
    KeyFormatError,
    LedgerError,
    ManifestError,
    SealError,
)
from edge.custody.keys import StationKey, key_id_of, load_public_key, public_key_from_b64, verify_signature
from edge.custody.ledger import Checkpoint, EntryType, Ledger, LedgerEntry, verify_chain, verify_ledger
from edge.custody.manifest import manifest_bytes, sign_manifest, verify_manifest
from edge.custody.problems import Problem
from edge.custody.seal import SealedFileReport, append_evidence_box, verify_sealed_file

__all__ = [
    "CanonicalJsonError",
    "Checkpoint",
    "CustodyError",
    "EntryType",
    "IsoBmffError",
    "KeyFileError",
    "KeyFormatError",
    "Ledger",
    "LedgerEntry",
    "LedgerError",
    "ManifestError",
    "Problem",
    "SealError",
    "SealedFileReport",
    "StationKey",
    "append_evidence_box",
    "canonical_json",
    "key_id_of",
    "load_public_key",
    "manifest_bytes",
    "parse_json",
    "public_key_from_b64",
    "sha256_hex",
    "sign_manifest",
    "verify_chain",
    "verify_ledger",
    "verify_manifest",
    "verify_sealed_file",
    "verify_signature",
]
