"""Review 15: a signed reply that says a command did not take effect must mean nothing changed.

`reupload` runs the uplink's requeue in its own transaction, then records the command (the request id
and the `command` ledger entry) in a second one (edge.mqtt.command_handler, module docstring). When the
second transaction fails on the store (an I/O error, a full disk), the handler answers `failed`
(CommandError.FAILED: "nothing was changed"), signed, and `edge central command` exits 1: but the item was
requeued, with a `requeued` ledger entry naming the request. The operator is told, under the station's
signature, that the re-upload did not happen; a new request is then refused as "not rejected" (exit 1
again), and the request id is not remembered, so nothing ever reports it as executed. Control: the same
store failure during `tag` (one transaction) answers `failed` and changes nothing, as the reply says."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from edge.ingest.tagging import current_case
from edge.mqtt.commands import CommandOp
from edge.uplink.spool import Spool, UploadState
from tests.mqtt.broker import MosquittoBroker, TestPki
from tests.mqtt.test_commands_broker import rig, sealed_item


def _fail_the_commands_record_once(handler: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store fails (disk I/O error) inside the transaction that records the command: the failure the
    handler's `except (CustodyError, sqlite3.Error, OSError)` is there for."""
    remember = handler._remember
    failed: list[bool] = []

    def remember_or_fail(conn: sqlite3.Connection, received: Any, outcome: str) -> None:
        if not failed:
            failed.append(True)
            raise sqlite3.OperationalError("disk I/O error")
        remember(conn, received, outcome)

    monkeypatch.setattr(handler, "_remember", remember_or_fail)


async def test_review15_a_reupload_answered_failed_was_requeued_all_the_same(
    tmp_path: Path, broker: MosquittoBroker, pki: TestPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with rig(tmp_path, broker, pki) as r:
        item = await sealed_item(tmp_path, r.store)
        spool = Spool(r.store)
        spool.enqueue_sealed()
        spool.mark_rejected(item, "register", "too-large", "the central refused it")
        head = r.head()
        _fail_the_commands_record_once(r.handler, monkeypatch)
        _, reply = await r.ask(
            r.signed(r.command(CommandOp.REUPLOAD, {"item": item, "reason": "limit raised"})), "reupload")
        requeued = [e for e in r.entries(head) if e.type == "requeued"
                    and e.data["by"].get("central_command") == reply.request_id]
        changed = spool.states([item])[item] is UploadState.QUEUED or bool(requeued)
        assert reply.took_effect or not changed, (
            f"the station's signed reply says {reply.error}: {reply.detail} (took_effect false: "
            f"`edge central command` exits 1), yet item {item} is {spool.states([item])[item].value} "
            f"and the ledger has {len(requeued)} requeued entry(ies) naming request {reply.request_id}")


async def test_review15_control_a_tag_answered_failed_changed_nothing(
    tmp_path: Path, broker: MosquittoBroker, pki: TestPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with rig(tmp_path, broker, pki) as r:
        item = await sealed_item(tmp_path, r.store)
        before = current_case(r.store, item).get("case_number")
        head = r.head()
        _fail_the_commands_record_once(r.handler, monkeypatch)
        _, reply = await r.ask(r.signed(r.command(
            CommandOp.TAG, {"item": item, "changes": {"case_number": "C-15"}, "by": "clerk"})), "tag")
        assert not reply.took_effect and reply.error == "failed", reply
        assert current_case(r.store, item).get("case_number") == before
        assert [e.type for e in r.entries(head)] == []
