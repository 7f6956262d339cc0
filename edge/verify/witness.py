"""`edge verify` of a station store against what the central witnessed (invariant 3 of DESIGN.md).

Local checkpoints are signed with a key that lives beside the ledger, so someone who can rewrite the
store can rewrite the chain and re-sign it. What they cannot rewrite is what the central signed:

* **offline**, from the store's own files: every witnessed head the station kept (the ``witnessed_heads``
  table and the ``witnessed_head`` of every receipt/2 file) must verify with the central key pinned at
  enrollment and name an entry the ledger still holds with exactly that hash. A truncated tail, a
  rewritten chain or a replaced station key are named this way as long as any witnessed head survives;
* **against the central**, when the station's configuration names a central (found without flags, see
  :func:`find_station_config`): the central's own newest witnessed head for this station, which no
  rewrite of the station's files can remove.

A gap in the kept heads (rows are numbered 1, 2, 3...) is named, and so is a central that now answers
with an older head than one it witnessed and the store kept: it lost or dropped entries it had accepted.
The report says which of the two ran, and why the second did not when it could not. When the ledger no
longer holds a witnessed head, :attr:`WitnessFindings.diverged_after` says from where the central's copy
of the ledger can name the items that were removed or changed (:mod:`edge.verify.central_ledger`).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.config.base import ConfigError
from edge.config.station import StationConfig, load_config
from edge.custody.canonical import parse_json
from edge.custody.errors import CanonicalJsonError
from edge.custody.ledger import EntryType
from edge.custody.problems import Problem
from edge.custody.witness import WitnessedHead, verify_witnessed_head
from edge.custody.witness_log import alarm_state, stored_witnessed_heads, unwitnessed_window
from edge.ingest.store import StoreLayout, read_station_id
from edge.uplink.transport import NotDone, Transport

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG",
    "CentralView",
    "ConfigFound",
    "WitnessFindings",
    "fetch_central_view",
    "find_station_config",
    "witness_findings",
]

DEFAULT_CONFIG = Path("/etc/evidence-edge/station.toml")
CONFIG_ENV = "EDGE_STATION_CONFIG"
_KEY_ROTATED = "key_rotated"


@dataclass(frozen=True)
class ConfigFound:
    """The station configuration that goes with a store, or why none was used."""

    config: StationConfig | None
    path: Path | None
    note: str | None = None


def find_station_config(store: Path, explicit: Path | None = None) -> ConfigFound:
    """The configuration of the station whose store is ``store``: ``explicit`` (``--config``), else
    ``$EDGE_STATION_CONFIG``, else ``/etc/evidence-edge/station.toml``; a file found the implicit way is
    used only when its ``store_dir`` is this very store. An explicit file for another directory is used
    for a copy of its store (a forensic copy, checked elsewhere) when the copy is of the same station.
    Raises :class:`ConfigError` for an explicit file that is unreadable, invalid, or for another station.

    Never from inside the store: whoever can rewrite the store could point verification at a central
    key of their own.
    """
    target = store.resolve()
    if explicit is not None:
        config = load_config(explicit)
        if config.station.store_dir.resolve() != target:
            copied = _station_of(store)
            if copied != config.station.id:
                whose = "no station" if copied is None else repr(copied)
                raise ConfigError(f"{explicit}: configures station {config.station.id}, but {store} is a "
                                  f"store of {whose}")
            return ConfigFound(config, explicit, f"station configuration: {explicit} (its store is "
                                                 f"{config.station.store_dir}; {store} is checked as a copy "
                                                 f"of it, station {config.station.id})")
        return ConfigFound(config, explicit)
    from_env = os.environ.get(CONFIG_ENV)
    candidate = Path(from_env) if from_env else DEFAULT_CONFIG
    how = f"${CONFIG_ENV}" if from_env else "the default location"
    if not candidate.is_file():
        return ConfigFound(None, None, f"no station configuration at {candidate} ({how}); give --config")
    try:
        config = load_config(candidate)
    except ConfigError as exc:
        return ConfigFound(None, None, f"the station configuration {candidate} ({how}) is not usable: {exc}")
    if config.station.store_dir.resolve() != target:
        return ConfigFound(None, None, f"the station configuration {candidate} ({how}) is for store "
                                       f"{config.station.store_dir}, not this one; give --config")
    return ConfigFound(config, candidate)


def _station_of(store: Path) -> str | None:
    """The station id recorded in a store's database (read-only), None when there is none."""
    try:
        conn = sqlite3.connect(f"file:{StoreLayout(store).db}?mode=ro", uri=True)
    except sqlite3.Error:
        return None
    try:
        return read_station_id(conn)
    except sqlite3.Error:
        return None
    finally:
        conn.close()


