"""Issue 13 (review 13): no coroutine of the central calls the database or the upload store directly.

On PostgreSQL and S3 any such call may wait for another receiver's lock, a restarting server or the
network, and while it waits the receiver's event loop serves nothing (tus PATCHes, registrations, health
checks). Coroutines hand them to ``run_reads`` / ``run_writes`` (``CentralParts.read`` / ``.write``) or a
worker thread instead. This reads edge/central's source: a call, in the body of an ``async def`` (not in a
function nested in it, which runs wherever it is handed), of a blocking method of the stores' protocols on
a receiver named like one of them, is named here with its place; so is a call, in such a body, of a plain
function or method of the same module (``self.page(...)``, ``_helper(...)``) that makes such a call itself or
through another of the module's plain functions (review 13, rev13c: ``StationLedgerRead.page`` and
``Readiness._check_lock_extensions`` read the index on the loop that way). (A store reached through another
module's function or a callable attribute is not seen here: the off-the-loop tests with a blocked database,
tests/central/test_postgres_*off_the_loop.py and test_rev13c_*, cover the paths that matter.)
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from edge.central import storage
from edge.central.mqtt_ingest_store import MqttIngestStore
from edge.central.registration import UploadSource
from edge.central.tus_contract import TusStore

CENTRAL = Path(__file__).resolve().parents[2] / "edge" / "central"

# What holds a store in the central's code (``self.index``, ``parts.console``, ``self.merkle.store``...).
STORE_NAMES = frozenset({"index", "console", "merkle", "store", "log_store", "uploads", "equipment", "unit",
                         "sessions", "auth", "registrar", "database"})


def _methods(*protocols: type) -> set[str]:
    names: set[str] = set()
    for protocol in protocols:
        names |= {name for name, value in vars(protocol).items()
                  if not name.startswith("_") and inspect.isfunction(value)
                  and not inspect.iscoroutinefunction(value)}
    return names


# The blocking methods: the stores' protocols, the Merkle log's reads and writes, the authenticator's
# look-ups and the registrar's blocking helpers. Coroutine methods (run_reads, run_writes) are not.
BLOCKING = _methods(storage.Index, storage.ConsoleStore, storage.SessionRows, storage.LogStore,
                    storage.EquipmentRows, storage.UnitOfWork, UploadSource, TusStore, MqttIngestStore) | {
    "tree_head", "size", "consistency_proof", "inclusion_proof", "leaf", "append",
    "station", "reader", "station_or_reader", "enrolled_station",
    "reject", "receipt_for", "witnessed_head", "create", "get", "end",
}


def _receiver_names(node: ast.expr) -> list[str]:
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        names.append(node.id)
    return names


def _direct_body(function: ast.AsyncFunctionDef | ast.FunctionDef) -> list[ast.AST]:
    """The nodes of ``function``'s own body, not of the functions and lambdas defined in it."""
    nested = ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
    found: list[ast.AST] = []
    pending: list[ast.AST] = [node for node in function.body if not isinstance(node, nested)]
    while pending:
        node = pending.pop()
        found.append(node)
        pending += [child for child in ast.iter_child_nodes(node) if not isinstance(child, nested)]
    return found


def _is_store_call(node: ast.Call) -> bool:
    return isinstance(node.func, ast.Attribute) and node.func.attr in BLOCKING \
        and bool(STORE_NAMES & set(_receiver_names(node.func.value)))


def _helper_name(node: ast.Call) -> str | None:
    """The name of a call of the module's own function (``name(...)``) or method (``self.name(...)``)."""
    if isinstance(node.func, ast.Name):
        return node.func.id
    if isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name) \
            and node.func.value.id in ("self", "cls"):
        return node.func.attr
    return None


def store_reaching_helpers(tree: ast.Module) -> set[str]:
    """The module's plain functions and methods (by name) that call a store, directly or through others
    of them: called on the loop, they block it as the store call would."""
    functions = [node for node in tree.body if isinstance(node, ast.FunctionDef)]
    for cls in (node for node in tree.body if isinstance(node, ast.ClassDef)):
        functions += [node for node in cls.body if isinstance(node, ast.FunctionDef)]
    calls = {function.name: [node for node in _direct_body(function) if isinstance(node, ast.Call)]
             for function in functions}
    reaching = {name for name, made in calls.items() if any(_is_store_call(call) for call in made)}
    while more := {name for name, made in calls.items()
                   if name not in reaching and any(_helper_name(call) in reaching for call in made)}:
        reaching |= more
    return reaching


