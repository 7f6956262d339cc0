"""The one shape every verifier reports findings in."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One verification finding.

    ``where`` names the object ("ledger seq 17", "checkpoint seq 40", "item <uuid>", "object <path>");
    ``what`` is a sentence saying exactly what is wrong, with expected and found values where known.
    """

    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"
