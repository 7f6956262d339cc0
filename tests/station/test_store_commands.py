"""Every operator command that opens the station store fails the same way (edge.ingest.store_commands):
78 for a configuration it cannot load, 75 naming the holder while another process has the store, 2 for
a directory that is no station store."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.cli import main
from edge.ingest.store import StationStore

ITEM = "0c0ffee0-0000-4000-8000-000000000000"
# Each command that opens the store with a configuration, as an operator types it (minus --config).
COMMANDS = {
    "tag": ["tag", ITEM, "--case", "X"],
    "keys rotate": ["keys", "rotate", "--reason", "test"],
    "uplink retry": ["uplink", "retry", "--all-rejected"],
    "witness clear": ["witness", "clear", "--reason", "test"],
}


def _config(tmp_path: Path, store: Path) -> Path:
    path = tmp_path / "station.toml"
    path.write_text(f'[station]\nid = "TEST-STATION"\nstore_dir = "{store}"\n[usb]\nmount_root = "media"\n')
    return path


@pytest.mark.parametrize("command", COMMANDS)
def test_a_bad_configuration_is_78_for_every_store_command(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[station]\nid = "TEST-STATION"\nstore_dir = "store"\n[wipe]\npolicy = "sometimes"\n')
    assert main([*COMMANDS[command], "--config", str(bad)]) == 78
    err = capsys.readouterr().err
    assert "wipe.policy" in err and str(bad) in err


@pytest.mark.parametrize("command", COMMANDS)
def test_a_held_store_is_75_naming_the_holder_for_every_store_command(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = StationStore(tmp_path / "store", "TEST-STATION", purpose="the test's agent")
    try:
        assert main([*COMMANDS[command], "--config", str(_config(tmp_path, store.layout.root))]) == 75
        err = capsys.readouterr().err
        assert "is in use by pid" in err and "the test's agent" in err
    finally:
        store.close()


@pytest.mark.parametrize("command", ["tag", "uplink retry"])
def test_a_directory_that_is_no_store_is_2_and_stays_empty(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "store"
    empty.mkdir()
    assert main([*COMMANDS[command], "--config", str(_config(tmp_path, empty))]) == 2
    assert "is not a station store (no state.db)" in capsys.readouterr().err
    assert list(empty.iterdir()) == []


def test_tag_by_store_path_reads_the_station_from_the_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    StationStore(tmp_path / "store", "TEST-STATION").close()
    # The store opens (station read from state.db); the unknown item is the refusal, not the store.
    assert main(["tag", ITEM, "--store", str(tmp_path / "store"), "--case", "X"]) == 2
    assert "no sealed item" in capsys.readouterr().err
