"""Who is reading, and which items they may see: the one place the disclosure package, the statistics and
the spot checks ask.

Every read here is logged before it is answered (``log_read``): a read that cannot be logged is refused
(503), as on the read side. Today a reader is the authenticated reader certificate (or the development
header) and sees every item; the auditor console's reader scope (units, role, sensitive items) replaces
:func:`reader_of` and :func:`may_see` when it lands, and nothing else in this package changes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from edge.central.index import MAX_QUERY_LIMIT, ItemQuery, ItemRecord
from edge.central.registration import RejectCode, Rejection

if TYPE_CHECKING:
    from edge.central.app import CentralParts

__all__ = ["Reader", "items_matching", "log_read", "may_see", "reader_of"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reader:
    """An authenticated reader and what bounds their view."""

    name: str


async def reader_of(request: web.Request, parts: CentralParts) -> Reader:
    """The calling reader; raises :class:`Rejection` (401/403) for anyone else."""
    return Reader(parts.auth.reader(request))


def may_see(parts: CentralParts, reader: Reader, record: ItemRecord) -> bool:
    """Whether ``reader`` may see ``record`` (its unit, role and the item's sensitive marking)."""
    return True


def log_read(
    parts: CentralParts, request: web.Request, reader: Reader, what: str, *, item: str | None = None,
    query: str | None = None,
) -> None:
    """Append one access-log row; raises :class:`Rejection` (503) when it cannot be written."""
    try:
        parts.index.log_access(reader=reader.name, what=what, item=item, query=query, remote=request.remote)
    except parts.index.unit.errors as exc:
        log.error("access log unavailable (%s); refusing %s by reader %s", exc, what, reader.name)
        raise Rejection(RejectCode.ACCESS_LOG_UNAVAILABLE,
                        "this read cannot be logged, so it is refused; try again later") from None


def items_matching(parts: CentralParts, reader: Reader, query: ItemQuery) -> Iterator[ItemRecord]:
    """Every item matching ``query`` that ``reader`` may see, in (acquired_utc, item) order, page by page
    (memory holds one page of summaries, whatever the number of items)."""
    after = query.after
    while True:
        page, cursor = parts.index.query_items(ItemQuery(
            case_number=query.case_number, officer_no=query.officer_no, device_serial=query.device_serial,
            station=query.station, time_from=query.time_from, time_to=query.time_to, limit=MAX_QUERY_LIMIT,
            after=after))
        for summary in page:
            record = parts.index.item(summary["item"])
            if record is not None and may_see(parts, reader, record):
                yield record
        if cursor is None:
            return
        after = cursor
