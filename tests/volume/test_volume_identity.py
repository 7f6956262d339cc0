"""PARAM.INI / Info.dat parsing and reading a volume's identity, with hostile volumes."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import pytest

from drivers.usb.mass_storage import (
    MAX_ID_FILE_BYTES,
    SOURCE_FILE_NAMES,
    SOURCE_INFO_DAT,
    SOURCE_PARAM_INI,
    MassStorageError,
    VolumeIdentity,
    parse_info_dat,
    parse_param_ini,
    read_volume_identity,
)

GOOD = VolumeIdentity("1234567", "123456", "张三", "330100000000", "杭州市公安局西湖分局", SOURCE_PARAM_INI)


def ini(*lines: str, encoding: str = "gbk", eol: str = "\r\n") -> bytes:
    return (eol.join(lines) + eol).encode(encoding)


FULL = ("[ZFY]", "DevNo=1234567", "PolNo=123456", "UserName=张三", "UnitNo=330100000000",
        "CorpName=杭州市公安局西湖分局")


@pytest.mark.parametrize(
    "data",
    [
        ini(*FULL),                                              # what devices write: GBK, CRLF
        ini(*FULL, encoding="utf-8", eol="\n"),                  # edited on a PC
        b"\xef\xbb\xbf" + ini(*FULL, encoding="utf-8"),          # with a BOM
        ini(*FULL, eol="\r"),                                    # old Mac line ends
        ini("; written by the vendor tool", "[Other]", "DevNo=9999999", "", *FULL, "[Net]", "ip=1.2.3.4"),
        ini("[zfy]", " devno = 1234567 ", "POLNO=123456", "username=张三", "unitno=330100000000",
            "corpname=杭州市公安局西湖分局"),
        ini("[ZHY]", *FULL[1:]),
    ],
)
def test_param_ini_accepted_forms(data: bytes) -> None:
    assert parse_param_ini(data) == GOOD


def test_param_ini_optional_fields_empty() -> None:
    identity = parse_param_ini(ini("[ZFY]", "DevNo=ZFY-1", "PolNo=000123"))
    assert identity == VolumeIdentity("ZFY-1", "000123", "", "", "", SOURCE_PARAM_INI)


def test_short_gbk_name_that_is_also_valid_utf8_reads_as_gbk() -> None:
    # GBK for 郑叶 is d6a3d2b6, which is also valid UTF-8 (two Cyrillic/Armenian letters).
    data = ini("[ZFY]", "DevNo=1234567", "PolNo=123456", "UserName=郑叶")
    data.decode("utf-8")  # precondition of the test
    assert parse_param_ini(data).officer_name == "郑叶"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "no [ZFY] or [ZHY] section"),
        (ini("[Other]", "DevNo=1234567"), "no [ZFY] or [ZHY] section"),
        (ini("[ZFY]", "PolNo=123456"), "lacks DevNo"),
        (ini("[ZFY]", "DevNo=1234567"), "lacks PolNo"),
        (ini("[ZFY]", "DevNo=", "PolNo=123456"), "lacks DevNo"),
        (ini("[ZFY]", "DevNo=1234567", "DevNo=7654321", "PolNo=123456"), "given twice"),
        (ini(*FULL, "[ZFY]", "DevNo=7654321"), "repeated"),
        (ini(*FULL, "[ZHY]", "DevNo=7654321", "PolNo=1"), "both [ZFY] and [ZHY]"),
        (ini("[ZFY", "DevNo=1234567"), "unterminated"),
        (ini("[ZFY]", "DevNo 1234567", "PolNo=123456"), "expected KEY=VALUE"),
        (ini("[ZFY]", "DevNo=../../etc", "PolNo=123456"), "device serial"),
        (ini("[ZFY]", "DevNo=12/34567", "PolNo=123456"), "device serial"),
        (ini("[ZFY]", "DevNo=1234567", "PolNo=123 456"), "officer number"),
        (ini("[ZFY]", "DevNo=" + "1" * 33, "PolNo=123456"), "device serial"),
        (ini("[ZFY]", "DevNo=1234567", "PolNo=123456", "UnitNo=33/01"), "unit code"),
        (ini("[ZFY]", "DevNo=1234567", "PolNo=123456", "UserName=" + "张" * 65), "at most 64"),
        (ini("[ZFY]", "DevNo=1234567", "PolNo=123456", "CorpName=a\tb"), "control characters"),
        (ini("[ZFY]", "DevNo=1234567", "PolNo=123456") + b"\x00\x01\x02", "binary"),
        (bytes(range(256)) * 4, "UTF-8 nor GBK"),
        (b"\xef\xbb\xbf[ZFY]\r\nUserName=\xd5\xc5\r\n", "neither UTF-8 nor GBK"),  # BOM, then GBK
        (b"[ZFY]\r\nDevNo=1234567\r\n" + b"x" * MAX_ID_FILE_BYTES, "at most 65536"),
        (random.Random(7).randbytes(4096), None),
    ],
)
def test_param_ini_hostile(data: bytes, message: str | None) -> None:
    with pytest.raises(MassStorageError, match=re.escape(message) if message else None):
        parse_param_ini(data)


@pytest.mark.parametrize(
    ("data", "serial", "officer"),
    [
        (b"1234567;V1.2;20240603;123456\r\nmore lines\r\n", "1234567", "123456"),
        (b"1234567;123456", "1234567", "123456"),
        (b"\xef\xbb\xbf1234567; x ;123456\n", "1234567", "123456"),
    ],
)
def test_info_dat(data: bytes, serial: str, officer: str) -> None:
    identity = parse_info_dat(data)
    assert (identity.device_serial, identity.officer_no) == (serial, officer)
    assert identity.source == SOURCE_INFO_DAT


@pytest.mark.parametrize(
    "data",
    [b"", b"1234567\r\n", b"\r\n1234567;123456", b"12/34567;123456", b"1234567;12 34", b"\x00;\x00",
     b";123456", b"1" * (MAX_ID_FILE_BYTES + 1)],
)
def test_info_dat_hostile(data: bytes) -> None:
    with pytest.raises(MassStorageError):
        parse_info_dat(data)


# -- read_volume_identity on real folders ---------------------------------------------------------------

NAME = "123456_1234567_20240603080509_{:04d}.MP4"


def make_volume(root: Path, *, param: bytes | None = ini(*FULL), info: bytes | None = None,
                names: int = 0) -> Path:
    media = root / "DCIM" / "100MEDIA"
    media.mkdir(parents=True)
    if param is not None:
        (root / "PARAM.INI").write_bytes(param)
    if info is not None:
        (media / "Info.dat").write_bytes(info)
    for i in range(names):
        (media / NAME.format(i + 1)).write_bytes(b"\x00")
    return root


def test_reads_param_ini(tmp_path: Path) -> None:
    assert read_volume_identity(make_volume(tmp_path, info=b"7777777;1")) == GOOD


def test_param_ini_found_in_any_case(tmp_path: Path) -> None:
    make_volume(tmp_path, param=None)
    (tmp_path / "param.ini").write_bytes(ini(*FULL))
    assert read_volume_identity(tmp_path) == GOOD


def test_falls_back_to_info_dat_then_names(tmp_path: Path) -> None:
    vol = make_volume(tmp_path / "a", param=None, info=b"7654321;x;654321\r\n", names=3)
    assert read_volume_identity(vol).source == SOURCE_INFO_DAT
    vol = make_volume(tmp_path / "b", param=ini("[ZFY]", "DevNo=bad/serial", "PolNo=1"), names=3)
    identity = read_volume_identity(vol)
    assert identity.source == SOURCE_FILE_NAMES
    assert (identity.device_serial, identity.officer_no) == ("1234567", "123456")


def test_symlinked_param_ini_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside.ini"
    outside.write_bytes(ini("[ZFY]", "DevNo=6666666", "PolNo=666666"))
    vol = make_volume(tmp_path / "vol", param=None)
    (vol / "PARAM.INI").symlink_to(outside)
    with pytest.raises(MassStorageError, match=r"no identity on volume .*PARAM\.INI: is a symlink"):
        read_volume_identity(vol)


def test_symlinked_dcim_is_not_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere" / "100MEDIA"
    elsewhere.mkdir(parents=True)
    (elsewhere / "Info.dat").write_bytes(b"6666666;666666")
    (elsewhere / NAME.format(1)).write_bytes(b"")
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "DCIM").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(MassStorageError, match="no identity on volume"):
        read_volume_identity(vol)


def test_fifo_param_ini_does_not_hang(tmp_path: Path) -> None:
    vol = make_volume(tmp_path, param=None, names=1)
    os.mkfifo(vol / "PARAM.INI")
    assert read_volume_identity(vol).source == SOURCE_FILE_NAMES


def test_directory_named_param_ini(tmp_path: Path) -> None:
    vol = make_volume(tmp_path, param=None)
    (vol / "PARAM.INI").mkdir()
    with pytest.raises(MassStorageError, match=r"PARAM\.INI is not a regular file"):
        read_volume_identity(vol)


def test_huge_param_ini_refused_without_reading(tmp_path: Path) -> None:
    vol = make_volume(tmp_path, param=None, names=2)
    with open(vol / "PARAM.INI", "wb") as fh:
        fh.truncate(8 * 1024**3)  # sparse 8 GiB: reading it would take the station down
    identity = read_volume_identity(vol)
    assert identity.source == SOURCE_FILE_NAMES


def test_nothing_on_volume(tmp_path: Path) -> None:
    (tmp_path / "DCIM").mkdir()
    (tmp_path / "DCIM" / "IMG_0001.JPG").write_bytes(b"")
    with pytest.raises(MassStorageError) as info:
        read_volume_identity(tmp_path)
    text = str(info.value)
    assert text.startswith(f"no identity on volume {tmp_path}")
    assert "PARAM.INI: not present" in text and "no 100MEDIA folder" in text and "none of 1 names" in text


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(MassStorageError, match="cannot open"):
        read_volume_identity(tmp_path / "gone")


def test_root_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    vol = make_volume(tmp_path / "real")
    (tmp_path / "link").symlink_to(vol)
    with pytest.raises(MassStorageError, match="cannot open"):
        read_volume_identity(tmp_path / "link")


def test_many_names_are_bounded(tmp_path: Path) -> None:
    vol = make_volume(tmp_path, param=None)
    media = vol / "DCIM" / "100MEDIA"
    for i in range(2500):
        (media / f"{i:06d}_7777777_20240603080509_0001.MP4").touch()
    # 2500 different officers: no majority among the bounded sample; the point is it returns promptly.
    with pytest.raises(MassStorageError, match="2000 names"):
        read_volume_identity(vol)
