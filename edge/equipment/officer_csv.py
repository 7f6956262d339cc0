"""The agency's officer list as CSV: read strictly, every problem reported with its line.

Format: one header row, then one officer per row. Columns (English or Chinese header, any order):

| column | 中文 | required | rule |
| --- | --- | --- | --- |
| officer_no | 警号 | yes | 6 digits |
| name | 姓名 | yes | at most 32 GBK bytes |
| unit_code | 单位编号 | no | up to 12 A-Za-z0-9 |
| unit_name | 单位名称 | no | at most 32 GBK bytes |
| status | 状态 | no | active / suspended (正常 / 停用); empty: active |
| card_uid | 卡号 | no | hex UID (separators allowed), unique in the file; empty: no card |
| pin | 密码 | no | 4..12 digits; hashed at import, never stored or shown; empty: keep the PIN |

A column the file does not have leaves what the registry holds for a listed officer (a personnel list
without a status column does not reinstate a suspended officer, one without cards keeps their cards); a
new officer gets none / active.

The file is UTF-8 (a byte-order mark is allowed, as Excel writes it) unless the caller names another
encoding: a spreadsheet saved as GBK (Excel's default on Chinese Windows) is refused with the line of the
first byte that is not UTF-8 and a hint, never guessed. Cells that a spreadsheet would run as a formula
(starting with = + - @, a tab or a carriage return) are refused, so that a list exported again from the
station cannot carry one. The whole file is refused if any row is wrong: an import is all or nothing.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

from edge.equipment.credentials import CredentialError, check_pin, normalise_card_uid
from edge.equipment.officers import (
    OFFICER_NAME_MAX_BYTES,
    UNIT_NAME_MAX_BYTES,
    OfficerError,
    OfficerStatus,
    check_officer_no,
    check_unit_code,
    check_width,
)

__all__ = ["MAX_FILE_BYTES", "MAX_ROWS", "OfficerCsvError", "OfficerRow", "parse_officer_csv"]

MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_ROWS = 100_000
MAX_CELL_CHARS = 200  # far above every field's width: longer is not a name but a mistake or an attack
MAX_PROBLEMS_SHOWN = 20

COLUMNS: dict[str, str] = {
    "officer_no": "officer_no", "警号": "officer_no",
    "name": "name", "姓名": "name",
    "unit_code": "unit_code", "单位编号": "unit_code",
    "unit_name": "unit_name", "单位名称": "unit_name",
    "status": "status", "状态": "status",
    "card_uid": "card_uid", "卡号": "card_uid",
    "pin": "pin", "密码": "pin",
}
REQUIRED = ("officer_no", "name")
STATUS_WORDS: dict[str, OfficerStatus] = {
    "": OfficerStatus.ACTIVE, "active": OfficerStatus.ACTIVE, "正常": OfficerStatus.ACTIVE,
    "suspended": OfficerStatus.SUSPENDED, "停用": OfficerStatus.SUSPENDED,
}
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class OfficerCsvError(ValueError):
    """The file is refused; `problems` lists each as "line N: ..." (never a PIN)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        shown = problems[:MAX_PROBLEMS_SHOWN]
        more = len(problems) - len(shown)
        super().__init__("\n".join(shown + ([f"... and {more} more"] if more else [])))


@dataclass(frozen=True)
class OfficerRow:
    """One valid row: its line in the file, the officer's fields, the PIN in clear (repr hides it)."""

    line: int
    officer_no: str
    name: str
    unit_code: str
    unit_name: str
    status: OfficerStatus
    card_uid: str | None
    pin: str | None = field(default=None, repr=False)
    # The optional columns the file has: the others keep the registry's values (importing).
    given: frozenset[str] = frozenset()


def _decode(data: bytes, encoding: str) -> str:
    if len(data) > MAX_FILE_BYTES:
        raise OfficerCsvError([f"the file has {len(data)} bytes; at most {MAX_FILE_BYTES} are read"])
    if encoding.replace("-", "").replace("_", "").lower() in ("utf8", "utf8sig"):
        encoding = "utf-8-sig"  # a BOM is dropped, not read as part of the first header
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        hint = " (a spreadsheet saved as GBK? give --encoding gbk, or save as CSV UTF-8)" \
            if encoding == "utf-8-sig" else ""
        raise OfficerCsvError([f"line {line}: not {encoding} text at byte {exc.start}{hint}"]) from None
    except LookupError:
        raise OfficerCsvError([f"unknown encoding {encoding[:40]!r}"]) from None


