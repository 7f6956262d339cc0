"""`edge central officers import|list`: the agency's list issued as signed versions at an initialised
central; a file with a PIN column, or any bad row, issues nothing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edge.central.equipment import EquipmentStore
from edge.central.verify import verify_central
from edge.custody.canonical import parse_json
from edge.custody.keys import load_public_key
from edge.equipment.officer_list import verify_list
from tests.central.test_central_cli import _run, config_file, initialised

__all__ = ["config_file", "initialised"]

LIST = "警号,姓名,单位编号,卡号\n110001,张伟,330100000000,04A21B7C\n110002,王芳,330100000000,\n"


def versions(tmp_path: Path) -> list[int]:
    store = EquipmentStore.of_store(tmp_path / "store")
    try:
        return [v.version for v in store.versions()]
    finally:
        store.close()


def test_import_issues_signed_versions_one_after_another(
    initialised: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv_file = tmp_path / "agency.csv"
    csv_file.write_text(LIST, encoding="utf-8")
    assert _run("officers", "import", str(csv_file), "--config", str(initialised), "--by", "admin") == 0
    assert "version 1 issued from agency.csv: 2 officers" in capsys.readouterr().out
    assert _run("officers", "import", str(csv_file), "--config", str(initialised)) == 0
    assert versions(tmp_path) == [1, 2]
    store = EquipmentStore.of_store(tmp_path / "store")
    try:
        newest = store.newest()
    finally:
        store.close()
    assert newest is not None
    # Signed with the key the stations pinned at enrollment.
    verified = verify_list(parse_json(newest.envelope),
                           load_public_key(tmp_path / "store" / "identity" / "signing.key.pub"))
    assert verified.version == 2 and [o.officer_no for o in verified.officers] == ["110001", "110002"]
    assert _run("officers", "list", "--config", str(initialised)) == 0
    listed = capsys.readouterr().out
    assert "version 1  2 officers" in listed and "version 2  2 officers" in listed


@pytest.mark.parametrize("text, expected", [
    ("警号,姓名,密码\n110001,张伟,135790\n", "column pin"),
    ("警号,姓名\n110001,张伟\n110001,王芳\n", "already on line 2"),
    ("警号,姓名\n11001,张伟\n", "6 digits"),
])
def test_a_refused_file_issues_nothing_and_never_shows_a_pin(
    initialised: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    csv_file = tmp_path / "agency.csv"
    csv_file.write_text(text, encoding="utf-8")
    assert _run("officers", "import", str(csv_file), "--config", str(initialised)) == 65
    err = capsys.readouterr().err
    assert expected in err and "135790" not in err
    assert versions(tmp_path) == []
    # Control: the same central takes a good file.
    csv_file.write_text(LIST, encoding="utf-8")
    assert _run("officers", "import", str(csv_file), "--config", str(initialised)) == 0
    assert versions(tmp_path) == [1]


def test_central_verify_checks_every_version_signed_and_names_a_changed_one(
    initialised: Path, tmp_path: Path
) -> None:
    csv_file = tmp_path / "agency.csv"
    csv_file.write_text(LIST, encoding="utf-8")
    for _ in range(2):
        assert _run("officers", "import", str(csv_file), "--config", str(initialised)) == 0
    findings = verify_central(tmp_path / "store")
    assert findings.problems == [] and findings.checked["officer_lists"] == 2
    # Someone with the database (not the key) rewrites version 2's list: the triggers stop an UPDATE,
    # so they drop them first.
    conn = sqlite3.connect(tmp_path / "store" / "equipment.db")
    conn.execute("DROP TRIGGER officer_lists_append_only")
    conn.execute("UPDATE officer_lists SET envelope = CAST(REPLACE(CAST(envelope AS TEXT), '王芳', '李四') "
                 "AS BLOB) WHERE version = 2")
    conn.commit()
    conn.close()
    problems = verify_central(tmp_path / "store").problems
    assert [p.where for p in problems] == ["officer list version 2"], problems
    assert "does not verify" in problems[0].what


def test_a_list_too_large_for_one_answer_to_a_station_issues_nothing(
    initialised: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wide_name, wide_unit = "张" * 16, "杭" * 16  # the recorder's 32 GBK bytes each
    lines = [f"{100000 + i},{wide_name},ABCDEFGHIJKL,{wide_unit},{i:020X}\n" for i in range(7500)]
    rows = "".join(lines)
    csv_file = tmp_path / "agency.csv"
    csv_file.write_text("警号,姓名,单位编号,单位名称,卡号\n" + rows, encoding="utf-8")
    assert _run("officers", "import", str(csv_file), "--config", str(initialised)) == 65
    assert "one answer to a station carries at most" in capsys.readouterr().err
    assert versions(tmp_path) == []
    # Control: the same rows, fewer of them.
    csv_file.write_text("警号,姓名,单位编号,单位名称,卡号\n" + "".join(lines[:3000]), encoding="utf-8")
    assert _run("officers", "import", str(csv_file), "--config", str(initialised)) == 0
    assert versions(tmp_path) == [1]
