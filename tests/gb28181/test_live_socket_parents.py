"""The live socket directory's parents (edge.gb28181.live `check_socket_parents`): every existing one must
belong to root or the agent's user and be writable by nobody else unless sticky (real directories)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edge.gb28181.live import LiveError, check_socket_parents


def test_a_parent_writable_by_others_is_refused_naming_it(tmp_path: Path) -> None:
    parent = tmp_path / "shared"
    parent.mkdir()
    os.chmod(parent, 0o777)
    with pytest.raises(LiveError, match=f"{parent} is writable by other users"):
        check_socket_parents(parent / "live")


def test_control_a_sticky_parent_and_missing_directories_pass(tmp_path: Path) -> None:
    parent = tmp_path / "shared"
    parent.mkdir()
    os.chmod(parent, 0o1777)  # like /tmp: nobody renames another's entry
    check_socket_parents(parent / "not" / "yet" / "live")


def test_a_symlinked_parent_is_checked_where_it_leads(tmp_path: Path) -> None:
    target = tmp_path / "open"
    target.mkdir()
    os.chmod(target, 0o777)
    (target / "inner").mkdir()
    link = tmp_path / "link"
    link.symlink_to(target / "inner")
    with pytest.raises(LiveError, match="writable by other users"):
        check_socket_parents(link / "live")
