"""What a hostile central (or anyone holding its key) can do to an unzipped disclosure package: read and
rewrite its JSON-lines files and sign a fresh SHA256SUMS over everything. The package tests use these to
show that what the central alone can change is still caught by what the stations signed."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.custody.canonical import canonical_json
from edge.custody.disclosure import CHECKSUMS_FILE, CHECKSUMS_SIGNATURE_FILE


def read_lines(folder: Path, name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / name).read_text(encoding="utf-8").splitlines()]


def write_lines(folder: Path, name: str, docs: list[dict[str, Any]]) -> None:
    (folder / name).write_bytes(b"".join(canonical_json(doc) + b"\n" for doc in docs))


def resign_all(folder: Path, sign: Callable[[bytes], bytes]) -> None:
    """List every file of the folder again in SHA256SUMS and sign the list with the central's key."""
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    names = [n for n in names if n not in (CHECKSUMS_FILE, CHECKSUMS_SIGNATURE_FILE)]
    text = "".join(f"{hashlib.sha256((folder / n).read_bytes()).hexdigest()}  {n}\n" for n in names)
    (folder / CHECKSUMS_FILE).write_text(text)
    (folder / CHECKSUMS_SIGNATURE_FILE).write_bytes(sign(text.encode()))
