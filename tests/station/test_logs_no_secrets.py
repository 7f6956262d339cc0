"""Secrets from the configuration never reach the log, fed through the code paths that log: a docking
with the right password, one with a wrong password, and configuration reloads that change the password
(applied, refused, invalid); meanwhile every ledger event is one log line with the item, bay, device and
station as fields."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edge.config.reload import ConfigReloader
from edge.config.station import load_config
from edge.runtime.logs import LOG_FORMAT, JsonLineFormatter, PrintableFormatter

from .harness import simulated_station, spec

SECRET = "Pw7Q9xSECRET4417"
NEW_SECRET = "Pwk3RzSECRET8802"


@contextmanager
def captured_logs() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """Everything logged, at DEBUG, in the JSON and the text format."""
    json_out, text_out = io.StringIO(), io.StringIO()
    handlers = [logging.StreamHandler(json_out), logging.StreamHandler(text_out)]
    handlers[0].setFormatter(JsonLineFormatter())
    handlers[1].setFormatter(PrintableFormatter(LOG_FORMAT))
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.DEBUG)
    for handler in handlers:
        root.addHandler(handler)
    try:
        yield json_out, text_out
    finally:
        for handler in handlers:
            root.removeHandler(handler)
        root.setLevel(level)


def secret_file(path: Path, value: str) -> Path:
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path


def station_toml(path: Path, root: Path, password_ref: str, *, store: str = "store", tail: str = "") -> Path:
    path.write_text(f"""
[station]
id = "TEST-STATION"
store_dir = "{root / store}"

[usb]
mount_root = "{root / 'media'}"

[recorders]
default_password = "{password_ref}"
{tail}""")
    return path


async def test_passwords_never_reach_the_log_and_events_carry_their_fields(tmp_path: Path) -> None:
    password_file = secret_file(tmp_path / "recorder-secret", SECRET)
    right, wrong = spec(0, password=SECRET), spec(1, password="135790")
    with captured_logs() as (json_out, text_out):
        async with simulated_station(
            tmp_path, [right, wrong], recorders={"default_password": f"file:{password_file}"}
        ) as station:
            await station.dock_recorder(right.device_serial, 1)
            await station.dock_recorder(wrong.device_serial, 2)
            await station.wait_results(1)
            await station.wait_ledger("refused", where=lambda d: d.get("bay") == 2)
            await station.agent.idle()
        # Reloads: one that applies a new password, one refused (a fixed setting), one invalid.
        config_file = station_toml(tmp_path / "station.toml", tmp_path, f"file:{password_file}")
        records: list[tuple[str, dict[str, Any]]] = []
        reloader = ConfigReloader(config_file, load_config(config_file), apply=lambda _new: None,
                                  record=lambda kind, data: records.append((kind, data)))
        new_file = secret_file(tmp_path / "new-secret", NEW_SECRET)
        station_toml(config_file, tmp_path, f"file:{new_file}")
        assert await reloader.reload()
        station_toml(config_file, tmp_path, f"file:{password_file}", store="other")
        assert not await reloader.reload()
        station_toml(config_file, tmp_path, f"file:{new_file}", tail=f'bogus = "{NEW_SECRET}"\n')
        assert not await reloader.reload()
    assert [kind for kind, _data in records] == ["config_reloaded", "config_refused", "config_refused"]
    for output in (json_out.getvalue(), text_out.getvalue()):
        assert output.count("\n") > 20  # the paths above did log
        assert SECRET not in output and NEW_SECRET not in output
    assert SECRET not in json.dumps(records) and NEW_SECRET not in json.dumps(records)
    # Each ledger event is one line with its fields.
    lines = [json.loads(line) for line in json_out.getvalue().splitlines()]
    events = [line for line in lines if line["logger"] == "edge.ingest.events"]
    acquired = [e for e in events if e["event"] == "acquired"]
    assert len(acquired) == right.files
    assert all(e["device"] == right.device_serial and e["station"] == "TEST-STATION" and e["item"]
               and e["bay"] == 1 for e in acquired), acquired
    refused = [e for e in events if e["event"] == "refused"]
    assert refused and refused[0]["bay"] == 2 and refused[0]["device"] == wrong.usb_serial
