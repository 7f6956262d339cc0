"""`edge demo` end to end (recorder → station → central → receipt → erase), then `edge verify` on what
it left: both stores verify, a receipt verifies on its own, and tampering with a central object or a
receipted file is caught and named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge.cli import main
from edge.demo import DemoOptions, run_demo


@pytest.fixture(scope="module")
def journey(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    import asyncio
    import contextlib
    import io

    workdir = tmp_path_factory.mktemp("journey")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = asyncio.run(
            run_demo(DemoOptions(recorders=2, files=2, file_mb=0.5, workdir=workdir, json_output=True))
        )
    summary = json.loads(out.getvalue().strip().splitlines()[-1])
    assert code == 0, summary
    return workdir, summary


def test_every_item_is_uploaded_receipted_and_erased(journey: tuple[Path, dict[str, object]]) -> None:
    _, summary = journey
    assert summary["items"] == 4
    assert summary["uploaded"] == summary["receipts"] == summary["wiped"] == 4
    assert summary["left_on_recorders"] == 0
    assert summary["store_verified"] is True and summary["central_verified"] is True
    assert summary["errors"] == []


def test_verify_cli_on_both_stores_and_a_receipt(
    journey: tuple[Path, dict[str, object]], capsys: pytest.CaptureFixture[str]
) -> None:
    workdir, _ = journey
    central_key = str(workdir / "station-identity" / "central-signing.pub")
    assert main(["verify", str(workdir / "central-store"), "--central-key", central_key]) == 0
    # The central key checks receipts and kept heads, but the central itself is not asked (no station
    # configuration here): local checks only, exit status 3.
    assert main(["verify", str(workdir / "station-store"), "--central-key", central_key]) == 3
    receipt = next((workdir / "station-store" / "items").rglob("*.receipt.json"))
    sealed = receipt.with_name(receipt.name.removesuffix(".receipt.json"))
    assert main(["verify", str(receipt), "--central-key", central_key]) == 0
    # The receipt names the original bytes; a sealed MP4 carries a trailing box, so compare the prefix.
    original = workdir / "original.bin"
    size = json.loads(receipt.read_text())["leaf"]["size"]
    original.write_bytes(sealed.read_bytes()[:size])
    assert main(["verify", str(receipt), "--central-key", central_key, "--content", str(original)]) == 0
    original.write_bytes(b"x" + original.read_bytes()[1:])
    capsys.readouterr()
    assert main(["verify", str(receipt), "--central-key", central_key, "--content", str(original)]) == 1
    assert "is not the receipted" in capsys.readouterr().out
    # Without the pinned key a receipt proves nothing: refused with a usage error.
    assert main(["verify", str(receipt)]) == 2


def test_a_tampered_central_object_is_named_by_verify(
    journey: tuple[Path, dict[str, object]], capsys: pytest.CaptureFixture[str]
) -> None:
    workdir, _ = journey
    victim = next(p for p in (workdir / "central-store" / "objects").rglob("*") if p.is_file())
    victim.chmod(0o644)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["verify", str(workdir / "central-store")]) == 1
    out = capsys.readouterr().out
    assert victim.name in out and "FAILED" in out
