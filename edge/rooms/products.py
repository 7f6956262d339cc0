"""What a stop makes after the session manifest: one joined MP4 per source (:mod:`edge.rooms.joined`) and
the session statement (:mod:`edge.rooms.statement`), each sealed as an item of the session through the
ingest pipeline and so queued for upload like every item.

They are made after ``session_stopped`` (which says they are to follow), so that a stop is on the
record at once however long the joins take. The statement references the manifest (item and hash) and
each joined file (item and hash); a ``room_products`` entry then names all of them
(:meth:`Products.summary`), so the ledger alone says which items are a session's products (`edge room
export` reads them from there). An agent stopped during them makes them at its next start, from the
sealed manifest the stop named. Work files live under
``<store>/rooms/products/<session>/`` until sealed, and go once they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.custody.canonical import sha256_hex
from edge.custody.ledger import station_time_now
from edge.durable.files import make_dirs_durable, write_atomic
from edge.ingest.pipeline import IngestPipeline
from edge.rooms.joined import PRODUCTS_DIR, JoinResult, join_source
from edge.rooms.sealing import seal_session_file
from edge.rooms.session import RoomSession
from edge.rooms.state import ROOMS_DIR
from edge.rooms.statement import STATEMENT_ROLE, session_statement

log = logging.getLogger(__name__)

STATEMENT_NAME = "session-statement.txt"


def products_dir(store_root: Path, session: str) -> Path:
    return store_root / ROOMS_DIR / PRODUCTS_DIR / session


@dataclass
class Products:
    joined: list[JoinResult] = field(default_factory=list)
    statement_item: str | None = None
    statement_sha256: str | None = None

    def summary(self) -> dict[str, Any]:
        """What ``room_products`` carries of them."""
        return {
            "joined": [{"source": j.source, "item": j.item, "sha256": j.sha256,
                        **({"problems": len(j.problems)} if j.problems else {}),
                        **({"unsealed": True} if j.unsealed else {})} for j in self.joined],
            "statement_item": self.statement_item,
            "statement_sha256": self.statement_sha256,
        }


async def make_products(
    pipeline: IngestPipeline,
    session: RoomSession,
    manifest: Mapping[str, Any],
    *,
    manifest_item: str | None,
    manifest_sha256: str,
    ffmpeg: str,
    ffprobe: str,
    station_id: str,
    clock_synchronised: bool,
) -> Products:
    """Join each source of the stopped `session`, then write and seal its statement."""
    work_dir = products_dir(pipeline.store.layout.root, session.session)
    products = Products()
    for source in manifest.get("sources", []):
        products.joined.append(await join_source(
            pipeline, session, manifest, source, work_dir=work_dir, ffmpeg=ffmpeg, ffprobe=ffprobe,
            station_id=station_id, clock_synchronised=clock_synchronised))
    text = session_statement(manifest, [j.to_json() for j in products.joined], manifest_item=manifest_item,
                             manifest_sha256=manifest_sha256, made_utc=station_time_now())
    data = text.encode("utf-8")
    await asyncio.to_thread(make_dirs_durable, work_dir)
    path = work_dir / STATEMENT_NAME
    await asyncio.to_thread(write_atomic, path, data)
    try:
        item = await seal_session_file(
            pipeline, path, session=session, role=STATEMENT_ROLE, station_id=station_id,
            clock_synchronised=clock_synchronised,
            facts={"manifest_item": manifest_item, "joined": [j.item for j in products.joined if j.item]})
    finally:
        path.unlink(missing_ok=True)
    products.statement_item = item
    products.statement_sha256 = sha256_hex(data)
    if item is None:
        log.error("room session %s: its statement could not be sealed", session.session)
    with contextlib.suppress(OSError):  # not empty: something an interrupted step left, for a look
        work_dir.rmdir()
    return products
