"""Sealing evidence files with their signed manifest, and verifying sealed files.

Sealing appends one evidence box (see :mod:`edge.custody.isobmff`) to a stored copy; the original bytes
are never rewritten, so the manifest's ``sha256``/``size`` always describe an exact prefix of the
sealed file. Files that cannot carry a box (not ISO-BMFF, fragmented with ``mfra``, truncated, or
already carrying an evidence box of their own: a sealed file brought back onto a recorder, a forged
box) are verified against their sidecar ``<name>.manifest.json`` instead; the manifest's signed
``seal`` block says which, so the whole file counts as the original when it says sidecar.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.custody.errors import IsoBmffError, ManifestError, SealError
from edge.custody.isobmff import Box, evidence_box, iter_top_level_boxes, seal_decision
from edge.custody.manifest import manifest_bytes, parse_manifest, verify_manifest
from edge.custody.problems import Problem
from edge.durable.files import write_atomic
from edge.durable.uncached import UncachedFile, aligned_buffer

__all__ = [
    "CHUNK_BYTES",
    "MAX_MANIFEST_BYTES",
    "SealedFileReport",
    "append_evidence_box",
    "declared_embedded",
    "hash_prefix",
    "hash_prefix_from_disk",
    "inspect_evidence_box",
    "sidecar_path",
    "verify_sealed_file",
    "write_sidecar",
]

log = logging.getLogger(__name__)

CHUNK_BYTES = 1024 * 1024
# A manifest is a few kilobytes; the cap bounds memory when a hostile file declares a huge box.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024


def sidecar_path(path: Path) -> Path:
    """``<path>.manifest.json``, where every item's sidecar manifest lives."""
    return path.with_name(path.name + ".manifest.json")


def write_sidecar(path: Path, manifest_doc: Mapping[str, Any], *, sync_dir: bool = True) -> Path:
    """Write the canonical manifest plus a newline to ``sidecar_path(path)`` crash-safely.

    Temp file, fsync, rename, directory fsync: a crash leaves the old sidecar or the new one, never half.
    With ``sync_dir=False`` the caller fsyncs the directory (once for several renames into it).
    """
    return write_atomic(sidecar_path(path), manifest_bytes(manifest_doc) + b"\n", sync_dir=sync_dir)


def hash_prefix(f: BinaryIO, length: int) -> tuple[str, int]:
    """SHA-256 hex of the first ``length`` bytes, read in 1 MiB chunks; returns (hex, bytes actually read)."""
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK_BYTES)
    view = memoryview(buffer)
    f.seek(0)
    done = 0
    while done < length:
        want = min(CHUNK_BYTES, length - done)
        got = f.readinto(view[:want])  # type: ignore[attr-defined]
        if not got:
            break
        digest.update(view[:got])
        done += got
    return digest.hexdigest(), done


def hash_prefix_from_disk(path: Path, length: int) -> tuple[str, int, str]:
    """Like :func:`hash_prefix`, read from the storage device rather than the page cache; also returns
    how the cache was bypassed (:class:`edge.durable.uncached.ReadMethod`)."""
    digest = hashlib.sha256()
    buffer = aligned_buffer(CHUNK_BYTES)
    done = 0
    try:
        with UncachedFile(path) as disk:
            try:
                while done < length:
                    want = min(CHUNK_BYTES, length - done)
                    got = min(disk.read_at(buffer, done, want), want)
                    if got <= 0:
                        break
                    digest.update(memoryview(buffer)[:got])
                    done += got
            finally:
                disk.drop_cache()
            method = str(disk.method)
    finally:
        buffer.close()
    return digest.hexdigest(), done, method


