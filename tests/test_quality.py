"""House rules that can be checked mechanically: lint, types, and one-way layers."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_drivers_and_simulators_never_import_edge() -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for folder in ("drivers", "simulators")
        for path in (ROOT / folder).rglob("*.py")
        for name in _imports(path)
        if name == "edge" or name.startswith("edge.")
    ]
    assert offenders == []


def test_drivers_never_import_simulators() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "drivers").rglob("*.py")
        if any(n == "simulators" or n.startswith("simulators.") for n in _imports(path))
    ]
    assert offenders == []


def test_ruff_is_clean() -> None:
    done = subprocess.run(
        [str(BIN / "ruff"), "check", "edge", "drivers", "simulators", "tests"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-3000:]


def test_mypy_strict_is_clean() -> None:
    done = subprocess.run([str(BIN / "mypy")], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]


# Packages of the station side: none may reach into the central (the station talks to it over the
# network only; certificates and bundles live in edge.pki, shared by both).
STATION_PACKAGES = (
    "config", "custody", "durable", "ingest", "mqtt", "observe", "pki", "runtime", "sources", "uplink",
    "verify",
)
# Foundation packages that everything builds on and that build on nothing above them.
FOUNDATION = {"custody": {"custody", "durable"}, "durable": {"durable"}}
# demo_room.py: `edge demo --room`, a composition root like demo.py (the station, a simulator, a central).
COMPOSITION_ROOTS = {"__init__.py", "cli.py", "station.py", "demo.py", "demo_room.py", "demo_shift.py"}


def _edge_imports(path: Path) -> set[str]:
    return {n for n in _imports(path) if n.startswith("edge.")}


def test_station_packages_never_import_the_central() -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for package in STATION_PACKAGES
        for path in (ROOT / "edge" / package).rglob("*.py")
        for name in _edge_imports(path)
        if name.startswith("edge.central")
    ]
    assert offenders == []


def test_foundation_packages_depend_only_on_foundations() -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for package, allowed in FOUNDATION.items()
        for path in (ROOT / "edge" / package).rglob("*.py")
        for name in _edge_imports(path)
        if name.split(".")[1] not in allowed
    ]
    assert offenders == []


# The status board (edge.observe) sits above the layers that feed it: they reach it only through the narrow
# publish interface of edge.observe.sink, never the board, its metrics or the local API server.
OBSERVE_SINK = "edge.observe.sink"
OBSERVE_FEEDERS = (
    "config", "custody", "durable", "ingest", "mqtt", "pki", "runtime", "sources", "uplink", "verify"
)


def _observe_offenders(paths: list[Path]) -> list[str]:
    return [
        f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name} imports {name}"
        for path in paths
        for name in sorted(_edge_imports(path))
        if name.startswith("edge.observe") and name != OBSERVE_SINK
    ]


def test_lower_layers_reach_the_status_board_only_through_its_sink(tmp_path: Path) -> None:
    paths = [p for package in OBSERVE_FEEDERS for p in sorted((ROOT / "edge" / package).rglob("*.py"))]
    assert any(OBSERVE_SINK in _edge_imports(p) for p in paths), "the layers publish through the sink"
    assert _observe_offenders(paths) == []
    sink_imports = _edge_imports(ROOT / "edge" / "observe" / "sink.py")
    assert sink_imports == set(), "the sink imports nothing of the project"
    # Control: an offload that reached for the API server or the board is found.
    (tmp_path / "offload.py").write_text("from edge.observe.api import LocalApi\nimport edge.observe.board\n")
    assert _observe_offenders([tmp_path / "offload.py"]) == [
        "offload.py imports edge.observe.api",
        "offload.py imports edge.observe.board",
    ]


# The uplink's core (spool, retry, breaker, receipts, witness, refusals, purge) decides on transport outcomes
# and speaks no wire itself: only the transport modules speak HTTP/tus, only the registry names them, and
# the transports reach into the core for the seam and the shared policy helpers only.
UPLINK = ROOT / "edge" / "uplink"
UPLINK_WIRE_MODULES = {
    "edge.uplink.tus_client", "edge.uplink.central_api", "edge.uplink.tus_transport",
    "edge.uplink.central_calls", "edge.uplink.mqtt_transport", "edge.uplink.failover",
    "edge.uplink.blocking_body", "edge.uplink.tus_answer", "edge.uplink.chunk_buffers",
}
UPLINK_REGISTRY = "edge.uplink.transports"
UPLINK_SEAM_FOR_TRANSPORTS = {"edge.uplink.transport", "edge.uplink.policy", *UPLINK_WIRE_MODULES}
WIRE_LIBRARIES = {"aiohttp", "yarl", "paho", "aiomqtt"}


def _uplink_layer_offenders(paths: list[Path]) -> list[str]:
    offenders = []
    for path in paths:
        module = f"edge.uplink.{path.stem}"
        imports = _imports(path)
        if module in UPLINK_WIRE_MODULES:
            offenders += [f"{path.name} (a transport) imports {name}" for name in sorted(imports)
                          if name.startswith("edge.uplink.") and name not in UPLINK_SEAM_FOR_TRANSPORTS]
        elif module != UPLINK_REGISTRY:
            offenders += [f"{path.name} (the core) imports {name}" for name in sorted(imports)
                          if name in UPLINK_WIRE_MODULES or name.split(".")[0] in WIRE_LIBRARIES]
    return offenders


def test_the_uplink_core_never_imports_a_transport(tmp_path: Path) -> None:
    paths = sorted(UPLINK.glob("*.py"))
    assert {p.stem for p in paths} >= {"service", "spool", "policy", "witness", "requeue", "transport"}
    assert _uplink_layer_offenders(paths) == []
    # Control: the rule finds a core module that reaches for the tus client, and a transport that reaches
    # into the core beyond the seam.
    (tmp_path / "service.py").write_text("from edge.uplink.tus_client import TusClient\nimport aiohttp\n")
    (tmp_path / "tus_transport.py").write_text("from edge.uplink.spool import Spool\n")
    assert _uplink_layer_offenders(sorted(tmp_path.glob("*.py"))) == [
        "service.py (the core) imports aiohttp",
        "service.py (the core) imports edge.uplink.tus_client",
        "tus_transport.py (a transport) imports edge.uplink.spool",
    ]


# paho's network loop meets asyncio in one place: edge/mqtt/client.py runs paho's loop in its own thread
# and hands every callback to the event loop. Any other module that drove paho itself would bring a second
# thread model (and a second writer on the TLS socket).
PAHO_OWNER = "edge/mqtt/client.py"


def _paho_offenders(paths: list[Path]) -> list[str]:
    offenders = []
    for path in paths:
        where = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name
        offenders += [f"{where} imports {name}" for name in sorted(_imports(path))
                      if name.split(".")[0] == "paho" and where != PAHO_OWNER]
    return offenders


def test_only_the_mqtt_client_drives_paho(tmp_path: Path) -> None:
    paths = sorted((ROOT / "edge").rglob("*.py"))
    assert any(str(p.relative_to(ROOT)) == PAHO_OWNER for p in paths)
    assert _paho_offenders(paths) == []
    # Control: a telemetry module that made its own paho client is found.
    (tmp_path / "telemetry.py").write_text("import paho.mqtt.client as mqtt\n")
    assert _paho_offenders([tmp_path / "telemetry.py"]) == ["telemetry.py imports paho.mqtt.client"]


def _verify_wire_offenders(paths: list[Path]) -> list[str]:
    return [f"{path.name} imports {name}" for path in paths for name in sorted(_imports(path))
            if name in UPLINK_WIRE_MODULES or name.split(".")[0] in WIRE_LIBRARIES]


def test_edge_verify_asks_the_central_through_the_transport_seam(tmp_path: Path) -> None:
    """`edge verify` reaches the central over the station's configured transport (an MQTT station has
    no HTTPS to its central), so edge/verify names no wire module and no wire library."""
    assert _verify_wire_offenders(sorted((ROOT / "edge" / "verify").glob("*.py"))) == []
    (tmp_path / "witness.py").write_text("def f():\n    from edge.uplink.central_api import CentralApi\n")
    assert _verify_wire_offenders([tmp_path / "witness.py"]) == ["witness.py imports edge.uplink.central_api"]


def test_edge_root_holds_composition_roots_only() -> None:
    modules = {p.name for p in (ROOT / "edge").glob("*.py")}
    assert modules - COMPOSITION_ROOTS == set(), "move foundation modules into a package named for its role"


# The central reaches its database through the protocols of edge/central/storage.py. SQL, sqlite3 and the
# connection stay in the SQLite backend (edge/central/sqlite/), so that a PostgreSQL backend is a sibling
# package and nothing else changes. Exceptions, each with the reason:
CENTRAL_SQL_READERS = {
    "edge/central/verify.py": "reads the index (index.db or PostgreSQL) read-only below the protocols to "
    "see tampered rows as stored",
    "edge/central/receive_queue.py": "not the central's database: each MQTT receiving process's own local "
    "queue file (on that process's disk by design, whatever backend the index has)",
    "edge/central/migration/run.py": "edge central migrate copies one backend into the other, row by row, "
    "below the protocols by its nature",
    "edge/central/migration/tables.py": "edge central migrate: the table lists and the row copy",
    "edge/central/migration/objects.py": "edge central migrate: reads the source index's object rows",
}
# Modules that choose the backend (composition and store layout) may import it; no service module may.
CENTRAL_BACKEND_CHOOSERS = {
    "edge/central/app.py": "build_app: the default backend of the running central",
    "edge/central/service.py": "start_central passes the backend choice to build_app",
    "edge/central/cli.py": "edge central init/enroll/revoke open the store's index",
    "edge/central/mqtt_command.py": "edge central command reads the station's enrolled keys from the index",
    "edge/central/embedded.py": "the demo's in-process central enrols its station",
    "edge/central/identity.py": "refuses a new signing key when the store's log holds signed heads",
    "edge/central/verify.py": "edge verify CENTRAL checks the store's index below the protocols",
    "edge/central/backends.py": "opens the backend [central] index names, for all of the above",
    "edge/central/migration/run.py": "edge central migrate opens the source and the target backends",
}


def _central_storage_offenders(central: Path) -> list[str]:
    """SQL, or an import of a backend, outside the backends of ``central`` (a folder laid out as
    edge/central), each named by its path as from the repository root."""
    # The backends, and the SQL they share (edge/central/sql: used by them only, checked below).
    backends = (central / "sqlite", central / "postgres", central / "sql")
    offenders: list[str] = []
    for path in sorted(central.rglob("*.py")):
        if any(path.is_relative_to(backend) for backend in backends):
            continue
        where = str(path.relative_to(central.parent.parent))
        names = _imports(path)
        if where not in CENTRAL_SQL_READERS:
            offenders += [f"{where} imports {name}" for name in sorted(names)
                          if name == "sqlite3" or name == "edge.durable.sqlite"]
            if re.search(r"\.conn\b|\.execute\(", path.read_text(encoding="utf-8")):
                offenders.append(f"{where} runs SQL or touches a connection")
        if where not in CENTRAL_BACKEND_CHOOSERS:
            offenders += [f"{where} imports {name}" for name in sorted(names)
                          if name.startswith(("edge.central.sqlite", "edge.central.postgres",
                                              "edge.central.sql."))]
    return offenders


def test_the_central_reaches_its_database_only_through_the_storage_protocols(tmp_path: Path) -> None:
    assert _central_storage_offenders(ROOT / "edge" / "central") == []
    # Control: a service module that takes a record from a backend, or runs SQL, is named; the same
    # code inside a backend package is not.
    central = tmp_path / "edge" / "central"
    (central / "postgres").mkdir(parents=True)
    (central / "postgres" / "store.py").write_text("def f(conn):\n    conn.execute('SELECT 1')\n")
    (central / "service_witness.py").write_text(
        "from edge.central.sql.lock_extensions import utc_text\n\n\n"
        "def f(db):\n    db.conn.execute('SELECT 1')\n")
    assert _central_storage_offenders(central) == [
        "edge/central/service_witness.py runs SQL or touches a connection",
        "edge/central/service_witness.py imports edge.central.sql.lock_extensions",
    ]


# -- dependencies: declare what you import, drop what you don't, pin what was tested ----------------------

# Which declared requirements may serve the imports of each source folder: the service and the drivers
# run on the runtime dependencies alone; simulators add the `sim` extra; tests add `test` as well.
IMPORT_SCOPES = {
    "edge": ("dependencies",),
    "drivers": ("dependencies",),
    "simulators": ("dependencies", "sim"),
    "tests": ("dependencies", "sim", "test"),
}
# Declared distributions that are used without being imported, each with the reason. Nothing else may be
# declared without an import: a dependency kept "for later" is added by the change that imports it.
USED_WITHOUT_IMPORT = {
    "pytest-asyncio": "pytest plugin: runs the async tests (asyncio_mode = auto)",
    "pytest-timeout": "pytest plugin: the per-test timeout in [tool.pytest.ini_options]",
    "pytest-xdist": "pytest plugin: `make test` runs the tests in parallel workers (-n)",
    "mypy": "run as a program by test_mypy_strict_is_clean and `make lint`",
    "ruff": "run as a program by test_ruff_is_clean and `make lint`",
    "pyseccomp": "imported by the probe script that test_clock_under_unit_filter.py runs as a child process",
}
CONSTRAINTS = ROOT / "constraints.txt"
# Installed in every virtual environment to install the rest; pinned so that the install itself is
# reproducible, but needed by no import.
INSTALLER_DISTRIBUTIONS = {"pip", "setuptools"}


def _dist_name(name: str) -> str:
    """PEP 503 normal form, so that `pydantic_core`, `pydantic-core` and `Pydantic.Core` compare equal."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def _declared(*, expand_extras: bool = True) -> dict[str, set[str]]:
    """Distribution names declared per scope (`dependencies` and each extra); a self-reference such as
    `evidence-edge[sim]` brings in the named extras' requirements unless `expand_extras` is false."""
    project = _pyproject()["project"]
    raw = {"dependencies": project["dependencies"], **project["optional-dependencies"]}
    own = _dist_name(project["name"])

    def names(scope: str, seen: frozenset[str] = frozenset()) -> set[str]:
        found: set[str] = set()
        for text in raw[scope]:
            requirement = Requirement(text)
            if _dist_name(requirement.name) == own:
                for extra in (requirement.extras - seen) if expand_extras else ():
                    found |= names(extra, seen | {scope})
            else:
                found.add(_dist_name(requirement.name))
        return found

    return {scope: names(scope) for scope in raw}


