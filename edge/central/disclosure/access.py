"""Who is reading, and which items they may see: the one place the disclosure package, the statistics and
the spot checks ask, on the auditor console's reader scope (:mod:`edge.central.console.scope`).

A reader is a console session or a reader certificate with a grant (role and units, ``edge central
grant``); listings filter in the database by the scope (:meth:`edge.central.storage.Index.query_items`),
so an item of another unit, or a sensitive item that does not name the reader, never reaches a package, a
statistic or a sample. Every read is logged before it is answered (:func:`log_read`): a read that cannot
be logged is refused (503).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING

from aiohttp import web

from edge.central.console.scope import log_read as _log_read
from edge.central.console.scope import reader_scope
from edge.central.index import MAX_QUERY_LIMIT, ItemQuery, ItemRecord, ReaderScope

if TYPE_CHECKING:
    from edge.central.app import CentralParts

__all__ = ["Reader", "items_matching", "log_read", "reader_of"]

# The reader and what bounds their view.
Reader = ReaderScope


async def reader_of(request: web.Request, parts: CentralParts) -> Reader:
    """The calling reader's scope; raises :class:`Rejection` (401/403) for anyone else."""
    return await reader_scope(request)


async def log_read(
    parts: CentralParts, request: web.Request, reader: Reader, what: str, *, item: str | None = None,
    query: str | None = None,
) -> None:
    """Append one access-log row (on the database's writer, off the event loop); raises
    :class:`Rejection` (503) when it cannot be written."""
    await parts.write(_log_read, request, reader, what, item=item, query=query)


def items_matching(parts: CentralParts, reader: Reader, query: ItemQuery) -> Iterator[ItemRecord]:
    """Every item matching ``query`` that ``reader`` may see, in (acquired_utc, item) order, page by page
    (memory holds one page of summaries, whatever the number of items)."""
    after = query.after
    while True:
        page, cursor = parts.index.query_items(replace(query, limit=MAX_QUERY_LIMIT, after=after), reader)
        for summary in page:
            record = parts.index.item(summary["item"])
            if record is not None:
                yield record
        if cursor is None:
            return
        after = cursor