def append_evidence_box(path: Path, manifest_doc: Mapping[str, Any], *, verify_prefix: bool = False) -> int:
    """Append the evidence box carrying ``manifest_doc`` to ``path`` and fsync; return the original size.

    The manifest must verify (signature and fields) and its ``size`` must be the file's size. Calling
    again after a crash is safe: a complete box with this manifest is accepted as done, and a partial
    one (a prefix of exactly the bytes we would write) is cut off and written again. Any other byte
    after the original is refused. With ``verify_prefix`` the original is re-hashed against the
    manifest's ``sha256`` first (the pipeline normally verified it already, so this is off by default).
    Raises :class:`SealError`.
    """
    problems = verify_manifest(manifest_doc, None)
    if problems:
        raise SealError(f"{path}: refusing to seal with an invalid manifest: {problems[0]}")
    prefix_size: int = manifest_doc["size"]
    box = evidence_box(manifest_bytes(manifest_doc))
    try:
        with open(path, "r+b") as f:
            file_size = os.fstat(f.fileno()).st_size
            if file_size < prefix_size:
                raise SealError(f"{path}: the manifest says {prefix_size} bytes but the file has {file_size}")
            if file_size > prefix_size:
                tail_size = file_size - prefix_size
                f.seek(prefix_size)
                tail = f.read(min(tail_size, len(box) + 1))
                if tail == box:
                    # The earlier run may have died between write and fsync: make it durable now.
                    os.fsync(f.fileno())
                    log.info("%s: already sealed with this manifest", path)
                    return prefix_size
                if tail_size > len(box) or not box.startswith(tail):
                    raise SealError(
                        f"{path}: found {tail_size} bytes after the {prefix_size}-byte original that are not "
                        f"this manifest's evidence box; refusing to touch the file"
                    )
                log.warning("%s: removing a partial evidence box (%d bytes) left by an interrupted seal",
                            path, tail_size)
                f.truncate(prefix_size)
            ok, reason = seal_decision(f, prefix_size)
            if not ok:
                raise SealError(f"{path}: cannot embed an evidence box: {reason}")
            if verify_prefix:
                sha, read = hash_prefix(f, prefix_size)
                if read != prefix_size or sha != manifest_doc["sha256"]:
                    raise SealError(
                        f"{path}: content differs from the manifest: expected sha256 "
                        f"{manifest_doc['sha256']}, found {sha} over {read} bytes"
                    )
            f.seek(prefix_size)
            try:
                f.write(box)
                f.flush()
                os.fsync(f.fileno())
            except OSError:
                # Leave the original exactly as it was (disk full, I/O error): drop our partial box.
                with contextlib.suppress(OSError):
                    f.truncate(prefix_size)
                    os.fsync(f.fileno())
                raise
    except OSError as exc:
        raise SealError(f"{path}: cannot append the evidence box: {exc.strerror or exc}") from exc
    log.info("%s: sealed, original %d bytes, box %d bytes", path, prefix_size, len(box))
    return prefix_size


@dataclass(frozen=True)
class SealedFileReport:
    path: Path
    sealed: bool  # the file ends with our evidence box
    prefix_size: int  # bytes before the evidence box (the whole file when not sealed)
    prefix_sha256: str
    manifest: dict[str, Any] | None
    problems: list[Problem] = field(default_factory=list)
    stored_read: str = ""  # with from_disk: how the read bypassed the page cache

    @property
    def ok(self) -> bool:
        return not self.problems


def _read_sidecar(path: Path, where: str, problems: list[Problem]) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            # Read only what is there (up to the cap): read(cap) would allocate the whole cap first.
            data = f.read(min(size, MAX_MANIFEST_BYTES) + 1)
    except FileNotFoundError:
        problems.append(Problem(where, f"sidecar manifest {path} does not exist"))
        return None
    except OSError as exc:
        problems.append(Problem(where, f"cannot read sidecar manifest {path}: {exc.strerror or exc}"))
        return None
    if len(data) > MAX_MANIFEST_BYTES:
        problems.append(Problem(where, f"sidecar manifest {path} is larger than {MAX_MANIFEST_BYTES} bytes"))
        return None
    try:
        doc = parse_manifest(data)
    except ManifestError as exc:
        problems.append(Problem(where, f"sidecar manifest {path}: {exc}"))
        return None
    canonical = _manifest_bytes_or_none(doc)
    # One trailing newline is allowed: sidecars are also read by people with text tools.
    if canonical is None or data not in (canonical, canonical + b"\n"):
        problems.append(Problem(where, f"sidecar manifest {path} is not in canonical form: it was rewritten"))
    return doc


