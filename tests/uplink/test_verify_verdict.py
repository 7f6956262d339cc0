"""`edge verify STORE` for courts: its verdict says whether the central's witnessing was checked.

Exit status 0 and `OK` only when every check held, the central's own witnessed head included; 3 and
`LOCAL CHECKS ONLY` when the local checks held but the central was not consulted (then a store rewritten
by someone holding the station key can pass: the review's offline truncation said OK, exit 0); 1 and
`FAILED` for problems. `--config` works with a forensic copy of the configured store.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest

from edge.central.embedded import free_port
from edge.cli import main
from edge.custody.keys import StationKey
from edge.verify.witness import CONFIG_ENV
from tests.tamper.attacker import attacker_db, forge_checkpoint
from tests.uplink.test_uplink_station import STATION
from tests.uplink.test_witnessing import journey  # noqa: F401  (the fixture)


def station_toml(path: Path, store: Path, uplink: str = "") -> Path:
    path.write_text(
        f'[station]\nid = "{STATION}"\nstore_dir = "{store}"\n[usb]\nmount_root = "{path.parent / "media"}"\n'
        + uplink,
        encoding="utf-8",
    )
    return path


async def verify(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, list[str]]:
    """Exit status, verdict line and NOTE lines of `edge verify ARGS`."""
    capsys.readouterr()
    code = await asyncio.to_thread(main, ["verify", *args])
    lines = capsys.readouterr().out.strip().splitlines()
    return code, lines[-1] if lines else "", [line for line in lines if line.startswith("NOTE ")]


def truncate_tail(store: Path) -> int:
    """The review's offline truncation: the ledger after its last erasure deleted with the checkpoints
    and the witnessed heads kept for it, and a checkpoint forged at the new head with the station key
    that lies in the store. Returns the new head."""
    key = StationKey.load(store / "keys" / "station.key")
    with attacker_db(store / "state.db") as db:
        cut = int(db.execute("SELECT max(seq) FROM ledger WHERE type = 'wiped'").fetchone()[0])
        db.execute("DELETE FROM ledger WHERE seq > ?", (cut,))
        db.execute("DELETE FROM ledger_checkpoints WHERE seq > ?", (cut,))
        db.execute("DELETE FROM witnessed_heads WHERE seq > ?", (cut,))
        forge_checkpoint(db, key, STATION, cut)
    return cut


async def test_the_verdict_says_whether_the_central_was_consulted(
    journey: Any,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    central, _config, _station = journey
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "absent.toml"))  # nothing is found implicitly
    store = tmp_path / "store"
    bundle = central.bundle_dir
    uplink = f'[uplink]\ncentral_url = "{central.url}"\nidentity_dir = "{bundle}"\n'
    config = station_toml(tmp_path / "station.toml", store, uplink)

    code, verdict, _ = await verify(capsys, str(store), "--config", str(config))
    assert (code, verdict.split(":")[0]) == (0, "OK"), verdict
    assert "central consulted" in verdict

    # A forensic copy, checked with the station's configuration (which names the original store).
    copy = tmp_path / "evidence-copy"
    shutil.copytree(store, copy)
    code, verdict, notes = await verify(capsys, str(copy), "--config", str(config))
    assert (code, verdict.split(":")[0]) == (0, "OK"), verdict
    assert any(f"{copy} is checked as a copy" in note for note in notes), notes

    # The review's case: the copy truncated and re-signed. Offline (central key only) every local check
    # holds, and the verdict says that only local checks ran; against the central it fails.
    cut = truncate_tail(copy)
    central_key = str(bundle / "central-signing.pub")
    code, verdict, notes = await verify(capsys, str(copy), "--central-key", central_key)
    assert (code, verdict.split(":")[0]) == (3, "LOCAL CHECKS ONLY"), verdict
    assert "the central was not consulted" in verdict
    assert any("give --config" in note for note in notes), notes
    code, verdict, _ = await verify(capsys, str(copy), "--config", str(config))
    assert (code, verdict.split(":")[0]) == (1, "FAILED"), verdict
    capsys.readouterr()

    # A configuration without [uplink] was given: the note says that, not "give --config".
    bare = station_toml(tmp_path / "bare.toml", store)
    code, verdict, notes = await verify(capsys, str(store), "--config", str(bare))
    assert code == 3, verdict
    assert not any("give --config" in note for note in notes), notes
    assert any(f"{bare} names no central" in note for note in notes), notes

    # The central cannot be reached: local checks only, and the note says why.
    down = f'[uplink]\ncentral_url = "https://127.0.0.1:{free_port()}"\nidentity_dir = "{bundle}"\n'
    unreachable = station_toml(tmp_path / "down.toml", store, down)
    code, verdict, notes = await verify(capsys, str(store), "--config", str(unreachable))
    assert (code, verdict.split(":")[0]) == (3, "LOCAL CHECKS ONLY"), verdict
    assert any("could not be consulted" in note for note in notes), notes
    assert cut > 0


async def test_a_copy_of_another_stations_store_is_refused_with_config(
    journey: Any,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Control for the forensic copy: the configuration must be of the station whose store it is."""
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "absent.toml"))
    other = tmp_path / "other.toml"
    other.write_text(f'[station]\nid = "OTHER-STATION"\nstore_dir = "{tmp_path / "x"}"\n'
                     f'[usb]\nmount_root = "{tmp_path / "media"}"\n')
    capsys.readouterr()
    code = await asyncio.to_thread(main, ["verify", str(tmp_path / "store"), "--config", str(other)])
    assert code == 2
    assert "configures station OTHER-STATION" in capsys.readouterr().err
