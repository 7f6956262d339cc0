"""MANSCDP queries and their answers (GB/T 28181-2016 9.5, 9.7, Annex N): SN allocation and correlation.

A query goes out as a MESSAGE; the device answers it with 200 OK (no body) and later sends the answer as a
MESSAGE of its own with the same SN (J.13). `PendingQueries` holds one waiter per (device, SN, CmdType):
the answer is matched by the device that sent it (the From of its MESSAGE, the registered device id), the
SN and the CmdType, never by the body's DeviceID alone (which names a channel for RecordInfo). Catalog and
RecordInfo answers may come in several parts (Annex N: same SN, SumNum in every part): they are joined by
`drivers.gb28181.manscdp.MultipartAssembler`; `expire()` hands out an answer whose parts stopped coming,
flagged incomplete, so a device that sends 261 of 299 records gives 261 flagged records rather than a
hang. An answer nobody waits for (late, or a device's own idea) is answered 200, dropped before the
assembler sees it, and counted (`unsolicited`, the platform's `unsolicited_answers` counter).

SNs are drawn at random in 1..999999999 (`SnAllocator`), never one still pending: not predictable from the
SNs a device saw in its own queries, and a restarted platform is unlikely to reuse one a device may still
be answering. Answers are taken only from the device's registered address (the platform's `_message`).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Container
from dataclasses import dataclass

from drivers.gb28181.manscdp import (
    AssembledAnswer,
    CatalogResponse,
    ManscdpError,
    ManscdpMessage,
    MultipartAssembler,
    RecordInfoResponse,
)
from edge.custody.text import printable

log = logging.getLogger(__name__)

MAX_SN = 999_999_999
MAX_PENDING_QUERIES = 1024


class QueryError(Exception):
    """A query that could not be sent or was not answered; the message says which and why."""


class QueryTimeout(QueryError):
    """No answer (not even a first part) within the query timeout."""


class SnAllocator:
    """SNs for queries: random in 1..MAX_SN, never one still awaiting its answer. Random, not counted: an
    answer is matched by (device, SN, CmdType), and a counter would let any device learn from its own
    queries the SN the next query to another device gets (review 22: a forged answer then needs no
    guess)."""

    def allocate(self, pending: Container[int] = ()) -> int:
        while True:
            sn = secrets.randbelow(MAX_SN) + 1
            if sn not in pending:
                return sn


@dataclass(frozen=True)
class QueryKey:
    device_id: str
    sn: int
    cmd_type: str


Answer = ManscdpMessage | AssembledAnswer


class PendingQueries:
    """Waiters for answers, and the assembler of multi-part ones. `clock`: monotonic seconds."""

    def __init__(self, *, part_timeout_s: float, clock: Callable[[], float]) -> None:
        self._waiters: dict[QueryKey, asyncio.Future[Answer]] = {}
        self._assembler = MultipartAssembler(timeout_s=part_timeout_s)
        self._clock = clock
        # Answers to no SN this platform asked (or asked and already had answered): counted, dropped,
        # never given to the assembler, so a device cannot fill it with parts nobody waits for.
        self.unsolicited = 0

    def __len__(self) -> int:
        return len(self._waiters)

    def expect(self, key: QueryKey) -> asyncio.Future[Answer]:
        if len(self._waiters) >= MAX_PENDING_QUERIES:
            raise QueryError(f"{len(self._waiters)} queries await answers already")
        if key in self._waiters:
            raise QueryError(f"SN {key.sn} to {key.device_id} is in use")
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._waiters[key] = future
        return future

    @property
    def pending_sns(self) -> set[int]:
        """The SNs of the queries awaiting answers (a new SN must be none of them)."""
        return {key.sn for key in self._waiters}

    def forget(self, key: QueryKey) -> None:
        self._waiters.pop(key, None)

    def deliver(self, device_id: str, message: ManscdpMessage) -> bool:
        """Take an answer from `device_id`. True when a query was waiting for it (or for its parts)."""
        key = QueryKey(device_id, message.sn, message.cmd_type)
        waiter = self._waiters.get(key)
        if waiter is None:
            self.unsolicited += 1
            log.info("device %s: answer %s SN %d matches no query; dropped", printable(device_id),
                     printable(message.cmd_type[:40]), message.sn)
            return False
        if isinstance(message.payload, CatalogResponse | RecordInfoResponse):
            try:
                answer = self._assembler.add(device_id, message, self._clock())
            except ManscdpError as exc:
                log.warning("device %s: answer %s SN %d not assembled: %s", printable(device_id),
                            message.cmd_type, message.sn, printable(str(exc)))
                return True
            if answer is None:
                return True
            self._resolve(key, answer)
            return True
        self._resolve(key, message)
        return True

    def expire(self) -> int:
        """Hand out multi-part answers whose parts stopped coming; how many."""
        late = self._assembler.expire(self._clock())
        for answer in late:
            self._resolve(QueryKey(answer.source, answer.sn, answer.cmd_type), answer)
        return len(late)

    def _resolve(self, key: QueryKey, answer: Answer) -> None:
        waiter = self._waiters.pop(key, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(answer)