@dataclass(frozen=True)
class CentralView:
    """What the central said about this station's ledger, or why it could not be asked."""

    url: str
    head: tuple[int, str] | None = None
    witnessed_head: Mapping[str, Any] | None = None
    failure: str | None = None


async def fetch_central_view(
    config: StationConfig, timeout_s: float = 20.0, *, transport: Transport | None = None
) -> CentralView:
    """Ask the configured central for its witnessed head of this station's ledger, over the station's
    own uplink transport (``[uplink] transport``, with the enrollment identity; ``transport`` overrides
    it). Never raises for a central that cannot be reached: the view says why."""
    from edge.pki.names import IdentityError
    from edge.uplink.transports import transport_for

    uplink = config.uplink
    url = uplink.central_url
    if not uplink.enabled:
        return CentralView(url, failure="the station configuration has no [uplink] central_url")
    try:
        wire = transport or transport_for(config, None, purpose="verify")
        async with asyncio.timeout(timeout_s), wire.connect() as link:
            answer = await link.ledger_state()
    except (NotDone, IdentityError, OSError, TimeoutError, ValueError) as exc:
        return CentralView(url, failure=f"{type(exc).__name__}: {str(exc)[:300]}")
    return CentralView(url, head=answer.head, witnessed_head=answer.witnessed_head)


@dataclass
class WitnessFindings:
    """What checking the store against the witnessed heads found."""

    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)
    # When the ledger no longer holds a witnessed head: the newest witnessed seq it still matches (0 for
    # none), from which the central's copy of the ledger can name what changed (edge.verify.central_ledger).
    diverged_after: int | None = None


@dataclass(frozen=True)
class _Witnessed:
    head: WitnessedHead
    where: str  # where the station kept it, or "the central"


def witness_findings(
    conn: sqlite3.Connection,
    layout: StoreLayout,
    station: str,
    station_key_id: str,
    central_key: Ed25519PublicKey | None,
    central_view: CentralView | None,
) -> WitnessFindings:
    """Check the ledger against every witnessed head the store keeps and, when given, the central's."""
    found = WitnessFindings()
    head_seq = int(conn.execute("SELECT coalesce(max(seq), 0) FROM ledger").fetchone()[0])
    heads: dict[tuple[int, str], _Witnessed] = {}
    for where, doc in _kept_heads(conn, layout, found):
        if central_key is None:
            continue
        if not isinstance(doc, Mapping):
            found.problems.append(Problem(where, "is not a JSON object"))
            continue
        problems = verify_witnessed_head(doc, central_key, expected_station=station or None, where=where)
        if problems:
            found.problems.extend(problems)
            continue
        witnessed = WitnessedHead.from_dict(doc)
        heads.setdefault((witnessed.seq, witnessed.hash), _Witnessed(witnessed, where))
    if central_key is None:
        found.notes.append("witnessed heads not checked: no pinned central key (no station configuration "
                           "with [uplink], and no --central-key)")
    central = _central_head(central_view, central_key, station, found)
    if central is not None:
        _check_central_kept(central, heads.values(), found)
        heads.setdefault((central.head.seq, central.head.hash), central)
    found.checked["witnessed_heads"] = len(heads)
    _check_heads(conn, sorted(heads.values(), key=lambda w: w.head.seq), head_seq, found)
    _check_station_key(conn, heads.values(), station_key_id, found)
    newest = max((w.head.seq for w in heads.values()), default=0)
    found.checked["unwitnessed_entries"] = max(0, head_seq - newest)
    found.notes.append(f"unwitnessed window: {unwitnessed_window(conn, newest).describe()}")
    if central_key is not None:
        _check_erasures_witnessed(conn, newest, found)
    alarm = alarm_state(conn)
    if alarm is not None and alarm.standing:
        found.notes.append(f"the uplink stopped on a witness alarm about the central (ledger seq "
                           f"{alarm.seq}); see that entry, and `edge witness show`")
    elif alarm is not None:
        found.notes.append(f"the witness alarm of ledger seq {alarm.seq} was cleared by an operator at "
                           f"ledger seq {alarm.cleared_seq}; see both entries")
    return found


