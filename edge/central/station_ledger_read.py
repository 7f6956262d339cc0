"""``GET /v1/stations/{station}/ledger?after=SEQ&limit=N``: the station ledger entries the central holds.

A station whose own files were rewritten (entries deleted, the chain recomputed and re-signed with its
key) can learn from its witnessed heads only *that* its ledger changed; the entries the central accepted
say *what* changed. ``edge verify STORE`` pages through them (``edge.verify.central_ledger``) to name the
items whose entries the central holds but the local ledger lacks or holds differently.

Who may read: the station itself (mutual TLS, its enrolled certificate) and enrolled readers (auditors),
whose every read is first appended to the access log (a read that cannot be logged is refused, as on the
read side). Any other station gets 403 ``wrong_station``, recorded like its other refusals, whether or
not the station it named exists.

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

from edge.central.index import CentralIndexError, validate_station_id
from edge.central.numbers import AsciiNumberError, parse_ascii_uint
from edge.central.registration import RejectCode, Rejection
from edge.custody.canonical import canonical_json

if TYPE_CHECKING:
    from edge.central.app import CentralParts

__all__ = ["DEFAULT_LIMIT", "MAX_ANSWER_BYTES", "MAX_LIMIT", "StationLedgerRead", "add_station_ledger_route"]

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 500
MAX_LIMIT = 1000
MAX_ANSWER_BYTES = 1 << 20
_PARAMETERS = ("after", "limit")
_MAX_AFTER = 2**53 - 1  # the largest integer canonical JSON carries (the answer echoes it)


def _bad(detail: str) -> Rejection:
    return Rejection(RejectCode.BAD_REQUEST, detail)


def _parameters(query: Any) -> tuple[int, int]:
    unknown = sorted(set(query) - set(_PARAMETERS))
    if unknown:
        raise _bad(f"unknown query parameters {[name[:40] for name in unknown[:5]]!r}; expected after and "
                   "limit only")
    values: dict[str, int] = {"after": 0, "limit": DEFAULT_LIMIT}
    for name, bounds in (("after", (0, _MAX_AFTER)), ("limit", (1, MAX_LIMIT))):
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

    def _authorised(self, request: web.Request, station: str) -> None:
        """The station itself, or a reader whose read is logged first; raises :class:`Rejection`."""
        principal = self.parts.auth.station_or_reader(request)
        if principal.kind == "station":
            if principal.name != station:
                log.warning("station %s asked for the ledger of station %r", principal.name, station[:64])
                raise self.parts.registrar.reject(
                    Rejection(RejectCode.WRONG_STATION, f"station {principal.name} may read its own ledger "
                                                        "only"),
                    station=principal.name, remote=request.remote,
                )
            return
        try:
            self.parts.index.log_access(reader=principal.name, what="station-ledger", item=None,
                                        query=f"station={station[:64]}&{request.query_string[:900]}",
                                        remote=request.remote)
        except self.parts.index.unit.errors as exc:
            log.error("access log unavailable (%s); refusing the ledger of %s to reader %s", exc,
                      station[:64], principal.name)
            raise Rejection(RejectCode.ACCESS_LOG_UNAVAILABLE,
                            "this read cannot be logged, so it is refused; try again later") from None
        log.info("reader %s: ledger of station %s (%s) from %s", principal.name, station[:64],
                 request.query_string[:200], request.remote)

    async def get(self, request: web.Request) -> web.Response:
        station = request.match_info["station"]
        self._authorised(request, station)
        try:
            validate_station_id(station)
        except CentralIndexError as exc:
            raise _bad(f"station: {exc}") from None
        after, limit = _parameters(request.query)
        record = self.parts.index.station(station)
        if record is None:
            raise Rejection(RejectCode.NOT_FOUND, f"no station {station} is enrolled at this central")
        head_seq, head_hash = self.parts.index.ledger_head(station)
        entries: list[dict[str, Any]] = []
        size = 0
        last = after
        if after < head_seq:
            end = min(head_seq, after + limit)
            for entry in self.parts.index.ledger_entries(station, after + 1, end_seq=end):
                doc = entry.to_dict()
                length = len(canonical_json(doc)) + 1
                if entries and size + length > MAX_ANSWER_BYTES:
                    break
                entries.append(doc)
                size += length
                last = entry.seq
        witnessed = self.parts.registrar.witnessed_head(record, (head_seq, head_hash))
        return web.Response(
            body=canonical_json({
                "station": station,
                "after": after,
                "entries": entries,
                "next": last if last < head_seq and entries else None,
                "head": {"seq": head_seq, "hash": head_hash},
                "witnessed_head": None if witnessed is None else witnessed.to_dict(),
            }),
            content_type="application/json",
            headers={"Cache-Control": "no-store"},
        )


def add_station_ledger_route(app: web.Application, parts: CentralParts) -> None:
    app.router.add_get("/v1/stations/{station}/ledger", StationLedgerRead(parts).get)