def _third_party_imports(folder: str) -> dict[str, set[str]]:
    """Top-level modules imported from `folder` that are neither the standard library nor the project's own
    (the packages, and modules that sit beside the tests such as `dock_helpers`), with the files."""
    local = set(IMPORT_SCOPES) | {p.stem for folder in IMPORT_SCOPES for p in (ROOT / folder).rglob("*.py")}
    found: dict[str, set[str]] = {}
    for path in (ROOT / folder).rglob("*.py"):
        for name in _imports(path):
            top = name.split(".")[0]
            if top not in sys.stdlib_module_names and top not in local:
                found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_third_party_import_is_declared() -> None:
    declared = _declared()
    providers = importlib.metadata.packages_distributions()
    problems = []
    for folder, scopes in IMPORT_SCOPES.items():
        allowed = set().union(*(declared[scope] for scope in scopes))
        for module, files in sorted(_third_party_imports(folder).items()):
            dists = {_dist_name(d) for d in providers.get(module, [])}
            where = ", ".join(sorted(files)[:3])
            if not dists:
                problems.append(f"{module} (imported by {where}) is not installed by any declared dependency")
            elif not dists & allowed:
                problems.append(
                    f"{module} (imported by {where}) comes from {'/'.join(sorted(dists))}, "
                    f"which is not declared in {' or '.join(scopes)} of pyproject.toml"
                )
    assert not problems, "\n".join(problems)