def _kept_heads(
    conn: sqlite3.Connection, layout: StoreLayout, found: WitnessFindings
) -> Iterator[tuple[str, object]]:
    expected_id = 1  # kept heads are numbered 1, 2, 3...: a gap is a deleted row
    for stored in stored_witnessed_heads(conn):
        if stored.row_id != expected_id:
            gap = (f"witnessed head {expected_id}" if stored.row_id == expected_id + 1
                   else f"witnessed heads {expected_id}-{stored.row_id - 1}")
            found.problems.append(Problem(gap, "missing: kept heads are append-only, and rows were deleted"))
        expected_id = stored.row_id + 1
        where = f"witnessed head {stored.row_id} (kept from a {stored.source} at {stored.received})"
        if stored.head is None:
            found.problems.append(Problem(where, stored.problem or "unreadable"))
        else:
            yield where, stored.head.to_dict()
    unwitnessed = 0
    for path in sorted(layout.items.rglob("*.receipt.json")) if layout.items.is_dir() else []:
        try:
            receipt = parse_json(path.read_bytes())
        except (OSError, CanonicalJsonError, ValueError):
            continue  # named by the receipt checks
        if not isinstance(receipt, dict):
            continue
        if "witnessed_head" in receipt:
            yield f"receipt {path.relative_to(layout.root)} witnessed_head", receipt["witnessed_head"]
        else:
            unwitnessed += 1
    found.checked["receipts_unwitnessed"] = unwitnessed


def _central_head(
    view: CentralView | None, central_key: Ed25519PublicKey | None, station: str, found: WitnessFindings
) -> _Witnessed | None:
    if view is None:
        found.notes.append("the central was not consulted (no station configuration naming a central was "
                           "found for this store; give --config FILE): only the witnessed heads kept in this "
                           "store were checked, and someone who rewrote every file of the store could have "
                           "removed those")
        return None
    if view.failure is not None:
        central = f"the central at {view.url}" if view.url else "the central"
        found.notes.append(f"{central} could not be consulted ({view.failure}): only the witnessed heads "
                           "kept in this store were checked, and someone who rewrote every file of the store "
                           "could have removed those")
        return None
    found.checked["central_consulted"] = 1
    if view.witnessed_head is None:
        found.notes.append(f"the central at {view.url} holds none of this station's ledger yet")
        return None
    if central_key is None:
        return None
    where = f"the central's witnessed head (from {view.url})"
    problems = verify_witnessed_head(view.witnessed_head, central_key, expected_station=station or None,
                                     where=where)
    if problems:
        found.problems.extend(problems)
        return None
    return _Witnessed(WitnessedHead.from_dict(view.witnessed_head), "the central")


def _check_central_kept(central: _Witnessed, kept: Any, found: WitnessFindings) -> None:
    """The central must still hold what it witnessed: a head it signed earlier beyond the one it now
    answers with means it lost or dropped entries of this station's ledger (the uplink raises the same
    alarm; the station's own store may be intact)."""
    newest = max(kept, key=lambda w: w.head.seq, default=None)
    if newest is None or newest.head.seq <= central.head.seq:
        return
    found.problems.append(Problem(
        f"central {central.head.central}",
        f"now holds this station's ledger only up to seq {central.head.seq}, but it witnessed (signed) seq "
        f"{newest.head.seq} with hash {newest.head.hash} at {newest.head.time} ({newest.where}): the central "
        "lost or dropped ledger entries it had accepted",
    ))


