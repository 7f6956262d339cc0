"""What every operator command that works on the station store does to get at it, in one place.

`edge tag`, `edge keys rotate`, `edge uplink retry`, `edge witness clear` and `edge run` all load the
station configuration and open the store under its lock; each failure has one exit status whatever the
command (see `edge.runtime.exit_codes`), so that an operator, a script and systemd read them alike:

- a configuration that cannot be loaded, or a store that cannot be used: 78 (EX_CONFIG);
- another process holds the store (the message names it): 75 (EX_TEMPFAIL), try again when it is done;
- a directory that is no station store at all: 2, the command line named the wrong thing (`edge witness`
  checks this itself first and says 78: its store always comes from the configuration).

The functions print the reason on stderr and return the status instead of the object, so that a
command reads `if isinstance(x, ExitCode): return x`.
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

from edge.config.base import ConfigError
from edge.config.station import StationConfig, load_config
from edge.durable.lock import StoreBusy
from edge.ingest.store import StationStore, StoreError, read_station_id
from edge.runtime.exit_codes import ExitCode

__all__ = ["load_station_config", "open_station_store", "store_failure_status"]


def _error(message: object) -> None:
    print(f"error: {message}", file=sys.stderr)


def load_station_config(path: Path) -> StationConfig | ExitCode:
    """The station configuration at `path`, or CONFIG after saying what is wrong with it."""
    try:
        return load_config(path)
    except ConfigError as exc:
        _error(exc)
        return ExitCode.CONFIG


def store_failure_status(exc: StoreBusy | StoreError) -> ExitCode:
    """Say why the store could not be opened; STORE_BUSY when another process holds it, else CONFIG."""
    _error(exc)
    return ExitCode.STORE_BUSY if isinstance(exc, StoreBusy) else ExitCode.CONFIG


def open_station_store(
    store_dir: Path, station_id: str | None, *, purpose: str
) -> StationStore | ExitCode:
    """The station store at `store_dir`, locked for `purpose` (named to whoever else wants it), or the
    exit status after saying why not. `station_id` None: the station the store records (a command given
    `--store` instead of a configuration). USAGE for a directory without a state database or without a
    station: opening it would create a fresh store where the operator meant an existing one."""
    if not (store_dir / "state.db").is_file():
        _error(f"{store_dir} is not a station store (no state.db)")
        return ExitCode.USAGE
    if station_id is None:
        try:
            station_id = _recorded_station_id(store_dir)
        except sqlite3.Error as exc:
            _error(f"{store_dir}: cannot read state.db: {exc}")
            return ExitCode.CONFIG
        if station_id is None:
            _error(f"{store_dir} is not a station store (no station recorded in state.db)")
            return ExitCode.USAGE
    try:
        return StationStore(store_dir, station_id, purpose=purpose)
    except (StoreBusy, StoreError) as exc:
        return store_failure_status(exc)


def _recorded_station_id(store_dir: Path) -> str | None:
    # Read-only: the store is not locked yet, and a reader must not create anything in it.
    conn = sqlite3.connect(f"file:{store_dir / 'state.db'}?mode=ro", uri=True)
    try:
        return read_station_id(conn)
    finally:
        conn.close()
