"""From an item's retention class to how long its content is locked in the object store.

The police rules behind the classes: records are kept at least six months, evidence for ever (DESIGN.md).
A class names a number of days ([retention] class_days), counted from when the central accepted the item
or took the tag that set the class; a permanent class adds a legal hold, which has no end date. A class
this central does not know is never a reason to keep less: it gets the longest configured lock, and a
warning names it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from edge.central.config import RetentionSection
from edge.central.objects import Retention

__all__ = ["RetentionPolicy", "parse_utc"]

log = logging.getLogger(__name__)


def parse_utc(text: str) -> datetime:
    """An ISO 8601 UTC time as the central writes it (``...Z``); raises ValueError otherwise."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError(f"expected a UTC time with its offset, found {text!r}")
    return value.astimezone(UTC)


@dataclass(frozen=True)
class RetentionPolicy:
    class_days: Mapping[str, int]
    default_class: str
    permanent_classes: frozenset[str]

    @classmethod
    def from_config(cls, section: RetentionSection) -> RetentionPolicy:
        return cls(dict(section.class_days), section.default_class, frozenset(section.permanent_classes))

    @classmethod
    def default(cls) -> RetentionPolicy:
        return cls.from_config(RetentionSection())

    def for_class(self, retention_class: object, start: datetime, *, item: str | None = None) -> Retention:
        """The lock for content of ``retention_class`` (an item's case.retention, None: the default class),
        counted from ``start``."""
        name = self.default_class if retention_class in (None, "") else retention_class
        if name in self.permanent_classes:
            days = self.class_days[self.default_class]
            return Retention(start + timedelta(days=days), legal_hold=True)
        if isinstance(name, str) and name in self.class_days:
            return Retention(start + timedelta(days=self.class_days[name]))
        days = max(self.class_days.values())
        log.warning("item %s: retention class %r is not configured ([retention] class_days); locking it for "
                    "the longest configured class, %d days", item, str(name)[:80], days)
        return Retention(start + timedelta(days=days))

    @staticmethod
    def class_of(manifest: Mapping[str, object]) -> object:
        """The retention class a manifest names (None when it names none)."""
        case = manifest.get("case")
        return case.get("retention") if isinstance(case, Mapping) else None
