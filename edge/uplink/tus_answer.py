"""What the central answered to one tus request, whichever connection carried it.

The tus client sends chunk bodies over a blocking socket in a worker thread
(:mod:`edge.uplink.blocking_body`) and everything else over aiohttp; both hand its checks
(:mod:`edge.uplink.tus_client`: status, ``Upload-Offset``, ``Tus-Resumable``, ``Location``, the error
document) the same :class:`TusAnswer`: the status, the headers as received (repeated ones kept, so a
duplicate ``Upload-Offset`` stays visible), and at most :data:`MAX_ANSWER_BODY_BYTES` of the body
(room for a signed refusal beside its error and detail; a longer body is cut there, never read whole).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Protocol

import aiohttp

__all__ = ["MAX_ANSWER_BODY_BYTES", "AnswerHeaders", "HeaderList", "TusAnswer", "read_aiohttp_answer"]

MAX_ANSWER_BODY_BYTES: Final = 16 * 1024


class AnswerHeaders(Protocol):
    """The two questions the checks ask of headers (aiohttp's ``CIMultiDictProxy`` answers them too)."""

    def get(self, name: str) -> str | None: ...

    def getall(self, name: str, default: list[str]) -> list[str]: ...

    def __contains__(self, name: object) -> bool: ...


class HeaderList:
    """Headers as (name, value) pairs in the order received; names compared without case."""

    __slots__ = ("_pairs",)

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        self._pairs = tuple((name.lower(), value) for name, value in pairs)

    def get(self, name: str) -> str | None:
        wanted = name.lower()
        for key, value in self._pairs:
            if key == wanted:
                return value
        return None

    def getall(self, name: str, default: list[str]) -> list[str]:
        wanted = name.lower()
        found = [value for key, value in self._pairs if key == wanted]
        return found or default

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __repr__(self) -> str:
        # Values may be anything a hostile server sent: only the names.
        return f"HeaderList({[key for key, _ in self._pairs]!r})"


@dataclass(frozen=True, slots=True)
class TusAnswer:
    status: int
    headers: AnswerHeaders
    body: bytes
    """At most :data:`MAX_ANSWER_BODY_BYTES`: what the checks read of an error document."""


async def read_aiohttp_answer(resp: aiohttp.ClientResponse) -> TusAnswer:
    """The answer of an aiohttp request, with a bounded prefix of its body. A body that fails while it is
    read is cut where it failed: the status is the message, a body we cannot read adds nothing."""
    raw = b""
    try:
        while len(raw) < MAX_ANSWER_BODY_BYTES:
            part = await resp.content.read(MAX_ANSWER_BODY_BYTES - len(raw))
            if not part:
                break
            raw += part
    except (aiohttp.ClientError, OSError, TimeoutError):
        pass
    return TusAnswer(resp.status, resp.headers, raw)
