"""HTTP routes of the disclosure package, the statistics and the spot checks, and their pages.

    GET /v1/disclosure?case=CASE            the items a package of CASE would hold (JSON)
    GET /v1/disclosure/package?case=CASE    the package itself (application/zip, streamed)
    GET /v1/stats?from=&to=                 statistics of the period (JSON)
    GET /v1/spot-checks?from=&to=&size=|fraction=[&seed=]          a spot check (JSON)
    GET /v1/spot-checks/report?...          the same check as a printable page (HTML)
    GET /audit/stats, /audit/spot-check, /audit/disclosure           the pages (no build step)

Every route authenticates the reader and logs the read before answering (:mod:`.access`); listings see
only the items the reader may see, and a case whose items the reader may not see answers exactly as a
case that does not exist. :func:`add_audit_routes` is the one hook the application factory calls.
"""

from __future__ import annotations

import asyncio
import io
import logging
import math
import re
import secrets
from importlib import resources
from typing import TYPE_CHECKING, Any, BinaryIO, cast
from urllib.parse import urlencode

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.central.disclosure.access import Reader, items_matching, log_read, reader_of
from edge.central.disclosure.package import (
    DamagedObject,
    PackagePlan,
    StationSegment,
    coverage_for,
    disclosed_item,
    segment_for,
    station_keys_in_use,
    write_package,
)
from edge.central.disclosure.page import page_html, page_text
from edge.central.index import ItemQuery
from edge.central.numbers import AsciiNumberError, parse_ascii_uint
from edge.central.readside import parse_item_query
from edge.central.registration import RejectCode, Rejection
from edge.central.spotcheck import RotationCache, SpotCheck, check_item, choose_sample, report_html
from edge.central.stats import Statistics, item_facts
from edge.custody.canonical import canonical_json
from edge.custody.disclosure import PackageIndex, StationCoverage
from edge.custody.keys import key_id_of
from edge.custody.ledger import station_time_now
from edge.custody.receipt import Receipt

if TYPE_CHECKING:
    from edge.central.app import CentralParts

__all__ = ["add_audit_routes"]

log = logging.getLogger(__name__)

_MAX_CASE_CHARS = 200
_MAX_SEED = (1 << 53) - 1  # canonical JSON holds integers exactly up to here
_MAX_SAMPLE = 10_000
_SINK_FLUSH_BYTES = 256 * 1024
_PAGES = {"stats": "stats.html", "spot-check": "spotcheck.html", "disclosure": "disclosure.html"}
_STATIC = {"audit.js": "text/javascript", "stats.js": "text/javascript", "spotcheck.js": "text/javascript",
           "disclosure.js": "text/javascript", "audit.css": "text/css", "report.css": "text/css"}
# The pages and the report run no inline script or style and reach nothing but this origin, so that text a
# device wrote can never become code even if a page forgot textContent somewhere.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_PAGE_PATHS = ("/audit/", "/v1/spot-checks/report")


def _bad(detail: str) -> Rejection:
    return Rejection(RejectCode.BAD_REQUEST, detail)


def _only(request: web.Request, allowed: set[str]) -> None:
    unknown = sorted(set(request.query) - allowed)
    if unknown:
        raise _bad(f"unknown query parameters {unknown[:5]!r}; expected some of {', '.join(sorted(allowed))}")
    for name in request.query:
        if len(request.query.getall(name)) > 1:
            raise _bad(f"query parameter {name} is given more than once")


def _case(request: web.Request) -> str:
    _only(request, {"case"})
    case = request.query.get("case", "")
    if not case or len(case) > _MAX_CASE_CHARS or not case.isprintable():
        raise _bad(f"case must be a case number of 1-{_MAX_CASE_CHARS} printable characters")
    return case


class _Params(dict[str, str]):
    """Query parameters given once each, read the way the read side's parser reads a multidict."""

    def getall(self, name: str, default: list[str]) -> list[str]:
        return [self[name]] if name in self else default