def _manifest_bytes_or_none(doc: Mapping[str, Any]) -> bytes | None:
    try:
        return manifest_bytes(doc)
    except ValueError:
        return None


def _read_box_manifest(f: BinaryIO, offset: int, size: int, where: str,
                       problems: list[Problem]) -> dict[str, Any] | None:
    if size > MAX_MANIFEST_BYTES:
        problems.append(Problem(where, f"evidence box payload is {size} bytes, more than a manifest can be"))
        return None
    f.seek(offset)
    data = f.read(size)
    try:
        doc = parse_manifest(data)
    except ManifestError as exc:
        problems.append(Problem(where, f"evidence box: {exc}"))
        return None
    if _manifest_bytes_or_none(doc) != data:
        problems.append(Problem(where, "the manifest in the evidence box is not in canonical form: "
                                       "it was rewritten"))
    return doc


def _locate_evidence_box(f: BinaryIO, file_size: int) -> tuple[Box | None, IsoBmffError | None]:
    """The first evidence box among the top-level boxes, and the parse error that ended the walk, if any.

    The first one counts: we seal once, so a later evidence box or anything else after ours was added
    by someone else, and a parse error after our box must not hide the box.
    """
    try:
        for box in iter_top_level_boxes(f, file_size):
            if box.is_evidence_box:
                return box, None
    except IsoBmffError as exc:
        return None, exc
    return None, None


def declared_embedded(manifest: Mapping[str, Any] | None) -> bool | None:
    """What a signed manifest says about its own seal: True (in an evidence box appended to the file),
    False (sidecar only: the whole file is the original, even if it carries evidence boxes of its
    own), None for manifests made before the `seal` block existed."""
    seal = None if manifest is None else manifest.get("seal")
    embedded = seal.get("embedded") if isinstance(seal, Mapping) else None
    return embedded if isinstance(embedded, bool) else None


