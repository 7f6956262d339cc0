"""Station key: creation, file modes, refusal of unsafe files, signatures, public-key helpers."""

from __future__ import annotations

import base64
import hashlib
import os
import pickle
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.custody.errors import KeyFileError, KeyFormatError
from edge.custody.keys import (
    StationKey,
    key_id_of,
    load_public_key,
    public_key_from_b64,
    public_key_raw,
    verify_signature,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def key_path(tmp_path: Path) -> Path:
    return tmp_path / "keys" / "station.key"


def test_first_run_creates_both_halves_0600(key_path: Path) -> None:
    old_umask = os.umask(0o000)  # a permissive umask must not widen the private key
    try:
        key = StationKey.load_or_create(key_path)
    finally:
        os.umask(old_umask)
    pub_path = key_path.with_name("station.key.pub")
    assert _mode(key_path) == 0o600
    assert _mode(pub_path) == 0o600  # in a store: nothing there is for other users (issue 7, 1.10)
    assert key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    assert load_public_key(pub_path).public_bytes_raw() == public_key_raw(key.public_key())
    assert not list(key_path.parent.glob("*.tmp")), "temporary files must not remain"


def test_a_umask_that_drops_owner_bits_still_gives_a_usable_0600_public_key(key_path: Path) -> None:
    old_umask = os.umask(0o277)
    try:
        StationKey.load_or_create(key_path)
    finally:
        os.umask(old_umask)
    assert _mode(key_path.with_name("station.key.pub")) == 0o600


def test_second_run_loads_the_same_key(key_path: Path) -> None:
    first = StationKey.load_or_create(key_path)
    second = StationKey.load_or_create(key_path)
    assert first.key_id == second.key_id
    assert first.public_key_b64 == second.public_key_b64
    signature = second.sign(b"evidence")
    assert verify_signature(first.public_key(), signature, b"evidence")


def test_key_id_and_public_key_encoding(key_path: Path) -> None:
    key = StationKey.load_or_create(key_path)
    raw = base64.b64decode(key.public_key_b64)
    assert len(raw) == 32
    assert key.key_id == hashlib.sha256(raw).digest()[:16].hex()
    assert len(key.key_id) == 32
    assert key_id_of(public_key_from_b64(key.public_key_b64)) == key.key_id


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602])
def test_private_key_readable_or_writable_by_others_is_refused(key_path: Path, mode: int) -> None:
    StationKey.load_or_create(key_path)
    key_path.chmod(mode)
    with pytest.raises(KeyFileError, match=f"mode {mode:04o}.*group or others"):
        StationKey.load_or_create(key_path)
    assert _mode(key_path) == mode, "an unsafe key file is reported, never silently re-moded"


def test_0400_private_key_is_accepted(key_path: Path) -> None:
    StationKey.load_or_create(key_path).key_id  # noqa: B018
    key_path.chmod(0o400)
    StationKey.load_or_create(key_path)


def test_missing_public_file_is_recreated(key_path: Path) -> None:
    key = StationKey.load_or_create(key_path)
    pub_path = key_path.with_name("station.key.pub")
    pub_path.unlink()
    StationKey.load_or_create(key_path)
    assert key_id_of(load_public_key(pub_path)) == key.key_id


def test_public_file_of_another_key_is_refused(key_path: Path, tmp_path: Path) -> None:
    StationKey.load_or_create(key_path)
    other = StationKey.load_or_create(tmp_path / "other.key")
    key_path.with_name("station.key.pub").write_bytes(other.public_pem())
    with pytest.raises(KeyFileError, match="was replaced"):
        StationKey.load_or_create(key_path)


def test_repr_shows_no_key_material(key_path: Path) -> None:
    key = StationKey.load_or_create(key_path)
    pem = key_path.read_text()
    body = "".join(pem.splitlines()[1:-1])
    private_raw = serialization.load_pem_private_key(pem.encode(), None).private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    text = repr(key) + str(key)
    assert key.key_id in text
    for secret in (body, base64.b64encode(private_raw).decode(), private_raw.hex(), key.public_key_b64):
        assert secret not in text
    with pytest.raises(TypeError, match="pickled"):
        pickle.dumps(key)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "unparseable"),
        (b"not a key at all, secret-ish text", "unparseable"),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "unparseable"),
        (b"x" * 70_000, "small PEM"),
    ],
)
def test_garbage_private_key_is_refused_without_quoting_it(
    key_path: Path, content: bytes, message: str
) -> None:
    key_path.parent.mkdir(parents=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, content)
    os.close(fd)
    with pytest.raises(KeyFileError, match=message) as info:
        StationKey.load_or_create(key_path)
    assert "secret-ish" not in str(info.value)


