"""Configuration reload on SIGHUP: what may change while the agent runs, and the reload itself.

``systemctl reload edge-station`` runs the unit's ``ExecReload=/bin/kill -HUP $MAINPID`` (Debian 12
ships systemd 252; ``Type=notify-reload`` needs 253). The agent then tells systemd ``RELOADING=1`` (with
``MONOTONIC_USEC``), reads and validates the file again (secret references resolved, as at start), and
ends with ``READY=1`` whatever the outcome, so ``systemctl reload`` returns and the unit stays active.

**Live** (:data:`LIVE_SECTIONS`): ``[recorders]`` (allow-list, passwords), ``[officers]``,
``[case_defaults]``, ``[wipe]`` and ``[logging]``, and the policy settings of ``[uplink]``
(:data:`UPLINK_LIVE_FIELDS`: upload windows, concurrency, backoff, breaker, Retry-After bound,
retention, ledger push and tree-head timing). A docking that has started keeps the configuration it
started with to its end (its copy, verification and wipe decision are never changed half-way); the
next docking uses the new one. The uplink applies its new policy from its next decision (uploads in
flight go on); the log level changes at once.

**Fixed** (everything else: ``[station]`` with the store and identity, ``[usb]``, ``[dock]``,
``[bays]``, ``[time_sync]``, ``[offload]``, and the connection settings of ``[uplink]``: central URL,
identity, pinned key, transport, chunk size, bandwidth, request timeout): they shape what runs (the
store lock, the watchers, the bay map, the upload connections), so a change needs a restart. A new
file that changes any of them is **refused as a whole**: nothing of it applies, the old configuration
stays in force, one ERROR line names the sections, and a ``config_refused`` ledger entry records it.
An invalid file (syntax, a value, a secret that cannot be resolved) is refused the same way. The agent
keeps running in every case. A reload that applies records ``config_reloaded`` with the sections that
changed and the SHA-256 of the file read; neither entry ever holds a value from the file.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edge.config.base import ConfigError, check_secrets_resolve, read_config_text
from edge.config.station import StationConfig, load_config
from edge.custody.ledger import EntryType

__all__ = ["LIVE_SECTIONS", "UPLINK_LIVE_FIELDS", "ConfigReloader", "ReloadDecision", "compare_configs"]

log = logging.getLogger(__name__)

LIVE_SECTIONS = frozenset({"recorders", "officers", "case_defaults", "wipe", "logging"})
# Settings of [uplink] that the running upload service takes over (UplinkService.reconfigure).
UPLINK_LIVE_FIELDS = frozenset({
    "windows", "concurrency", "backoff_base_s", "backoff_max_s", "breaker_failures", "breaker_open_s",
    "retry_after_max_s", "retention_days", "ledger_push_delay_s", "ledger_push_shutdown_s",
    "tree_head_interval_s", "officers_interval_s", "fleet_report_interval_s",
})


@dataclass(frozen=True)
class ReloadDecision:
    """What differs between two configurations: ``changed`` live sections, ``fixed`` ones (which refuse
    the reload)."""

    changed: tuple[str, ...]
    fixed: tuple[str, ...]


def compare_configs(old: StationConfig, new: StationConfig) -> ReloadDecision:
    """Sections that differ; ``[uplink]`` is live when only its policy settings differ, else each of its
    other settings that differs is named as fixed (``uplink.central_url``)."""
    changed: list[str] = []
    fixed: list[str] = []
    for name in type(old).model_fields:
        before, after = getattr(old, name), getattr(new, name)
        if before == after:
            continue
        if name == "uplink":
            connection = [f"uplink.{field}" for field in type(before).model_fields
                          if field not in UPLINK_LIVE_FIELDS
                          and getattr(before, field) != getattr(after, field)]
            if connection:
                fixed.extend(connection)
            else:
                changed.append(name)
        elif name in LIVE_SECTIONS:
            changed.append(name)
        else:
            fixed.append(name)
    return ReloadDecision(tuple(changed), tuple(fixed))


class ReloadNotifier(Protocol):
    def reloading(self) -> bool: ...

    def ready(self, status: str | None = None) -> bool: ...


def _read_and_validate(path: Path) -> tuple[StationConfig, str]:
    """The configuration at ``path`` (validated, secrets resolved once and forgotten) and the SHA-256 of
    the text read; raises :class:`ConfigError`."""
    text = read_config_text(path)
    config = load_config(path)
    check_secrets_resolve(config, str(path))
    return config, hashlib.sha256(text.encode("utf-8")).hexdigest()


class ConfigReloader:
    """Reloads the configuration file when asked (SIGHUP); one reload at a time, a request during one
    runs another after it (the file may have changed again)."""

    def __init__(
        self,
        path: Path,
        current: StationConfig,
        *,
        apply: Callable[[StationConfig], None],
        record: Callable[[str, dict[str, Any]], object],
        notifier: ReloadNotifier | None = None,
    ) -> None:
        self.path = path
        self.current = current
        self._apply = apply
        self._record = record
        self._notifier = notifier
        self._wanted = asyncio.Event()
        self.reloads = 0  # finished reloads, applied or refused (tests await it)
        self.finished = asyncio.Condition()

    def __repr__(self) -> str:
        return f"ConfigReloader(path={str(self.path)!r}, reloads={self.reloads})"

    def request(self) -> None:
        """Ask for a reload (the SIGHUP handler; never blocks)."""
        self._wanted.set()

    async def run(self) -> None:
        """Serve reload requests until cancelled."""
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            await self.reload()

    async def reload(self) -> bool:
        """Read, check and apply the file; True when it was applied."""
        if self._notifier is not None:
            self._notifier.reloading()
        try:
            applied = await self._reload()
        finally:
            if self._notifier is not None:
                self._notifier.ready()
            async with self.finished:
                self.reloads += 1
                self.finished.notify_all()
        return applied

    async def _reload(self) -> bool:
        try:
            new, digest = await asyncio.to_thread(_read_and_validate, self.path)
        except ConfigError as exc:
            return self._refuse("the new configuration is invalid", str(exc), [])
        decision = compare_configs(self.current, new)
        if decision.fixed:
            return self._refuse(
                "the new configuration changes settings that need a restart",
                f"changed: [{'], ['.join(decision.fixed)}]; these apply only at start "
                f"(systemctl restart edge-station)", list(decision.fixed),
            )
        self._apply(new)
        self.current = new
        self._record(EntryType.CONFIG_RELOADED, {"sections": list(decision.changed), "config_sha256": digest})
        if decision.changed:
            log.info("configuration reloaded from %s: [%s] now in force for the next dockings", self.path,
                     "], [".join(decision.changed))
        else:
            log.info("configuration reloaded from %s: nothing changed", self.path)
        return True

    def _refuse(self, what: str, detail: str, sections: list[str]) -> bool:
        log.error("configuration reload REFUSED, the running configuration stays in force: %s: %s", what,
                  detail)
        try:
            self._record(EntryType.CONFIG_REFUSED, {"reason": f"{what}: {detail}", "sections": sections})
        except Exception:
            log.exception("could not record the refused reload in the ledger")
        return False