def verify_sealed_file(
    path: Path,
    trusted_keys: Mapping[str, Ed25519PublicKey] | None = None,
    sidecar: Path | None = None,
    *,
    from_disk: bool = False,
) -> SealedFileReport:
    """Verify a stored evidence file against its embedded (or sidecar) signed manifest.

    Hashes the original bytes (everything before our box) in bounded memory and compares hash and size
    with the manifest, checks the manifest signature (against ``trusted_keys`` when given) and, when
    both exist, that the sidecar and the embedded manifest agree. A sidecar manifest that declares a
    sidecar-only seal makes the whole file the original (a recorder file that already carried an
    evidence box is kept exactly as it came). With ``from_disk`` the original bytes are read from the
    storage device, never from the page cache (:mod:`edge.durable.uncached`; before erasing a
    recorder's file). Never raises for file content.
    """
    path = Path(path)
    where = f"object {path}"
    problems: list[Problem] = []
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed in the finally below
    except OSError as exc:
        problems.append(Problem(where, f"cannot open: {exc.strerror or exc}"))
        return SealedFileReport(path, False, 0, "", None, problems)
    try:
        file_size = os.fstat(f.fileno()).st_size
        sidecar_file = sidecar if sidecar is not None else sidecar_path(path)
        sidecar_manifest = None
        if sidecar is not None or sidecar_file.exists():
            sidecar_manifest = _read_sidecar(sidecar_file, where, problems)
        if declared_embedded(sidecar_manifest) is False:
            box, parse_error = None, None  # any evidence box inside belongs to the original
        else:
            box, parse_error = _locate_evidence_box(f, file_size)
        if box is not None and box.end != file_size:
            problems.append(Problem(where, f"{file_size - box.end} bytes follow the evidence box at offset "
                                           f"{box.offset}: data was appended after sealing"))
        box_manifest = None
        if box is not None:
            box_manifest = _read_box_manifest(f, box.payload_offset, box.payload_size, where, problems)
        if box_manifest is not None and sidecar_manifest is not None and box_manifest != sidecar_manifest:
            problems.append(
                Problem(where, f"sidecar manifest {sidecar_file} differs from the manifest in the "
                               "evidence box")
            )
        manifest = box_manifest if box_manifest is not None else sidecar_manifest
        if box is None and declared_embedded(manifest) is True:
            problems.append(Problem(where, "the manifest says it is embedded in the file, but the file "
                                           "carries no evidence box: it was cut off"))
        prefix_size = box.offset if box is not None else file_size
        read_method = ""
        if from_disk:
            try:
                prefix_sha256, read, read_method = hash_prefix_from_disk(path, prefix_size)
            except OSError as exc:
                problems.append(Problem(where, f"cannot read from the disk: {exc.strerror or exc}"))
                prefix_sha256, read = "", 0
        else:
            prefix_sha256, read = hash_prefix(f, prefix_size)
        if read != prefix_size:
            problems.append(Problem(where, f"expected {prefix_size} bytes, could read only {read}"))
        if manifest is None:
            if box is None and sidecar_manifest is None and not any(p.where == where for p in problems):
                why = f"; the file does not parse as ISO-BMFF: {parse_error}" if parse_error else ""
                problems.append(
                    Problem(where, f"no evidence box and no sidecar manifest ({sidecar_file}){why}")
                )
        else:
            problems.extend(_content_problems(manifest, prefix_size, prefix_sha256, box is not None,
                                              parse_error, where))
            problems.extend(verify_manifest(manifest, trusted_keys))
    finally:
        f.close()
    return SealedFileReport(
        path, box is not None, prefix_size, prefix_sha256, manifest, problems, read_method
    )


def inspect_evidence_box(
    path: Path, size: int, trusted_keys: Mapping[str, Ed25519PublicKey]
) -> dict[str, Any] | None:
    """What the first top-level evidence box inside the first `size` bytes of a file is, for the
    record of a recorder file that already carried one: None when there is none; else its offset,
    whether its manifest verifies with `trusted_keys` (a sealed copy of ours brought back) and, only
    then, the item it names (a forged manifest's fields are not repeated)."""
    with open(path, "rb") as f:
        box, _ = _locate_evidence_box(f, size)
        if box is None:
            return None
        problems: list[Problem] = []
        manifest = _read_box_manifest(f, box.payload_offset, box.payload_size, "box", problems)
    if manifest is not None:
        problems.extend(verify_manifest(manifest, trusted_keys))
    found: dict[str, Any] = {"offset": box.offset, "verifies": not problems}
    if manifest is not None and not problems:
        found["item"] = manifest["item"]
    return found


def _content_problems(manifest: Mapping[str, Any], prefix_size: int, prefix_sha256: str, sealed: bool,
                      parse_error: IsoBmffError | None, where: str) -> list[Problem]:
    problems: list[Problem] = []
    expected_size = manifest.get("size")
    if expected_size != prefix_size:
        found = f"{prefix_size} bytes before the evidence box" if sealed else f"{prefix_size} bytes"
        detail = f" ({parse_error})" if parse_error is not None and not sealed else ""
        problems.append(Problem(where, f"size differs: the manifest says {str(expected_size)[:40]} bytes, "
                                       f"found {found}{detail}"))
    expected_sha = manifest.get("sha256")
    if expected_sha != prefix_sha256:
        problems.append(Problem(where, f"content differs from the manifest: expected sha256 "
                                       f"{str(expected_sha)[:80]}, found {prefix_sha256}"))
    return problems