def test_non_ed25519_and_encrypted_keys_are_refused(key_path: Path) -> None:
    key_path.parent.mkdir(parents=True)
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, ec_pem)
    os.close(fd)
    with pytest.raises(KeyFileError, match="expected an Ed25519 key"):
        StationKey.load_or_create(key_path)
    encrypted = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    key_path.write_bytes(encrypted)
    with pytest.raises(KeyFileError, match="encrypted"):
        StationKey.load_or_create(key_path)


def test_directory_or_fifo_at_key_path_is_refused_without_hanging(tmp_path: Path) -> None:
    directory = tmp_path / "dir.key"
    directory.mkdir(mode=0o700)
    with pytest.raises(KeyFileError, match="regular file"):
        StationKey.load_or_create(directory)
    fifo = tmp_path / "fifo.key"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(KeyFileError, match="regular file"):
        StationKey.load_or_create(fifo)


def test_stale_temporaries_of_an_interrupted_first_run_are_removed(key_path: Path) -> None:
    key_path.parent.mkdir(parents=True)
    stale = key_path.parent / ".station.key.4194999.deadbeef.tmp"  # no such pid
    stale.write_bytes(b"half a key")
    in_flight = key_path.parent / f".station.key.{os.getppid()}.cafebabe.tmp"  # a live process's
    in_flight.write_bytes(b"being written")
    StationKey.load_or_create(key_path)
    assert not stale.exists()
    assert in_flight.exists()


def test_unwritable_directory_gives_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_bytes(b"")
    with pytest.raises(KeyFileError, match="cannot create station key"):
        StationKey.load_or_create(blocker / "station.key")


def test_losing_the_creation_race_loads_the_winners_key(
    key_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    winner: list[StationKey] = []
    real_link = os.link

    def link_after_competitor(src: str | Path, dst: str | Path) -> None:
        # Another process finishes creating the key between our existence check and our link.
        monkeypatch.setattr(os, "link", real_link)
        winner.append(StationKey.load_or_create(Path(dst)))
        real_link(src, dst)

    monkeypatch.setattr(os, "link", link_after_competitor)
    loser = StationKey.load_or_create(key_path)
    assert loser.key_id == winner[0].key_id
    assert not list(key_path.parent.glob("*.tmp"))


def test_signatures_verify_and_tampering_fails() -> None:
    key = StationKey.generate()
    signature = key.sign(b"payload")
    assert len(signature) == 64
    assert verify_signature(key.public_key(), signature, b"payload")
    assert not verify_signature(key.public_key(), signature, b"payloaD")
    assert not verify_signature(key.public_key(), signature[:-1] + bytes([signature[-1] ^ 1]), b"payload")
    assert not verify_signature(key.public_key(), signature[:10], b"payload")
    assert not verify_signature(key.public_key(), b"", b"payload")
    assert not verify_signature(StationKey.generate().public_key(), signature, b"payload")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not base64!", "base64"),
        (base64.b64encode(b"\x01" * 31).decode(), "32-byte"),
        (base64.b64encode(b"\x01" * 33).decode(), "32-byte"),
        ("", "32-byte"),
        ("中文", "base64"),
    ],
)
def test_public_key_from_b64_rejects_malformed(text: str, message: str) -> None:
    with pytest.raises(KeyFormatError, match=message):
        public_key_from_b64(text)


def test_load_public_key_rejects_garbage_and_other_algorithms(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pub"
    garbage.write_bytes(b"nope")
    with pytest.raises(KeyFileError, match="PEM public key"):
        load_public_key(garbage)
    ec_pub = tmp_path / "ec.pub"
    ec_pub.write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(KeyFileError, match="Ed25519"):
        load_public_key(ec_pub)
    with pytest.raises(KeyFileError, match="cannot read"):
        load_public_key(tmp_path / "missing.pub")
