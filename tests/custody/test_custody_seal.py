"""Sealing real MP4s and verifying sealed files, sidecars and every kind of damage."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge.custody.canonical import canonical_json
from edge.custody.errors import SealError
from edge.custody.isobmff import evidence_box
from edge.custody.keys import StationKey
from edge.custody.manifest import manifest_bytes, sign_manifest
from edge.custody.seal import (
    SealedFileReport,
    append_evidence_box,
    sidecar_path,
    verify_sealed_file,
    write_sidecar,
)

MakeCopy = Callable[..., Path]


def probe(path: Path) -> dict[str, Any]:
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", str(path)],
        capture_output=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert result.stderr == b"", "ffprobe must not complain about the sealed file"
    info: dict[str, Any] = json.loads(result.stdout)
    return info


def essentials(info: dict[str, Any]) -> Any:
    streams = [
        (s["codec_type"], s["codec_name"], s.get("duration"), s.get("nb_frames"), s.get("width"))
        for s in info["streams"]
    ]
    return info["format"]["duration"], info["format"]["nb_streams"], info["format"]["format_name"], streams


def signed_for(path: Path, key: StationKey, make_manifest: Any) -> dict[str, Any]:
    doc: dict[str, Any] = sign_manifest(make_manifest(path.read_bytes()), key)
    return doc


def sha(path: Path, limit: int | None = None) -> str:
    data = path.read_bytes()
    return hashlib.sha256(data if limit is None else data[:limit]).hexdigest()


def wheres(report: SealedFileReport) -> list[str]:
    return [p.where for p in report.problems]


@pytest.mark.parametrize("variant", ["plain", "faststart"])
def test_seal_keeps_the_file_playable_and_the_original_a_prefix(
    mp4_copy: MakeCopy, station_key: StationKey, make_manifest: Any, variant: str
) -> None:
    path = mp4_copy(variant)
    original_sha, original_size = sha(path), path.stat().st_size
    before = probe(path)
    manifest = signed_for(path, station_key, make_manifest)
    assert append_evidence_box(path, manifest) == original_size
    assert path.stat().st_size == original_size + len(evidence_box(manifest_bytes(manifest)))
    assert sha(path, original_size) == original_sha
    assert essentials(probe(path)) == essentials(before)
    report = verify_sealed_file(path, {station_key.key_id: station_key.public_key()})
    assert report.ok, report.problems
    assert report.sealed and report.prefix_size == original_size and report.prefix_sha256 == original_sha
    assert report.manifest == manifest


def test_sealing_again_is_idempotent(mp4_copy: MakeCopy, station_key: StationKey, make_manifest: Any) -> None:
    path = mp4_copy()
    manifest = signed_for(path, station_key, make_manifest)
    size = append_evidence_box(path, manifest)
    sealed = path.read_bytes()
    assert append_evidence_box(path, manifest) == size
    assert path.read_bytes() == sealed


@pytest.mark.parametrize("written", [1, 7, 8, 24, 30, -1])
def test_resealing_after_a_crash_mid_write_completes_the_box(
    mp4_copy: MakeCopy, station_key: StationKey, make_manifest: Any, written: int
) -> None:
    path = mp4_copy()
    original = path.read_bytes()
    manifest = signed_for(path, station_key, make_manifest)
    ours = evidence_box(manifest_bytes(manifest))
    path.write_bytes(original + ours[:written])
    assert append_evidence_box(path, manifest) == len(original)
    assert path.read_bytes() == original + ours
    assert verify_sealed_file(path).ok


def test_foreign_trailing_bytes_are_never_touched(
    mp4_copy: MakeCopy, station_key: StationKey, make_manifest: Any
) -> None:
    path = mp4_copy()
    manifest = signed_for(path, station_key, make_manifest)
    other = signed_for(path, StationKey.generate(), make_manifest)
    with path.open("ab") as f:
        f.write(evidence_box(manifest_bytes(other)))
    before = path.read_bytes()
    with pytest.raises(SealError, match="not this manifest's evidence box"):
        append_evidence_box(path, manifest)
    assert path.read_bytes() == before


def test_fragmented_mp4_is_refused_and_unchanged(
    mp4_copy: MakeCopy, station_key: StationKey, make_manifest: Any
) -> None:
    path = mp4_copy("fragmented")
    before = sha(path)
    with pytest.raises(SealError, match="mfra"):
        append_evidence_box(path, signed_for(path, station_key, make_manifest))
    assert sha(path) == before


def test_zero_byte_and_truncated_files_are_refused(
    tmp_path: Path, mp4_copy: MakeCopy, station_key: StationKey, make_manifest: Any
) -> None:
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(SealError, match="empty"):
        append_evidence_box(empty, signed_for(empty, station_key, make_manifest))
    assert empty.stat().st_size == 0
    cut = mp4_copy()
    os.truncate(cut, cut.stat().st_size - 50)
    with pytest.raises(SealError, match="truncated"):
        append_evidence_box(cut, signed_for(cut, station_key, make_manifest))


def test_refusals_for_bad_manifests(mp4_copy: MakeCopy, station_key: StationKey, make_manifest: Any) -> None:
    path = mp4_copy()
    before = sha(path)
    with pytest.raises(SealError, match="not signed"):
        append_evidence_box(path, make_manifest(path.read_bytes()))
    bigger = sign_manifest({**make_manifest(path.read_bytes()), "size": path.stat().st_size + 1}, station_key)
    with pytest.raises(SealError, match="manifest says"):
        append_evidence_box(path, bigger)
    wrong_hash = sign_manifest({**make_manifest(path.read_bytes()), "sha256": "0" * 64}, station_key)
    with pytest.raises(SealError, match="content differs"):
        append_evidence_box(path, wrong_hash, verify_prefix=True)
    assert sha(path) == before
    with pytest.raises(SealError, match="cannot append"):
        append_evidence_box(path.with_name("missing.mp4"), signed_for(path, station_key, make_manifest))


# -- verification of damaged files ------------------------------------------------------------------


@pytest.fixture
def sealed(mp4_copy: MakeCopy, station_key: StationKey, make_manifest: Any) -> tuple[Path, dict[str, Any]]:
    path = mp4_copy()
    manifest = signed_for(path, station_key, make_manifest)
    append_evidence_box(path, manifest)
    return path, manifest


def test_flipped_media_byte_is_reported_with_both_hashes(sealed: tuple[Path, dict[str, Any]]) -> None:
    path, manifest = sealed
    with path.open("r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    report = verify_sealed_file(path)
    assert wheres(report) == [f"object {path}"]
    what = report.problems[0].what
    assert f"expected sha256 {manifest['sha256']}" in what and f"found {report.prefix_sha256}" in what


def test_edited_manifest_in_box_is_reported(sealed: tuple[Path, dict[str, Any]]) -> None:
    path, manifest = sealed
    data = path.read_bytes()
    officer = b'"officer_no":"' + manifest["source"]["officer_no"].encode() + b'"'
    assert data.count(officer) == 1
    path.write_bytes(data.replace(officer, b'"officer_no":"999999"'))
    report = verify_sealed_file(path)
    assert report.sealed
    assert any("does not verify" in p.what for p in report.problems)


def test_garbled_manifest_json_in_box_is_reported(sealed: tuple[Path, dict[str, Any]]) -> None:
    path, _ = sealed
    data = bytearray(path.read_bytes())
    data[-1:] = b"]"
    path.write_bytes(bytes(data))
    report = verify_sealed_file(path)
    assert report.sealed and report.manifest is None
    assert any("evidence box: manifest is not valid JSON" in p.what for p in report.problems)


def test_bytes_appended_after_the_seal_are_reported(sealed: tuple[Path, dict[str, Any]]) -> None:
    path, manifest = sealed
    with path.open("ab") as f:
        f.write(b"\x00\x00\x00\x10free12345678")
    report = verify_sealed_file(path)
    assert report.sealed
    assert [p.what for p in report.problems] == [
        f"16 bytes follow the evidence box at offset {manifest['size']}: data was appended after sealing"
    ]
    with path.open("ab") as f:
        f.write(b"\xff" * 5)  # and now something that does not even parse
    report = verify_sealed_file(path)
    assert report.sealed and report.manifest == manifest
    assert [p.what for p in report.problems] == [
        f"21 bytes follow the evidence box at offset {manifest['size']}: data was appended after sealing"
    ]


def test_truncated_seal_is_reported(sealed: tuple[Path, dict[str, Any]]) -> None:
    path, _ = sealed
    os.truncate(path, path.stat().st_size - 10)
    report = verify_sealed_file(path)
    assert not report.sealed
    assert len(report.problems) == 1
    assert "no evidence box" in report.problems[0].what and "truncated" in report.problems[0].what


def test_unknown_signer_is_reported(sealed: tuple[Path, dict[str, Any]]) -> None:
    path, _ = sealed
    stranger = StationKey.generate()
    report = verify_sealed_file(path, {stranger.key_id: stranger.public_key()})
    assert any("signed by unknown key" in p.what for p in report.problems)


def test_sidecar_agreeing_and_disagreeing_with_the_box(
    sealed: tuple[Path, dict[str, Any]], station_key: StationKey
) -> None:
    path, manifest = sealed
    assert write_sidecar(path, manifest) == sidecar_path(path)
    assert sidecar_path(path).name == path.name + ".manifest.json"
    assert verify_sealed_file(path).ok
    other = sign_manifest(
        {**{k: v for k, v in manifest.items() if k != "signature"}, "case": {}}, station_key
    )
    sidecar_path(path).write_bytes(canonical_json(other))
    report = verify_sealed_file(path)
    assert any("differs from the manifest in the evidence box" in p.what for p in report.problems)


def test_non_iso_file_verified_by_sidecar(
    tmp_path: Path, station_key: StationKey, make_manifest: Any
) -> None:
    photo = tmp_path / "IMG_0001.JPG"
    photo.write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(5000))
    manifest = signed_for(photo, station_key, make_manifest)
    write_sidecar(photo, manifest)
    report = verify_sealed_file(photo)
    assert report.ok and not report.sealed and report.manifest == manifest
    data = bytearray(photo.read_bytes())
    data[10] ^= 1
    photo.write_bytes(bytes(data))
    report = verify_sealed_file(photo)
    assert wheres(report) == [f"object {photo}"]
    assert "content differs" in report.problems[0].what


def test_explicit_sidecar_path_and_rewritten_sidecar(
    tmp_path: Path, station_key: StationKey, make_manifest: Any
) -> None:
    data_file = tmp_path / "audio.wav"
    data_file.write_bytes(b"RIFF" + bytes(300))
    manifest = signed_for(data_file, station_key, make_manifest)
    elsewhere = tmp_path / "manifests" / "audio.json"
    elsewhere.parent.mkdir()
    elsewhere.write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
    report = verify_sealed_file(data_file, sidecar=elsewhere)
    assert [p.what for p in report.problems] == [
        f"sidecar manifest {elsewhere} is not in canonical form: it was rewritten"
    ]
    missing = verify_sealed_file(data_file, sidecar=tmp_path / "nope.json")
    assert any("does not exist" in p.what for p in missing.problems)


def test_no_manifest_anywhere_and_unreadable_file(tmp_path: Path) -> None:
    bare = tmp_path / "bare.mp4"
    bare.write_bytes(b"junk")
    report = verify_sealed_file(bare)
    assert (
        wheres(report) == [f"object {bare}"] and "no evidence box and no sidecar" in report.problems[0].what
    )
    gone = verify_sealed_file(tmp_path / "gone.mp4")
    assert "cannot open" in gone.problems[0].what


def test_hostile_box_payload_size_is_bounded(tmp_path: Path, mp4_dir: Path) -> None:
    path = tmp_path / "huge-box.mp4"
    original = (mp4_dir / "plain.mp4").read_bytes()
    with path.open("wb") as f:
        f.write(original + evidence_box(b"{"))
        f.truncate(len(original) + 64 * 1024 * 1024)  # sparse: a 64 MiB "manifest"
    with path.open("r+b") as f:
        f.seek(len(original))
        f.write((64 * 1024 * 1024).to_bytes(4, "big"))
    report = verify_sealed_file(path)
    assert report.sealed
    assert any("more than a manifest can be" in p.what for p in report.problems)


def test_hashing_uses_bounded_memory(tmp_path: Path, station_key: StationKey, make_manifest: Any) -> None:
    big = tmp_path / "big.bin"
    with big.open("wb") as f:
        f.truncate(48 * 1024 * 1024)  # sparse, reads as zeros
    digest = hashlib.sha256()
    zeros = bytes(1024 * 1024)
    for _ in range(48):
        digest.update(zeros)
    manifest = sign_manifest(
        {**make_manifest(b""), "sha256": digest.hexdigest(), "size": 48 * 1024 * 1024}, station_key
    )
    write_sidecar(big, manifest)
    tracemalloc.start()
    try:
        report = verify_sealed_file(big)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.ok, report.problems
    assert peak < 4 * 1024 * 1024
