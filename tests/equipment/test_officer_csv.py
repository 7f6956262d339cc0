"""The officer list reader: valid lists in both header languages, and every kind of hostile file refused
with its line."""

from __future__ import annotations

import pytest

from edge.equipment.officer_csv import OfficerCsvError, parse_officer_csv
from edge.equipment.officers import OfficerStatus

GOOD = (
    "警号,姓名,单位编号,单位名称,状态,卡号,密码\n"
    "110001,张伟,330100000000,杭州市公安局,正常,04:a2:1b:7c,1234\n"
    "110002,王芳,330100000000,杭州市公安局,停用,,\n"
)


def problems_of(data: bytes, **kwargs: str) -> list[str]:
    with pytest.raises(OfficerCsvError) as caught:
        parse_officer_csv(data, **kwargs)
    return caught.value.problems


def test_a_chinese_header_list_reads_with_normalised_cards_and_pins_kept_out_of_repr() -> None:
    rows = parse_officer_csv(GOOD.encode())
    assert [(r.line, r.officer_no, r.name, r.status, r.card_uid) for r in rows] == [
        (2, "110001", "张伟", OfficerStatus.ACTIVE, "04A21B7C"),
        (3, "110002", "王芳", OfficerStatus.SUSPENDED, None),
    ]
    assert rows[0].pin == "1234" and rows[1].pin is None
    assert "1234" not in repr(rows[0])


def test_english_header_in_any_order_with_optional_columns_left_out() -> None:
    rows = parse_officer_csv(b"name,officer_no\nLi Na,110003\n")
    assert (rows[0].officer_no, rows[0].name, rows[0].unit_code, rows[0].status) == (
        "110003", "Li Na", "", OfficerStatus.ACTIVE)


def test_a_utf8_byte_order_mark_is_not_part_of_the_first_column() -> None:
    rows = parse_officer_csv(b"\xef\xbb\xbf" + GOOD.encode())
    assert rows[0].officer_no == "110001"


def test_a_gbk_file_is_refused_with_its_line_and_a_hint_and_reads_when_named() -> None:
    data = GOOD.encode("gbk")
    [problem] = problems_of(data)
    assert problem.startswith("line 1: not utf-8-sig text") and "--encoding gbk" in problem
    assert [r.name for r in parse_officer_csv(data, encoding="gbk")] == ["张伟", "王芳"]


def test_the_first_bad_byte_is_reported_on_its_own_line() -> None:
    data = b"officer_no,name\n110001,Li\n" + "110002,王芳\n".encode("gbk")
    assert problems_of(data)[0].startswith("line 3: not utf-8-sig")


def test_duplicate_officer_numbers_and_cards_are_named_with_both_lines() -> None:
    data = (b"officer_no,name,card_uid\n110001,A,04A21B7C\n110002,B,04a21b7c\n110001,C,\n")
    assert problems_of(data) == [
        "line 3: card 04A21B7C already on line 2",
        "line 4: \u8b66\u53f7 110001 already on line 2",
    ]


@pytest.mark.parametrize("cell", ['=HYPERLINK(""http://x"")', "+1", "-2+3", "@SUM(A1)", "\tname"])
def test_formula_looking_cells_are_refused(cell: str) -> None:
    data = f'officer_no,name\n110001,"{cell}"\n'.encode()
    [problem] = problems_of(data)
    assert problem.startswith("line 2: name:") and "formula" in problem


def test_overlong_fields_are_refused_by_the_recorders_field_width() -> None:
    name = "张" * 17  # 34 GBK bytes: one character too many for the recorder's 32-byte field
    assert problems_of(f"officer_no,name\n110001,{name}\n".encode()) == [
        "line 2: name: at most 32 GBK bytes (the recorder's field), got 34"]
    assert parse_officer_csv(f"officer_no,name\n110001,{'张' * 16}\n".encode())[0].name == "张" * 16
    huge = "x" * 10_000
    assert "at most 200" in problems_of(f"officer_no,name\n110001,{huge}\n".encode())[0]


def test_names_gbk_cannot_hold_are_refused() -> None:
    assert "GBK cannot hold" in problems_of("officer_no,name\n110001,Li 😀\n".encode())[0]


def test_every_bad_row_is_listed_and_a_pin_never_appears_in_a_problem() -> None:
    data = (
        b"officer_no,name,pin,status,card_uid\n"
        b"11000X,A,123456,,\n"           # 警号 not digits
        b"110002,B,12ab56,,\n"           # PIN not digits: said without the PIN
        b"110003,C,987654,retired,\n"    # unknown status
        b"110004,D,55,,\n"               # PIN too short
        b"110005,E,246810,,XYZ\n"        # card not hex
        b"110006,F\n"                    # cells missing
    )
    problems = problems_of(data)
    assert [p.split(":")[0] for p in problems] == [f"line {n}" for n in range(2, 8)]
    assert "officer_no" in problems[0] and "PIN" in problems[1] and "status" in problems[2]
    assert "card UID" in problems[4] and "2 cells" in problems[5]
    for pin in ("123456", "12ab56", "987654", "246810"):
        assert all(pin not in p for p in problems)


def test_header_problems_unknown_duplicate_and_missing_columns() -> None:
    problems = problems_of(b"officer_no,officer_no,rank\n")
    assert any("unknown column 'rank'" in p for p in problems)
    assert any("appears twice" in p for p in problems)
    assert any("missing column(s) name" in p for p in problems)


@pytest.mark.parametrize(("data", "expected"), [
    (b"", "the file is empty"),
    (b"officer_no,name\n", "no officers"),
    (b"officer_no,name\n110001,A\x00B\n", "line 2: a NUL character"),
    (b'officer_no,name\n110001,"unterminated\n', "line 2:"),
])
def test_empty_binary_and_broken_files(data: bytes, expected: str) -> None:
    assert problems_of(data)[0].startswith(expected)


def test_a_quoted_cell_spanning_lines_does_not_shift_later_line_numbers() -> None:
    data = b'officer_no,name,unit_name\n110001,A,"two\nlines"\n11000X,B,\n'
    first, second = problems_of(data)
    assert first.startswith("line 2: unit_name: expected printable text")  # a line break in a name
    assert second.startswith("line 4: \u8b66\u53f7 officer_no")