def _header(cells: list[str]) -> list[str]:
    problems: list[str] = []
    columns: list[str] = []
    for cell in cells:
        column = COLUMNS.get(cell.strip().lower() if cell.isascii() else cell.strip())
        if column is None:
            known = ", ".join(sorted(set(COLUMNS)))
            problems.append(f"line 1: unknown column {cell[:40]!r}; expected {known}")
        elif column in columns:
            problems.append(f"line 1: column {column} appears twice")
        else:
            columns.append(column)
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        problems.append(f"line 1: missing column(s) {', '.join(missing)}")
    if problems:
        raise OfficerCsvError(problems)
    return columns


def _row(line: int, values: dict[str, str]) -> OfficerRow:
    """One data row; `OfficerError`/`CredentialError` name the field (never a PIN's value)."""
    for column, value in values.items():
        if len(value) > MAX_CELL_CHARS:
            raise OfficerError(f"{column}: {len(value)} characters, at most {MAX_CELL_CHARS}")
        if column != "pin" and value.startswith(_FORMULA_STARTS):
            raise OfficerError(f"{column}: {value[:40]!r} starts like a spreadsheet formula (= + - @); "
                               "refused so that no formula reaches a spreadsheet later")
    status_word = values.get("status", "").strip()
    status = STATUS_WORDS.get(status_word.lower() if status_word.isascii() else status_word)
    if status is None:
        raise OfficerError(f"status: expected active or suspended (正常/停用), got {status_word[:40]!r}")
    card = values.get("card_uid", "").strip()
    pin = values.get("pin", "")
    return OfficerRow(
        line=line,
        officer_no=check_officer_no(values["officer_no"].strip()),
        name=check_width("name", values["name"].strip(), OFFICER_NAME_MAX_BYTES, required=True),
        unit_code=check_unit_code(values.get("unit_code", "").strip()),
        unit_name=check_width("unit_name", values.get("unit_name", "").strip(), UNIT_NAME_MAX_BYTES,
                              required=False),
        status=status,
        card_uid=normalise_card_uid(card) if card else None,
        pin=check_pin(pin) if pin else None,
        given=frozenset(values),
    )


def parse_officer_csv(data: bytes, *, encoding: str = "utf-8") -> list[OfficerRow]:
    """The rows of an officer list, or `OfficerCsvError` with every problem found (line numbers are the
    file's physical lines, as an editor shows them)."""
    text = _decode(data, encoding)
    if "\x00" in text:
        raise OfficerCsvError([f"line {text.count(chr(10), 0, text.index(chr(0))) + 1}: a NUL character "
                               "(not a text file)"])
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise OfficerCsvError([f"line 1: {exc}"]) from None
    if header is None:
        raise OfficerCsvError(["the file is empty: expected a header row"])
    columns = _header(header)
    rows: list[OfficerRow] = []
    problems: list[str] = []
    first_line_of: dict[tuple[str, str], int] = {}
    while True:
        line = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            problems.append(f"line {line}: {exc}")
            break  # the reader cannot resynchronise after a broken quote
        if not any(c.strip() for c in cells):
            continue
        if len(rows) + len(problems) >= MAX_ROWS:
            problems.append(f"line {line}: more than {MAX_ROWS} rows")
            break
        if len(cells) != len(columns):
            problems.append(f"line {line}: {len(cells)} cells, the header has {len(columns)}")
            continue
        try:
            row = _row(line, dict(zip(columns, cells, strict=True)))
        except (OfficerError, CredentialError) as exc:
            problems.append(f"line {line}: {exc}")
            continue
        for key, value in (("警号", row.officer_no), ("card", row.card_uid)):
            if value is None:
                continue
            first = first_line_of.setdefault((key, value), line)
            if first != line:
                problems.append(f"line {line}: {key} {value} already on line {first}")
        rows.append(row)
    if problems:
        raise OfficerCsvError(problems)
    if not rows:
        raise OfficerCsvError(["no officers: the file has a header and no rows"])
    return rows
