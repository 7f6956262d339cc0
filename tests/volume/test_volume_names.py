"""Recorder file names: generation, tolerant parsing, and the identity vote over names."""

from __future__ import annotations

from datetime import datetime

import pytest

from drivers.usb.mass_storage import (
    SOURCE_FILE_NAMES,
    RecorderFileName,
    identity_from_file_names,
    parse_recorder_file_name,
)
from simulators.recorder.volume import VolumeError, recorder_file_name

AT = datetime(2024, 6, 3, 8, 5, 9)


@pytest.mark.parametrize(
    ("officer", "serial", "seq", "important", "ext", "expected"),
    [
        ("123456", "1234567", 1, False, "MP4", "123456_1234567_20240603080509_0001.MP4"),
        ("123456", "1234567", 42, True, "mp4", "123456_1234567_20240603080509_0042_IMP.MP4"),
        ("A-12", "ZFY-0001", 9999, False, ".jpg", "A-12_ZFY-0001_20240603080509_9999.JPG"),
        ("000001", "7654321", 0, True, "wav", "000001_7654321_20240603080509_0000_IMP.WAV"),
    ],
)
def test_name_round_trip(officer: str, serial: str, seq: int, important: bool, ext: str,
                         expected: str) -> None:
    name = recorder_file_name(officer, serial, AT, seq, important, ext)
    assert name == expected
    assert parse_recorder_file_name(name) == RecorderFileName(
        officer_no=officer, device_serial=serial, recorded_at=AT, seq=seq, important=important,
        ext=ext.removeprefix(".").upper())


@pytest.mark.parametrize(
    ("officer", "serial", "seq", "ext"),
    [
        ("12/34", "1234567", 1, "MP4"),      # path separator
        ("123456", "..", 1, "MP4"),          # traversal
        ("123456", "", 1, "MP4"),
        ("12_34", "1234567", 1, "MP4"),      # the field separator itself
        ("123456", "1234567", 10000, "MP4"),
        ("123456", "1234567", -1, "MP4"),
        ("123456", "1234567", 1, "MP4/.."),
        ("123456", "1234567", 1, ""),
        ("1" * 33, "1234567", 1, "MP4"),
    ],
)
def test_name_rejects_bad_parts(officer: str, serial: str, seq: int, ext: str) -> None:
    with pytest.raises(VolumeError):
        recorder_file_name(officer, serial, AT, seq, False, ext)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # IMP glued to the sequence number, as some firmware writes it
        ("123456_1234567_20240603080509_0007IMP.MP4", RecorderFileName("123456", "1234567", AT, 7, True,
                                                                        "MP4")),
        ("123456_1234567_20240603080509_0007_imp.mp4", RecorderFileName("123456", "1234567", AT, 7, True,
                                                                         "MP4")),
        ("123456_1234567_20240603080509_12.jpg", RecorderFileName("123456", "1234567", AT, 12, False, "JPG")),
        ("DCAM_CAM01_123456_20240603_080509.mp4", RecorderFileName("123456", "CAM01", AT, 0, False, "MP4")),
        ("DCAM_CAM01_123456_20240603_080509_IMP.m4a",
         RecorderFileName("123456", "CAM01", AT, 0, True, "M4A")),
        ("dcam_7_42_20240603_080509IMP.JPG", RecorderFileName("42", "7", AT, 0, True, "JPG")),
    ],
)
def test_parse_tolerant_variants(name: str, expected: RecorderFileName) -> None:
    assert parse_recorder_file_name(name) == expected


@pytest.mark.parametrize(
    "name",
    [
        "",
        "PARAM.INI",
        "Info.dat",
        "IMG_0001.JPG",
        "123456_1234567_20241303080509_0001.MP4",     # month 13
        "123456_1234567_20240230080509_0001.MP4",     # 30 February
        "123456_1234567_20240603250509_0001.MP4",     # hour 25
        "123456_1234567_2024060308050_0001.MP4",      # 13 digits
        "123456_1234567_20240603080509_0001",         # no extension
        "123456_1234567_20240603080509_0001.MP4.exe",
        "12/456_1234567_20240603080509_0001.MP4",
        "../_1234567_20240603080509_0001.MP4",
        "123456_1234567_20240603080509_0001_IMP_IMP.MP4",
        "123456_1234567_20240603080509_0001.MP4\x00",
        "DCAM_CAM01_123456_20240603_0805.mp4",
        "1" * 300 + "_1234567_20240603080509_0001.MP4",
        "\udcff\udcfe_1234567_20240603080509_0001.MP4",  # undecodable bytes from os.listdir
        "１２３_1234567_20240603080509_0001.MP4",        # full-width digits are not ASCII digits
        "123456_1234567_２０２４0603080509_0001.MP4",
        "\u212a23456_1234567_20240603080509_0001.MP4",   # Kelvin sign folds to "k" without re.ASCII
        "123456_1234567_20240603080509_0001.MP\u017f",
    ],
)
def test_parse_unknown_names_give_none(name: str) -> None:
    assert parse_recorder_file_name(name) is None


def test_parse_never_raises_on_non_strings() -> None:
    assert parse_recorder_file_name(b"123456_1234567_20240603080509_0001.MP4") is None  # type: ignore[arg-type]
    assert parse_recorder_file_name(None) is None  # type: ignore[arg-type]


def test_identity_by_majority() -> None:
    names = [
        recorder_file_name("123456", "1234567", AT, i, i % 4 == 3, "MP4") for i in range(1, 6)
    ] + ["999999_7777777_20240603080509_0001.MP4", "junk.txt", "DCAM_CAM01_888888_20240603_080509.mp4"]
    identity = identity_from_file_names(names)
    assert identity is not None
    assert (identity.device_serial, identity.officer_no) == ("1234567", "123456")
    assert identity.source == SOURCE_FILE_NAMES
    assert (identity.officer_name, identity.unit_code, identity.unit_name) == ("", "", "")


@pytest.mark.parametrize(
    "names",
    [
        [],
        ["junk.txt", "IMG_0001.JPG"],
        ["111111_1111111_20240603080509_0001.MP4", "222222_2222222_20240603080509_0001.MP4"],  # tie
    ],
)
def test_identity_none_without_clear_majority(names: list[str]) -> None:
    assert identity_from_file_names(names) is None


def test_identity_vote_ignores_unicode_lookalikes() -> None:
    assert identity_from_file_names(["\u212a23456_1234567_20240603080509_0001.MP4"]) is None


def test_identity_vote_consumes_iterators() -> None:
    names = (f"123456_1234567_20240603080509_{i:04d}.MP4" for i in range(1000))
    identity = identity_from_file_names(names)
    assert identity is not None and identity.device_serial == "1234567"
