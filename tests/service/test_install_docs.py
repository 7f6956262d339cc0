"""The install steps an administrator copies from systemd/README.md must give the installation that was
tested and that the unit can start (review: `pip install /path` without the constraints resolves to
whatever is newest a year later; a virtualenv made from a Python under /root, such as pyenv's, cannot
start under the unit's ProtectHome=yes)."""

from __future__ import annotations

import itertools
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
INSTALL_DOCS = [ROOT / "systemd" / "README.md"]


def shell_lines(path: Path) -> list[str]:
    """The command lines of the ```sh blocks (continuations joined, comments dropped)."""
    lines: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S):
        joined = block.replace("\\\n", " ")
        stripped = (line.strip() for line in joined.splitlines())
        lines += [line for line in stripped if line and not line.startswith("#")]
    return lines


def test_every_documented_pip_install_uses_the_constraints_file() -> None:
    installs = [(doc.name, line) for doc in INSTALL_DOCS for line in shell_lines(doc) if " install " in
                f" {line} " and "pip" in line.split()[0]]
    assert installs, "the install steps were not found"
    unconstrained = [line for _, line in installs if not _constrained(shlex.split(line))]
    assert unconstrained == []


def _constrained(argv: list[str]) -> bool:
    for flag, value in itertools.pairwise(argv):
        if flag in ("-c", "--constraint") and value.endswith("constraints.txt"):
            return True
    return any(arg.startswith("--constraint=") and arg.endswith("constraints.txt") for arg in argv)


def test_documented_virtualenvs_use_debians_python_outside_protecthome() -> None:
    makers = [line for doc in INSTALL_DOCS for line in shell_lines(doc) if " -m venv " in f" {line} "]
    assert makers, "the install steps were not found"
    assert [line for line in makers if shlex.split(line)[0] != "/usr/bin/python3"] == []
    unit = (ROOT / "systemd" / "edge-station.service").read_text(encoding="utf-8")
    if re.search(r"^ProtectHome=(yes|read-only|tmpfs)", unit, flags=re.M):
        assert "ProtectHome" in (ROOT / "systemd" / "README.md").read_text(encoding="utf-8")