def _period(request: web.Request) -> tuple[str, str]:
    """The required from/to of a period, as the read side parses them (ledger UTC time format)."""
    given = _Params({name: request.query[name] for name in ("from", "to") if name in request.query})
    if set(given) != {"from", "to"}:
        raise _bad("from and to are required (ISO-8601 dates or date-times with a zone)")
    query = parse_item_query(given)
    assert query.time_from is not None and query.time_to is not None
    return query.time_from, query.time_to


class _ResponseSink(io.RawIOBase):
    """A write-only stream for a worker thread that hands the bytes to the response on the event loop,
    waiting for each piece to be written (the response's flow control bounds what is in flight)."""

    def __init__(self, response: web.StreamResponse, loop: asyncio.AbstractEventLoop) -> None:
        self.response = response
        self.loop = loop
        self.pending = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.pending += data
        if len(self.pending) >= _SINK_FLUSH_BYTES:
            self.send()
        return len(data)

    def send(self) -> None:
        if self.pending:
            piece = bytes(self.pending)
            self.pending.clear()
            asyncio.run_coroutine_threadsafe(self.response.write(piece), self.loop).result()


class AuditRoutes:
    def __init__(self, parts: CentralParts) -> None:
        self.parts = parts

    async def _reader(self, request: web.Request) -> Reader:
        return await reader_of(request, self.parts)

    # -- disclosure ----------------------------------------------------------------------------------

    def _case_records(self, reader: Reader, case: str) -> list[Any]:
        records = list(items_matching(self.parts, reader, ItemQuery(case_number=case)))
        if not records:
            # The same answer whether the case does not exist or holds nothing this reader may see.
            raise Rejection(RejectCode.NOT_FOUND, "no items of this case are visible to you")
        return records

    async def preview(self, request: web.Request) -> web.Response:
        reader = await self._reader(request)
        case = _case(request)
        await log_read(self.parts, request, reader, "disclosure-preview", query=f"case={case}")
        records = await self.parts.read(self._case_records, reader, case)
        return _json({"case_number": case, "items": [disclosed_item(r).to_dict() for r in records]})

    async def _plan(self, reader: Reader, case: str, records: list[Any]) -> PackagePlan:
        parts = self.parts
        receipts = await parts.write(self._receipts, records)
        # The ledger part reads every entry from the first disclosed one to the head (a long span for an old
        # item): in a worker thread, on a snapshot of the index, so the event loop keeps serving and the
        # stated head and the segment come from one state.
        segments, coverage, station_keys = await asyncio.to_thread(self._ledger_part, records)
        central_key = parts.signing_key.public_key()
        index = PackageIndex(
            case_number=case, central=parts.config.central.id, created_utc=station_time_now(),
            reader=reader.reader, central_key_id=key_id_of(central_key),
            items=tuple(disclosed_item(r) for r in records),
            station_keys={station: tuple(sorted(keys)) for station, keys in station_keys.items()},
            coverage=coverage,
        )
        return PackagePlan(index, records, receipts, segments, station_keys, central_key, page_html(index),
                           page_text(index))

    def _receipts(self, records: list[Any]) -> dict[str, Receipt]:
        """A fresh receipt of each record's item (the database's writer: it may sign a tree head)."""
        receipts = {}
        for record in records:
            receipt = self.parts.registrar.receipt_for(record.item)
            if receipt is None:
                raise Rejection(RejectCode.NOT_FOUND, f"no receipt for item {record.item}")
            receipts[record.item] = receipt
        return receipts

    def _ledger_part(self, records: list[Any]) -> tuple[
        list[StationSegment], dict[str, StationCoverage], dict[str, dict[str, Ed25519PublicKey]]
    ]:
        stations = sorted({record.station for record in records})
        segments = []
        coverage = {}
        with self.parts.index.snapshot() as index:
            for station in stations:
                mine = [r for r in records if r.station == station]
                covered = coverage_for(station, mine, index)
                if covered is not None:
                    coverage[station] = covered
                segment = segment_for(station, mine, index, covered.head_seq if covered is not None else None)
                if segment is None:
                    raise Rejection(RejectCode.NOT_FOUND, f"the ledger of station {station} has no "
                                                          "signed checkpoint covering these items yet; try "
                                                          "again later")
                segments.append(segment)
            station_keys = {station: station_keys_in_use(station, index) for station in stations}
        return segments, coverage, station_keys

    async def package(self, request: web.Request) -> web.StreamResponse:
        reader = await self._reader(request)
        case = _case(request)
        await log_read(self.parts, request, reader, "disclosure-package", query=f"case={case}")
        records = await self.parts.read(self._case_records, reader, case)
        # Each disclosed item's own trail shows that it left in this package, for whom and when.
        for record in records:
            await log_read(self.parts, request, reader, "disclosure", item=record.item, query=f"case={case}")
        plan = await self._plan(reader, case, records)
        safe = re.sub(r"[^A-Za-z0-9_-]+", "_", case)[:80] or "case"
        response = web.StreamResponse(headers={
            "Content-Type": "application/zip",
            "Content-Disposition": f'attachment; filename="disclosure-{safe}.zip"',
            "Cache-Control": "no-store",
        })
        await response.prepare(request)
        sink = _ResponseSink(response, asyncio.get_running_loop())

        def build() -> None:
            # zipfile needs only write() (and finds out by itself that the sink cannot seek).
            with self.parts.index.snapshot() as index:
                write_package(plan, cast(BinaryIO, sink), self.parts.objects.open, self.parts.signing_key,
                              index)
            sink.send()

        try:
            await asyncio.to_thread(build)
        except ConnectionError as exc:
            log.info("reader %s left before the package of case %r was complete (%s)", reader.reader,
                     case[:80], exc)
            return response
        except (DamagedObject, OSError) as exc:
            # Cut off before the signed list of files: the reader holds a zip that does not open, never a
            # package that passes for complete.
            log.error("disclosure package of case %r for %s stopped: %s; run `edge verify`", case[:80],
                      reader.reader, exc)
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
        log.info("reader %s: disclosure package of case %r with %d items", reader.reader, case[:80],
                 len(records))
        return response

    # -- statistics ----------------------------------------------------------------------------------

    async def stats(self, request: web.Request) -> web.Response:
        reader = await self._reader(request)
        _only(request, {"from", "to"})
        time_from, time_to = _period(request)
        await log_read(self.parts, request, reader, "stats", query=request.query_string[:1000])

        def folded() -> Statistics:
            fold = Statistics()
            query = ItemQuery(time_from=time_from, time_to=time_to)
            for record in items_matching(self.parts, reader, query):
                fold.add(item_facts(record, self.parts.index.current_case(record.item)))
            return fold

        fold = await self.parts.read(folded)
        return _json({"from": time_from, "to": time_to, **fold.to_dict()})

    # -- spot checks ---------------------------------------------------------------------------------

    async def _spot_check(self, request: web.Request) -> SpotCheck:
        reader = await self._reader(request)
        _only(request, {"from", "to", "size", "fraction", "seed"})
        time_from, time_to = _period(request)
        size, fraction, requested = _sample_size(request)
        seed = _seed(request)
        started = station_time_now()
        recorded = {"from": time_from, "to": time_to, "sample": requested, "seed": seed}
        await log_read(self.parts, request, reader, "spot-check", query=canonical_json(recorded).decode())
        query = ItemQuery(time_from=time_from, time_to=time_to)
        records = await self.parts.read(
            lambda: {r.item: r for r in items_matching(self.parts, reader, query)})
        chosen = choose_sample(list(records), seed=seed, size=size, fraction=fraction)
        checks = []
        rotations: RotationCache = {}  # each station's key rotations, read once per spot check
        for item in chosen:
            await log_read(self.parts, request, reader, "spot-check", item=item, query=f"seed={seed}")
            checks.append(await check_item(self.parts, records[item], rotations))
        result = SpotCheck(time_from, time_to, seed, len(records), requested, reader.reader, started, checks)
        await log_read(self.parts, request, reader, "spot-check-result", query=canonical_json(
            {**recorded, "sampled": len(checks), "failed": result.failed,
             "failed_items": [c.item for c in checks if not c.ok][:50]}).decode())
        return result

    async def spot_check(self, request: web.Request) -> web.Response:
        return _json((await self._spot_check(request)).to_dict())

    async def spot_check_report(self, request: web.Request) -> web.Response:
        result = await self._spot_check(request)
        params = {**{k: request.query[k] for k in ("from", "to", "size", "fraction") if k in request.query},
                  "seed": str(result.seed)}
        return web.Response(body=report_html(result, urlencode(params)), content_type="text/html",
                            charset="utf-8", headers={"Cache-Control": "no-store"})

    # -- pages -----------------------------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.Response:
        await self._reader(request)
        name = _PAGES[request.match_info["page"]]
        return web.Response(body=_static(name), content_type="text/html", charset="utf-8")

    async def static(self, request: web.Request) -> web.Response:
        await self._reader(request)
        name = request.match_info["name"]
        if name not in _STATIC:
            raise web.HTTPNotFound()
        return web.Response(body=_static(name), content_type=_STATIC[name], charset="utf-8")