# The folder whose imports justify each scope: a runtime dependency imported only by tests belongs in `test`.
SCOPE_USERS = {"dependencies": ("edge", "drivers"), "sim": ("simulators",), "test": ("tests",)}


def test_every_declared_dependency_is_imported() -> None:
    declared = _declared(expand_extras=False)
    assert set(declared) == set(SCOPE_USERS), "a new extra needs its entry in SCOPE_USERS and IMPORT_SCOPES"
    providers = importlib.metadata.packages_distributions()
    imported_dists = {
        folder: {
            _dist_name(dist)
            for module in _third_party_imports(folder)
            for dist in providers.get(module, [])
        }
        for folder in IMPORT_SCOPES
    }
    problems = []
    for scope, users in SCOPE_USERS.items():
        used = set().union(*(imported_dists[folder] for folder in users))
        for dist in sorted(declared[scope] - used - set(USED_WITHOUT_IMPORT)):
            problems.append(f"{dist} is declared in {scope} but imported nowhere in {', '.join(users)}")
    assert not problems, "\n".join(problems)
    # The allow-list holds only what is still declared (a dropped tool leaves no stale excuse behind).
    assert set(USED_WITHOUT_IMPORT) <= set().union(*declared.values())


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for number, line in enumerate(CONSTRAINTS.read_text(encoding="utf-8").splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        name, sep, version = text.partition("==")
        assert sep and name.strip() and version.strip(), f"constraints.txt:{number} is not NAME==VERSION"
        pins[_dist_name(name.strip())] = version.strip()
    return pins


def _needed_distributions() -> set[str]:
    """Every distribution that `pip install -e '.[test,sim]'` needs, following the installed metadata
    from the requirements declared in pyproject.toml (markers evaluated for this interpreter)."""
    declared = _declared()
    project = _pyproject()["project"]
    # Extras asked of a dependency (psycopg[binary]) bring in that dependency's optional requirements.
    extras: dict[str, set[str]] = {}
    groups = [project["dependencies"], *project["optional-dependencies"].values()]
    for text in (text for group in groups for text in group):
        requirement = Requirement(text)
        extras.setdefault(_dist_name(requirement.name), set()).update(requirement.extras)
    todo = set().union(*declared.values())
    needed: set[str] = set()
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        try:
            requires = importlib.metadata.distribution(name).requires or []
        except importlib.metadata.PackageNotFoundError:
            continue  # reported by the caller as "not installed"
        for text in requires:
            requirement = Requirement(text)
            asked = {""} | extras.get(name, set())
            if requirement.marker is None or any(requirement.marker.evaluate({"extra": extra})
                                                 for extra in asked):
                todo.add(_dist_name(requirement.name))
    return needed


def test_constraints_pin_exactly_what_is_installed_and_needed() -> None:
    pins = _pins()
    needed = _needed_distributions() | INSTALLER_DISTRIBUTIONS
    regenerate = "run `make constraints` and commit constraints.txt"
    problems = []
    for name in sorted(needed):
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            problems.append(f"{name} is required but not installed: make setup")
            continue
        if name not in pins:
            problems.append(f"{name} {installed} is needed but has no pin: {regenerate}")
        elif pins[name] != installed:
            problems.append(
                f"{name}: constraints.txt pins {pins[name]} but {installed} is installed: `make setup` "
                f"installs the pinned one; to keep {installed}, {regenerate}"
            )
    for name in sorted(set(pins) - needed):
        problems.append(f"{name} is pinned but nothing needs it: uninstall it from .venv, then {regenerate}")
    assert not problems, "\n".join(problems)


# -- tests: no way to go green by skipping ----------------------------------------------------------------

SKIPPING = {"skip", "skipif", "importorskip", "xfail"}


def _pytest_skipping_calls(path: Path) -> list[str]:
    """`pytest.skip`, `pytest.mark.skipif`, `pytest.importorskip`, `pytest.xfail`, ... used in `path`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Attribute) and node.attr in SKIPPING:
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id == "pytest":
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} uses {ast.unparse(node)}")
    return found


def test_tests_skip_only_through_the_prerequisites_helper() -> None:
    # A skip that CI cannot see through hides a missing tool or privilege; tests/prerequisites.py skips
    # locally and fails under CI. Anything else that skips or expects failure is refused here.
    helper = ROOT / "tests" / "prerequisites.py"
    offenders = [
        line
        for path in sorted((ROOT / "tests").rglob("*.py"))
        if path != helper
        for line in _pytest_skipping_calls(path)
    ]
    assert not offenders, "use tests.prerequisites.require/requires instead:\n" + "\n".join(offenders)
    assert _pytest_skipping_calls(helper), "control: the helper's own pytest.skip is seen"