def _check_heads(
    conn: sqlite3.Connection, heads: list[_Witnessed], head_seq: int, found: WitnessFindings
) -> None:
    """Every witnessed (seq, hash) must be in the ledger; the first rewritten head and the newest one past
    the ledger's end are named in full."""
    failing: list[tuple[_Witnessed, str]] = []
    last_good = 0
    common = 0
    for witnessed in heads:
        head = witnessed.head
        row = conn.execute("SELECT hash FROM ledger WHERE seq = ?", (head.seq,)).fetchone()
        if row is not None and row[0] == head.hash:
            last_good = max(last_good, head.seq)
            if not failing:
                common = head.seq  # the ledgers agree up to here (a hash chain: every entry before too)
            continue
        if head.seq > head_seq:
            lost = (f"entry {head.seq} was deleted after the central accepted it" if head.seq == head_seq + 1
                    else f"entries {head_seq + 1}-{head.seq} were deleted after the central accepted them")
            # Only the head is known: the same count of entries may have gone from anywhere before it, the
            # rest renumbered and the chain rewritten with the station key.
            what = (f"the ledger ends at seq {head_seq}: {lost} (the tail was truncated, or as many earlier "
                    "entries were deleted and the chain rewritten)")
        elif row is None:
            what = f"the ledger has no entry at seq {head.seq}: it was deleted after the central accepted it"
        else:
            since = f" (the witnessed head at seq {last_good} still matches)" if last_good else ""
            what = (f"ledger seq {head.seq} has hash {str(row[0])[:64]}: the ledger was rewritten at or "
                    f"before seq {head.seq}{since}")
        failing.append((witnessed, what))
    if not failing:
        return
    found.diverged_after = common
    # Named in full: the first rewritten head (where the ledger stopped matching) and the newest head past
    # the ledger's end (how far it reached before it was truncated); the others are counted.
    rewritten = [pair for pair in failing if pair[0].head.seq <= head_seq]
    truncated = [pair for pair in failing if pair[0].head.seq > head_seq]
    named = rewritten[:1] + truncated[-1:]
    for witnessed, what in named:
        head = witnessed.head
        found.problems.append(Problem(
            f"witnessed head seq {head.seq}",
            f"central {head.central} witnessed (signed) seq {head.seq} with hash {head.hash} at {head.time} "
            f"({witnessed.where}), but {what}",
        ))
    others = [pair for pair in failing if pair not in named]
    if others:
        newest = max(others, key=lambda pair: pair[0].head.seq)[0]
        found.problems.append(Problem(
            "witnessed heads", f"{len(others)} other witnessed heads (up to seq {newest.head.seq}, "
                               f"{newest.where}) are not in the ledger either",
        ))


_NAMED_ERASURES = 10


def _check_erasures_witnessed(conn: sqlite3.Connection, witnessed_seq: int, found: WitnessFindings) -> None:
    """A recorder file erased while no head the central witnessed covers its item's `sealed` entry is a
    problem (wipe policy after-verify during an outage, or witnessed heads removed from the store):
    nothing outside this store proves the acquisition, and the recorder's copy is gone. Under
    after-witness and after-receipt the erasure waits for that head."""
    rows = conn.execute(
        "SELECT w.item, w.seq, (SELECT max(s.seq) FROM ledger s WHERE s.item = w.item AND s.type = ? "
        "AND s.seq < w.seq) FROM ledger w WHERE w.type = ? ORDER BY w.seq",
        (EntryType.SEALED, EntryType.WIPED),
    ).fetchall()
    unwitnessed = [(str(item), int(wiped), sealed) for item, wiped, sealed in rows
                   if not isinstance(sealed, int) or sealed > witnessed_seq]
    found.checked["erasures_unwitnessed"] = len(unwitnessed)
    for item, wiped, sealed in unwitnessed[:_NAMED_ERASURES]:
        at = f"its sealed entry (seq {sealed})" if isinstance(sealed, int) else "any sealed entry"
        found.problems.append(Problem(
            f"item {item}",
            f"its recorder file was erased (ledger seq {wiped}) but no head the central witnessed covers "
            f"{at} (witnessed up to seq {witnessed_seq}): nothing outside this store proves the "
            "acquisition, and whoever can rewrite the store could remove the item unseen",
        ))
    if len(unwitnessed) > _NAMED_ERASURES:
        found.problems.append(Problem(
            "erasures", f"{len(unwitnessed) - _NAMED_ERASURES} more items erased from their recorders are "
                        f"not covered by a witnessed head either",
        ))


def _check_station_key(
    conn: sqlite3.Connection, heads: Iterator[_Witnessed] | Any, station_key_id: str, found: WitnessFindings
) -> None:
    """The newest witnessed head names the key the central checked our chain with: the store's key,
    unless the ledger rotated the key after it (re-enrollment pending)."""
    newest = max(heads, key=lambda w: w.head.seq, default=None)
    if newest is None or newest.head.station_key_id == station_key_id:
        return
    rotated = conn.execute("SELECT 1 FROM ledger WHERE type = ? AND seq > ? LIMIT 1",
                           (_KEY_ROTATED, newest.head.seq)).fetchone()
    if rotated is None:
        found.problems.append(Problem(
            "station key",
            f"the store's public key is {station_key_id}, but the central checked this ledger with key "
            f"{newest.head.station_key_id} up to seq {newest.head.seq} ({newest.where}) and the ledger "
            "records no key rotation since: the station key was replaced",
        ))