def _static(name: str) -> bytes:
    return resources.files("edge.central.disclosure").joinpath("static", name).read_bytes()


def _sample_size(request: web.Request) -> tuple[int | None, float | None, str]:
    size_text, fraction_text = request.query.get("size"), request.query.get("fraction")
    if (size_text is None) == (fraction_text is None):
        raise _bad("give the sample as size (a number of items) or fraction (0 < f <= 1), not both")
    if size_text is not None:
        try:
            size = parse_ascii_uint(size_text, minimum=1, maximum=_MAX_SAMPLE)
        except AsciiNumberError as exc:
            raise _bad(f"size must be an integer 1-{_MAX_SAMPLE}: {exc}") from None
        return size, None, f"size={size}"
    assert fraction_text is not None
    try:
        fraction = float(fraction_text) if re.fullmatch(r"0?\.\d{1,6}|1(\.0*)?", fraction_text) else math.nan
    except ValueError:
        fraction = math.nan
    if not 0 < fraction <= 1:
        raise _bad(f"fraction must be a decimal number with 0 < fraction <= 1, found {fraction_text[:20]!r}")
    return None, fraction, f"fraction={fraction:g}"


def _seed(request: web.Request) -> int:
    text = request.query.get("seed")
    if text is None:
        # A fresh seed, recorded with the check so the same sample can be drawn again.
        return secrets.randbelow(_MAX_SEED)
    try:
        return parse_ascii_uint(text, maximum=_MAX_SEED)
    except AsciiNumberError as exc:
        raise _bad(f"seed must be an integer 0-{_MAX_SEED}: {exc}") from None


def _json(doc: Any) -> web.Response:
    return web.Response(body=canonical_json(doc), content_type="application/json",
                        headers={"Cache-Control": "no-store"})


async def _page_headers(request: web.Request, response: web.StreamResponse) -> None:
    if request.path.startswith(_PAGE_PATHS):
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"


def add_audit_routes(app: web.Application, parts: CentralParts) -> None:
    routes = AuditRoutes(parts)
    app.on_response_prepare.append(_page_headers)
    app.router.add_get("/v1/disclosure", routes.preview)
    app.router.add_get("/v1/disclosure/package", routes.package)
    app.router.add_get("/v1/stats", routes.stats)
    app.router.add_get("/v1/spot-checks", routes.spot_check)
    app.router.add_get("/v1/spot-checks/report", routes.spot_check_report)
    app.router.add_get(r"/audit/{page:stats|spot-check|disclosure}", routes.page)
    app.router.add_get("/audit/static/{name}", routes.static)