def _referenced_helper(node: ast.expr) -> str | None:
    """The name of the module's own function (``name``) or method (``self.name``) referred to, not called."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
            and node.value.id in ("self", "cls"):
        return node.attr
    return None


def store_reaching_callbacks(tree: ast.Module, where: str) -> list[str]:
    """Plain functions or methods that reach a store, handed as an ``on_*`` callback (``on_damaged=``,
    ``on_expired=``...): the component they are handed to calls them on the loop (review 13, rev13c: the
    receive queue's damaged-row report appended and fsync'd the MQTT store's incident on the loop). A
    callback that writes is a coroutine handing its write to a thread."""
    helpers = store_reaching_helpers(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        for keyword in node.keywords:
            if keyword.arg is None or not keyword.arg.startswith("on_"):
                continue
            if (helper := _referenced_helper(keyword.value)) in helpers:
                found.append(f"{where}:{keyword.value.lineno} {keyword.arg}={helper} reaches a store")
    return found


def blocking_calls_in_coroutines(source: str, where: str) -> list[str]:
    tree = ast.parse(source)
    found = store_reaching_callbacks(tree, where)
    helpers = store_reaching_helpers(tree)
    for function in ast.walk(tree):
        if not isinstance(function, ast.AsyncFunctionDef):
            continue
        body = _direct_body(function)
        # An awaited call is a coroutine's (Registrar.ledger_head, not Index.ledger_head).
        awaited = {id(node.value) for node in body if isinstance(node, ast.Await)}
        for node in body:
            if id(node) in awaited or not isinstance(node, ast.Call):
                continue
            if _is_store_call(node):
                assert isinstance(node.func, ast.Attribute)
                receiver = ".".join(reversed(_receiver_names(node.func.value)))
                found.append(f"{where}:{node.lineno} in {function.name}: {receiver}.{node.func.attr}(...)")
            elif (helper := _helper_name(node)) in helpers:
                found.append(f"{where}:{node.lineno} in {function.name}: {helper}(...) reaches a store")
    return found


# Calls that stay where they are, each with its reason.
ALLOWED = {
    # Shutting the application down: waits for the writer thread's last transaction on purpose.
    ("app.py", "database.close"),
    # The demo's start: `edge central init` and the station's enrollment, before the central serves.
    ("embedded.py", "initialise"),
}


def test_no_coroutine_of_the_central_calls_a_store_directly() -> None:
    found = []
    for path in sorted(CENTRAL.rglob("*.py")):
        where = str(path.relative_to(CENTRAL))
        found += [call for call in blocking_calls_in_coroutines(path.read_text(encoding="utf-8"), where)
                  if not any(call.startswith(f"{file}:") and f" {name}(" in call for file, name in ALLOWED)]
    assert found == [], "blocking store calls on the event loop:\n" + "\n".join(found)


def test_control_the_guard_names_a_direct_call_and_leaves_a_handed_one() -> None:
    source = (
        "async def handler(self, item):\n"
        "    record = self.parts.index.item(item)\n"
        "    other = await self.parts.read(self.parts.index.item, item)\n"
        "    head = await self.parts.registrar.ledger_head(item)\n"
        "    def nested():\n"
        "        return self.parts.index.item(item)\n"
        "    return await self.parts.write(nested)\n"
    )
    assert blocking_calls_in_coroutines(source, "x.py") == ["x.py:2 in handler: self.parts.index.item(...)"]


def test_control_the_guard_names_a_store_reaching_callback_and_leaves_a_coroutine_one() -> None:
    # As the MQTT receiver handed the receive queue its damaged-row report before (review 13 rev13c): a
    # plain method writing the store's incident file, which the queue's coroutine called on the loop.
    source = (
        "class Receiver:\n"
        "    async def run(self):\n"
        "        runner = QueueRunner(queue, on_damaged=self._damaged, on_expired=self._expired)\n"
        "        later = QueueRunner(queue, on_damaged=self._damaged_off_the_loop)\n"
        "    def _damaged(self, station, detail):\n"
        "        self.store.record_incident(station, 'receive_queue_damaged', detail)\n"
        "    def _expired(self, message):\n"
        "        self.counts.expired += 1\n"
        "    async def _damaged_off_the_loop(self, station, detail):\n"
        "        await asyncio.to_thread(self.store.record_incident, station, 'damaged', detail)\n"
    )
    assert blocking_calls_in_coroutines(source, "x.py") == ["x.py:3 on_damaged=_damaged reaches a store"]


def test_control_the_guard_names_a_helper_that_reaches_a_store_and_leaves_a_handed_one() -> None:
    source = (
        "class Handler:\n"
        "    async def get(self, station):\n"
        "        answer = self.page(station)\n"
        "        other = await self.parts.read(self.page, station)\n"
        "        self.render(answer)\n"
        "        return _wrapped(self, station)\n"
        "    def page(self, station):\n"
        "        return self.parts.index.ledger_head(station)\n"
        "    def render(self, answer):\n"
        "        return str(answer)\n"
        "def _wrapped(handler, station):\n"
        "    return handler.page(station) if station else _deeper(handler)\n"
        "def _deeper(handler):\n"
        "    return handler.parts.console.account('a')\n"
    )
    assert store_reaching_helpers(ast.parse(source)) == {"page", "_wrapped", "_deeper"}
    assert blocking_calls_in_coroutines(source, "x.py") == [
        "x.py:6 in get: _wrapped(...) reaches a store",
        "x.py:3 in get: page(...) reaches a store",
    ]
