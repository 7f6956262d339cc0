"""Tree heads as C2SP checkpoints in the signed-note form, so that outside witnesses can cosign them.

A checkpoint (https://c2sp.org/tlog-checkpoint) is the note text::

    <origin>\\n<tree size, decimal>\\n<root hash, standard base64>\\n

signed as a note (https://c2sp.org/signed-note): the text, a blank line, then one line per signature,
``— <key name> <base64(key hash || signature)>``, where the key hash of an Ed25519 key is the first four
bytes of ``SHA-256(key name || 0x0A || 0x01 || public key)`` and the signature is Ed25519 over the text
(final newline included). The central signs with the key that signs its tree heads, under the log's
origin as key name; a witness adds its own line, which :func:`open_note` leaves alone (a verifier ignores
signatures by keys it does not know) but returns, so that cosignatures can be shown.

The central's JSON documents are canonical JSON objects, which start with ``{``; a checkpoint text
starts with the origin, so no signature over one can be taken for a signature over the other.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.custody.errors import CustodyError
from edge.custody.keys import StationKey, public_key_raw, verify_signature
from edge.custody.merkle import HASH_SIZE

__all__ = [
    "LogCheckpoint",
    "NoteError",
    "NoteSignature",
    "checkpoint_text",
    "note_key_hash",
    "open_note",
    "parse_checkpoint",
    "sign_note",
    "verifier_key",
]

_ED25519 = b"\x01"
_DASH = "\u2014 "
_MAX_SIGNATURES = 100  # as the reference implementation
_MAX_NOTE_BYTES = 1 << 20
# Key names: non-empty, no Unicode space, no "+" (signed-note); we also keep them printable ASCII.
_NAME_RE = re.compile(r"[\x21-\x2a\x2c-\x7e]+")
_SIZE_RE = re.compile(r"0|[1-9][0-9]{0,19}")


class NoteError(CustodyError, ValueError):
    """A signed note or checkpoint is malformed, or not signed by the expected key."""


@dataclass(frozen=True)
class NoteSignature:
    """One signature line of a note: whose (name, 4-byte key hash) and the signature bytes."""

    name: str
    key_hash: bytes
    signature: bytes


@dataclass(frozen=True)
class LogCheckpoint:
    origin: str
    tree_size: int
    root: bytes
    extensions: tuple[str, ...] = ()


def note_key_hash(name: str, public_key: Ed25519PublicKey) -> bytes:
    """The 4-byte key hash of an Ed25519 note key: ``SHA-256(name || 0x0A || 0x01 || key)[:4]``."""
    return hashlib.sha256(name.encode("utf-8") + b"\n" + _ED25519 + public_key_raw(public_key)).digest()[:4]


def verifier_key(name: str, public_key: Ed25519PublicKey) -> str:
    """The verifier key string witnesses are configured with: ``name+hex(key hash)+base64(0x01 || key)``."""
    encoded = base64.b64encode(_ED25519 + public_key_raw(public_key)).decode("ascii")
    return f"{name}+{note_key_hash(name, public_key).hex()}+{encoded}"


def checkpoint_text(origin: str, tree_size: int, root: bytes) -> str:
    """The checkpoint body for a tree of ``tree_size`` leaves with RFC 9162 root ``root``."""
    if not _NAME_RE.fullmatch(origin):
        raise NoteError(f"a checkpoint origin must be printable ASCII without spaces or '+', found "
                        f"{origin[:80]!r}")
    if not isinstance(tree_size, int) or isinstance(tree_size, bool) or not 0 <= tree_size < 2**64:
        raise NoteError(f"expected a tree size 0..2**64-1, found {tree_size!r}")
    if not isinstance(root, bytes) or len(root) != HASH_SIZE:
        raise NoteError(f"expected a {HASH_SIZE}-byte root hash")
    return f"{origin}\n{tree_size}\n{base64.b64encode(root).decode('ascii')}\n"


def parse_checkpoint(text: str) -> LogCheckpoint:
    """The origin, size, root (and any extension lines) of a checkpoint text; raises :class:`NoteError`."""
    if not text.endswith("\n"):
        raise NoteError("a checkpoint ends with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise NoteError(f"a checkpoint has at least 3 lines (origin, size, root), found {len(lines)}")
    origin, size_text, root_text, *extensions = lines
    if not origin or not _SIZE_RE.fullmatch(size_text) or int(size_text) >= 2**64:
        raise NoteError(f"malformed checkpoint header: origin {origin[:80]!r}, size {size_text[:30]!r}")
    try:
        root = base64.b64decode(root_text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        root = b""
    if len(root) != HASH_SIZE or base64.b64encode(root).decode("ascii") != root_text:
        raise NoteError(f"the checkpoint root is not the base64 of a {HASH_SIZE}-byte hash: "
                        f"{root_text[:80]!r}")
    if any(not line for line in extensions):
        raise NoteError("a checkpoint has no empty lines")
    return LogCheckpoint(origin, int(size_text), root, tuple(extensions))


def _check_text(text: str) -> None:
    if not text.endswith("\n") or "\n\n" in text or text.startswith("\n"):
        raise NoteError("a note text is one or more non-empty lines, each ending with a newline")
    if any(ord(char) < 0x20 and char != "\n" for char in text):
        raise NoteError("a note text holds no control characters other than newline")


def sign_note(text: str, name: str, key: StationKey) -> str:
    """``text`` as a signed note with one Ed25519 signature by ``key`` under ``name``."""
    _check_text(text)
    if not _NAME_RE.fullmatch(name):
        raise NoteError(f"a note key name is printable ASCII without spaces or '+', found {name[:80]!r}")
    blob = note_key_hash(name, key.public_key()) + key.sign(text.encode("utf-8"))
    return f"{text}\n{_DASH}{name} {base64.b64encode(blob).decode('ascii')}\n"


def open_note(note: str | bytes, name: str, public_key: Ed25519PublicKey) -> tuple[str, list[NoteSignature]]:
    """The text of a note signed by ``public_key`` under ``name``, and every signature line it carries.

    Follows the signed-note rules: valid UTF-8, no control characters but newline, the text ends at the
    last blank line, every signature line well-formed. Lines of other keys (witness cosignatures) are
    returned unverified; a line of our (name, key hash) that does not verify rejects the note. Raises
    :class:`NoteError`.
    """
    if isinstance(note, bytes):
        if len(note) > _MAX_NOTE_BYTES:
            raise NoteError(f"a note of {len(note)} bytes is larger than {_MAX_NOTE_BYTES}")
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError:
            raise NoteError("a note is UTF-8 text") from None
    if len(note.encode("utf-8")) > _MAX_NOTE_BYTES:
        raise NoteError(f"a note is at most {_MAX_NOTE_BYTES} bytes")
    if any(ord(char) < 0x20 and char != "\n" for char in note):
        raise NoteError("a note holds no control characters other than newline")
    split = note.rfind("\n\n")
    if split < 0 or not note.endswith("\n"):
        raise NoteError("a note is text, a blank line, and signature lines")
    text, block = note[: split + 1], note[split + 2:]
    _check_text(text)
    signature_lines = block[:-1].split("\n")
    if len(signature_lines) > _MAX_SIGNATURES:
        raise NoteError(f"a note carries at most {_MAX_SIGNATURES} signatures, found {len(signature_lines)}")
    signatures = [_signature_line(line) for line in signature_lines]
    ours = note_key_hash(name, public_key)
    verified = False
    for signature in signatures:
        if signature.name != name or signature.key_hash != ours:
            continue
        if len(signature.signature) != 64 or not verify_signature(
            public_key, signature.signature, text.encode("utf-8")
        ):
            raise NoteError(f"the signature of {name} (key hash {ours.hex()}) does not verify: the note was "
                            f"altered or forged")
        verified = True
    if not verified:
        raise NoteError(f"the note carries no signature of {name} with key hash {ours.hex()}")
    return text, signatures


def _signature_line(line: str) -> NoteSignature:
    if not line.startswith(_DASH):
        raise NoteError(f"a signature line starts with an em dash and a space: {line[:80]!r}")
    parts = line[len(_DASH):].split(" ")
    if len(parts) != 2 or not _NAME_RE.fullmatch(parts[0]):
        raise NoteError(f"a signature line is '— <name> <base64>': {line[:80]!r}")
    try:
        blob = base64.b64decode(parts[1].encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise NoteError(f"the signature of {parts[0][:80]!r} is not base64") from None
    if len(blob) < 5:
        raise NoteError(f"the signature of {parts[0][:80]!r} is shorter than a key hash and a signature")
    return NoteSignature(parts[0], blob[:4], blob[4:])
