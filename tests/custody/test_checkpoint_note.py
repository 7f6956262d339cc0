"""C2SP signed notes and tlog checkpoints: the reference implementation's published example byte for
byte, the spec's rules, and cosignatures by outside witnesses."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.custody.checkpoint_note import (
    NoteError,
    checkpoint_text,
    note_key_hash,
    open_note,
    parse_checkpoint,
    sign_note,
    verifier_key,
)
from edge.custody.keys import StationKey
from edge.custody.merkle import MemoryTree, leaf_hash

# The example key pair and note published with golang.org/x/mod/sumdb/note (its tests and docs).
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
)
GO_SIGNATURE = (
    "— PeterNeumann "
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)


@pytest.fixture(scope="module")
def peter() -> StationKey:
    seed = base64.b64decode(GO_SKEY.split("+", 4)[4])  # the key material may itself hold '+'s
    assert seed[:1] == b"\x01"  # the Ed25519 algorithm byte
    return StationKey(Ed25519PrivateKey.from_private_bytes(seed[1:]))


def test_the_reference_example_is_reproduced_byte_for_byte(peter: StationKey) -> None:
    assert verifier_key("PeterNeumann", peter.public_key()) == GO_VKEY
    assert note_key_hash("PeterNeumann", peter.public_key()).hex() == "c74f20a3"
    note = sign_note(GO_TEXT, "PeterNeumann", peter)
    assert note == GO_TEXT + "\n" + GO_SIGNATURE  # Ed25519 is deterministic
    text, signatures = open_note(note.encode(), "PeterNeumann", peter.public_key())
    assert text == GO_TEXT and [s.name for s in signatures] == ["PeterNeumann"]


@pytest.mark.parametrize(
    "mangle",
    [
        lambda n: n.replace("cryptography", "cryptographY"),  # the text
        lambda n: n.replace("x08go", "x08gp"),  # the signature
        lambda n: n.replace("— ", "-- "),  # not an em dash
        lambda n: n.replace("\n\n", "\n"),  # no blank line
        lambda n: n[:-1],  # no final newline
        lambda n: n.replace("problem,", "problem,\t"),  # a control character
        lambda n: n.replace("PeterNeumann x08", "PeterNeumann  x08"),  # two spaces
    ],
)
def test_a_mangled_note_is_refused(peter: StationKey, mangle: object) -> None:
    note = GO_TEXT + "\n" + GO_SIGNATURE
    assert callable(mangle)
    with pytest.raises(NoteError):
        open_note(mangle(note), "PeterNeumann", peter.public_key())


def test_cosignatures_of_other_keys_are_kept_but_only_ours_decides(peter: StationKey) -> None:
    witness = StationKey.generate()
    note = sign_note(GO_TEXT, "PeterNeumann", peter)
    cosigned = note + sign_note(GO_TEXT, "witness.example/w1", witness).split("\n\n", 1)[1]
    text, signatures = open_note(cosigned, "PeterNeumann", peter.public_key())
    assert text == GO_TEXT and [s.name for s in signatures] == ["PeterNeumann", "witness.example/w1"]
    # The witness's own verification of its cosignature uses the same rules.
    assert open_note(cosigned, "witness.example/w1", witness.public_key())[0] == GO_TEXT
    # A note signed only by others is not ours.
    only_witness = sign_note(GO_TEXT, "witness.example/w1", witness)
    with pytest.raises(NoteError, match="no signature of PeterNeumann"):
        open_note(only_witness, "PeterNeumann", peter.public_key())
    # Too many signature lines.
    line = GO_SIGNATURE.replace("PeterNeumann", "w")
    with pytest.raises(NoteError, match="at most 100"):
        open_note(note + line * 100, "PeterNeumann", peter.public_key())


def test_a_checkpoint_round_trips_under_the_spec_rules(peter: StationKey) -> None:
    tree = MemoryTree([leaf_hash(bytes([n])) for n in range(7)])
    text = checkpoint_text("central.example/log", tree.size, tree.root())
    assert text == f"central.example/log\n7\n{base64.b64encode(tree.root()).decode()}\n"
    parsed = parse_checkpoint(open_note(sign_note(text, "central.example/log", peter), "central.example/log",
                                        peter.public_key())[0])
    assert (parsed.origin, parsed.tree_size, parsed.root, parsed.extensions) == (
        "central.example/log", 7, tree.root(), ()
    )
    for bad in (
        "o\n07\nAAAA\n",  # leading zero
        "o\n7\n" + base64.b64encode(bytes(31)).decode() + "\n",  # short root
        "o\n7\n",  # no root line
        "o\n-1\n" + base64.b64encode(bytes(32)).decode() + "\n",
    ):
        with pytest.raises(NoteError):
            parse_checkpoint(bad)
    with pytest.raises(NoteError):
        checkpoint_text("has space", 1, bytes(32))
    with pytest.raises(NoteError):
        checkpoint_text("a+b", 1, bytes(32))
