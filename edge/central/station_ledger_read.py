"""``GET /v1/stations/{station}/ledger?after=SEQ&limit=N``: the station ledger entries the central holds.

A station whose own files were rewritten (entries deleted, the chain recomputed and re-signed with its
key) can learn from its witnessed heads only *that* its ledger changed; the entries the central accepted
say *what* changed. ``edge verify STORE`` pages through them (``edge.verify.central_ledger``) to name the
items whose entries the central holds but the local ledger lacks or holds differently.

Who may read: the station itself (mutual TLS, its enrolled certificate) and enrolled readers (auditors),
whose every read is first appended to the access log (a read that cannot be logged is refused, as on the
read side). A reader with the role ``reader`` reads only the ledgers of stations assigned to its units
(``edge central station-unit``), a supervisor any; for both, an entry about an item the reader may not
see (another unit's, or sensitive without the reader named) keeps only ``seq``, ``prev`` and ``hash``
with ``"redacted"``, so the chain still links (not a format-2 entry's item tag: it would let a reader who
once saw the item's id follow it). Any other station gets 403 ``wrong_station``, recorded like its other
refusals, whether or not the station it named exists.

The answer is ``{"station", "after", "entries": [...], "next", "head": {"seq", "hash"},
"witnessed_head"}``: entries with ``seq > after`` in order, each exactly as the station hashed it (so a
reader can check the chain), at most ``limit`` of them and at most :data:`MAX_ANSWER_BYTES` of JSON
(always at least one when there is one); ``next`` is the ``after`` of the next page, or null at the head;
``witnessed_head`` is the head signed by the central, which the chain must reach. ``after`` and ``limit``
are ASCII digits only (:mod:`edge.central.numbers`), each given at most once, and nothing else is
accepted: 400 with a JSON body otherwise.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

from edge.central.console.scope import logged_read, scope_of
from edge.central.index import CentralIndexError, ReaderScope, validate_station_id
from edge.central.numbers import AsciiNumberError, parse_ascii_uint
from edge.central.registration import RejectCode, Rejection
from edge.custody.canonical import canonical_json

if TYPE_CHECKING:
    from edge.central.app import CentralParts

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_AFTER",
    "MAX_ANSWER_BYTES",
    "MAX_LIMIT",
    "StationLedgerRead",
    "add_station_ledger_route",
]

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 500
MAX_LIMIT = 1000
MAX_ANSWER_BYTES = 1 << 20
_PARAMETERS = ("after", "limit")
MAX_AFTER = 2**53 - 1  # the largest integer canonical JSON carries (the answer echoes it)


def _bad(detail: str) -> Rejection:
    return Rejection(RejectCode.BAD_REQUEST, detail)


def _parameters(query: Any) -> tuple[int, int]:
    unknown = sorted(set(query) - set(_PARAMETERS))
    if unknown:
        raise _bad(f"unknown query parameters {[name[:40] for name in unknown[:5]]!r}; expected after and "
                   "limit only")
    values: dict[str, int] = {"after": 0, "limit": DEFAULT_LIMIT}
    for name, bounds in (("after", (0, MAX_AFTER)), ("limit", (1, MAX_LIMIT))):
        given = query.getall(name, [])
        if len(given) > 1:
            raise _bad(f"query parameter {name} is given {len(given)} times; give it once")
        if given:
            try:
                values[name] = parse_ascii_uint(given[0], minimum=bounds[0], maximum=bounds[1])
            except AsciiNumberError as exc:
                raise _bad(f"query parameter {name} must be an integer {bounds[0]}-{bounds[1]}: "
                           f"{exc}") from None
    return values["after"], values["limit"]


class StationLedgerRead:
    """The handler; one per application."""

    def __init__(self, parts: CentralParts) -> None:
        self.parts = parts

    async def _authorised(self, request: web.Request, station: str) -> ReaderScope | None:
        """The station itself (None), or a reader's scope after its read is logged; raises
        :class:`Rejection`. A reader (role reader) reads the ledgers of its units' stations only."""
        principal = await self.parts.station_read(self.parts.auth.station_or_reader, request)
        if principal.kind == "station":
            if principal.name != station:
                log.warning("station %s asked for the ledger of station %r", principal.name, station[:64])
                raise await self.parts.registrar.rejected(
                    Rejection(RejectCode.WRONG_STATION, f"station {principal.name} may read its own ledger "
                                                        "only"),
                    station=principal.name, remote=request.remote,
                )
            return None
        scope = await self.parts.read(scope_of, self.parts, principal.name)
        await logged_read(request, scope, "station-ledger",
                          query=f"station={station[:64]}&{request.query_string[:900]}")
        console = self.parts.console
        if not scope.all_units and await self.parts.read(console.station_unit, station) not in scope.units:
            raise Rejection(RejectCode.FORBIDDEN, f"reader {scope.reader} reads the ledgers of the stations "
                                                  f"of units {' '.join(sorted(scope.units))} only")
        return scope

    async def get(self, request: web.Request) -> web.Response:
        station = request.match_info["station"]
        scope = await self._authorised(request, station)
        try:
            validate_station_id(station)
        except CentralIndexError as exc:
            raise _bad(f"station: {exc}") from None
        after, limit = _parameters(request.query)
        # Off the loop (review 13): a station's page in the stations' reader threads, a reader's in the
        # console's.
        read = self.parts.station_read if scope is None else self.parts.read
        page = await read(self.page, station, after, limit, scope)
        return web.Response(
            body=canonical_json(page),
            content_type="application/json",
            headers={"Cache-Control": "no-store"},
        )

    def page(self, station: str, after: int, limit: int, scope: ReaderScope | None) -> dict[str, Any]:
        """The answer for ``station``'s entries after ``after`` (``scope`` None: the station itself; the MQTT
        API's ledger-page answers with this too). Raises :class:`Rejection` for a station not enrolled."""
        record = self.parts.index.station(station)
        if record is None:
            raise Rejection(RejectCode.NOT_FOUND, f"no station {station} is enrolled at this central")
        head_seq, head_hash = self.parts.index.ledger_head(station)
        entries: list[dict[str, Any]] = []
        seen: dict[str, bool] = {}
        size = 0
        last = after
        if after < head_seq:
            end = min(head_seq, after + limit)
            for entry in self.parts.index.ledger_entries(station, after + 1, end_seq=end):
                doc = entry.to_dict()
                hidden = scope is not None and entry.item is not None \
                    and not self._visible(entry.item, scope, seen)
                if hidden:
                    # The chain still links (seq, prev, hash); what the entry says about an item this
                    # reader may not see is left out. Not its format-2 parts: its item tag would let a
                    # reader who once saw the item's id follow it after it became hidden (a disclosure
                    # package ships them, to prove completeness for the items it discloses).
                    doc = {"seq": entry.seq, "prev": entry.prev, "hash": entry.hash,
                           "redacted": "an item this reader may not see"}
                length = len(canonical_json(doc)) + 1
                if entries and size + length > MAX_ANSWER_BYTES:
                    break
                entries.append(doc)
                size += length
                last = entry.seq
        witnessed = self.parts.registrar.witnessed_head(record, (head_seq, head_hash))
        return {
            "station": station,
            "after": after,
            "entries": entries,
            "next": last if last < head_seq and entries else None,
            "head": {"seq": head_seq, "hash": head_hash},
            "witnessed_head": None if witnessed is None else witnessed.to_dict(),
        }

    def _visible(self, item: str, scope: ReaderScope, seen: dict[str, bool]) -> bool:
        if item not in seen:
            seen[item] = self.parts.index.item_visible(item, scope)
        return seen[item]


def add_station_ledger_route(app: web.Application, parts: CentralParts) -> None:
    app.router.add_get("/v1/stations/{station}/ledger", StationLedgerRead(parts).get)
