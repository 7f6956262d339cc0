"""The mount-table parser on real /proc/self/mountinfo lines and on lines no kernel would write."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from drivers.usb.mountinfo import MountTable, parse_mountinfo, unescape

# From a Debian 12 station with systemd (shared propagation, optional fields), a recorder mounted by
# systemd-mount, a FUSE volume, a bind mount, a namespace file and a stacked mount.
BAY = b"/media/evidence-edge/pci-0000_00_14_0-usb-0_1_3_1_0-scsi-0_0_0_0-part1"
REAL = b"".join([
    b"22 28 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:13 - proc proc rw\n",
    b"28 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro\n",
    b"29 28 0:25 / /run rw,nosuid,nodev,noexec,relatime shared:2 master:7 - tmpfs tmpfs rw,size=1626308k\n",
    b"301 28 8:17 / " + BAY + b" rw,nosuid,nodev,noexec,relatime shared:180 - vfat /dev/sdb1 "
    b"rw,uid=998,gid=998,fmask=0177,dmask=0077,codepage=437,iocharset=utf8,tz=UTC,flush\n",
    b"302 28 0:61 / /media/evidence-edge/bay\\0402 rw,nosuid,nodev,relatime - fuse.zfy evidence-edge-sim "
    b"rw,user_id=0,group_id=0,allow_other\n",
    b"303 28 254:1 /var/lib/sim/recorders/3300001/volume /media/evidence-edge/bay3 "
    b"rw,nosuid,nodev,noexec,relatime - ext4 /dev/vda1 rw,errors=remount-ro\n",
    b"304 29 0:4 net:[4026532281] /run/netns/a rw - nsfs nsfs rw\n",
    b"305 301 0:62 / " + BAY + b" rw,relatime - tmpfs tmpfs rw\n",
])


def test_real_lines() -> None:
    table = parse_mountinfo(REAL)
    assert table.malformed == ()
    assert len(table.entries) == 8
    root = table.entries[1]
    assert (root.mount_id, root.parent_id, root.device) == (28, 1, "254:1")
    assert (root.root, root.mount_point) == ("/", "/")
    assert root.optional_fields == ("shared:1",)
    run = table.entries[2]
    assert run.optional_fields == ("shared:2", "master:7") and run.fs_type == "tmpfs"
    vfat = table.entries[3]
    assert vfat.fs_type == "vfat" and vfat.source == "/dev/sdb1" and (vfat.major, vfat.minor) == (8, 17)
    assert "tz=UTC" in vfat.super_options.split(",")
    assert {"nosuid", "nodev", "noexec"} <= set(vfat.mount_options.split(","))
    fuse = table.entries[4]
    assert fuse.mount_point == "/media/evidence-edge/bay 2"  # \040 is a space
    assert (fuse.fs_type, fuse.source, fuse.optional_fields) == ("fuse.zfy", "evidence-edge-sim", ())
    bind = table.entries[5]
    assert bind.root == "/var/lib/sim/recorders/3300001/volume"
    assert bind.mount_point == "/media/evidence-edge/bay3"
    assert table.entries[6].root == "net:[4026532281]"  # not every root is a path


def test_the_mount_on_top_is_the_one_seen() -> None:
    table = parse_mountinfo(REAL)
    top = table.at(BAY.decode())
    assert top is not None and (top.mount_id, top.fs_type) == (305, "tmpfs")
    assert table.at("/media/evidence-edge") is None
    assert table.at("/media/evidence-edge/bay 2") is not None


@pytest.mark.parametrize(
    ("escaped", "raw"),
    [
        (b"/a\\040b", b"/a b"),
        (b"/tab\\011newline\\012back\\134slash", b"/tab\tnewline\nback\\slash"),
        (b"/\\346\\270\\257", "/港".encode()),
        (b"/gbk\\272\\272", b"/gbk\xba\xba"),  # not UTF-8: kept as the bytes the kernel means
        (b"/not\\8escape\\04", b"/not\\8escape\\04"),  # not an escape: left alone
    ],
)
def test_octal_escapes(escaped: bytes, raw: bytes) -> None:
    assert unescape(escaped) == raw
    line = b"40 28 8:1 / " + escaped + b" rw - vfat /dev/sdc1 rw\n"
    entry = parse_mountinfo(line).entries[0]
    assert os.fsencode(entry.mount_point) == raw
    assert os.fsencode(Path(entry.mount_point)) == raw  # a Path names exactly that directory


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (b"40 28 8:1 / /m rw vfat /dev/sdc1 rw", "separator"),
        (b"40 28 8:1 / /m - vfat /dev/sdc1 rw", "separator"),  # the '-' must follow six fields
        (b"40 28 8:1 / /m rw - vfat", "fields after the separator"),
        (b"4x 28 8:1 / /m rw - vfat /dev/sdc1 rw", "mount id"),
        ("\u0664\u0660 28 8:1 / /m rw - vfat /dev/sdc1 rw".encode(), "mount id"),  # Arabic-Indic 40
        (b"+40 28 8:1 / /m rw - vfat /dev/sdc1 rw", "mount id"),
        (b"40 28 8-1 / /m rw - vfat /dev/sdc1 rw", "MAJOR:MINOR"),
        (b"40 28 8:1 / relative rw - vfat /dev/sdc1 rw", "absolute"),
        (b"40 28 8:1 / /m rw -  /dev/sdc1 rw", "filesystem type"),
        (b"99999999999 28 8:1 / /m rw - vfat /dev/sdc1 rw", "mount id"),
        (b"40 28 8:1 / /" + b"a" * 20000 + b" rw - vfat /dev/sdc1 rw", "longer than any path"),
        (b"\x00\xff\xfe garbage", "separator"),
    ],
)
def test_malformed_lines_are_reported_and_skipped(line: bytes, why: str) -> None:
    good = b"41 28 8:2 / /ok rw - vfat /dev/sdd1 rw"
    table = parse_mountinfo(b"\n".join([good, line, good.replace(b"41", b"42", 1)]) + b"\n")
    assert [e.mount_id for e in table.entries] == [41, 42]
    assert len(table.malformed) == 1 and table.malformed[0][0] == 2 and why in table.malformed[0][1]


def test_odd_but_legal_lines() -> None:
    # An empty source (mount(2) with "" as the device), every optional field, extra superblock fields.
    table = parse_mountinfo(
        b"50 28 0:70 / /a rw shared:5 master:1 propagate_from:1 unbindable - fuse.x  rw,x\n"
        b"51 28 0:71 / /b rw - tmpfs tmpfs rw extra more\n"
    )
    assert table.malformed == ()
    a, b = table.entries
    assert a.optional_fields == ("shared:5", "master:1", "propagate_from:1", "unbindable")
    assert (a.fs_type, a.source, a.super_options) == ("fuse.x", "", "rw,x")
    assert b.super_options == "rw extra more"


def test_identity_tells_a_remount_apart_only_by_what_differs() -> None:
    first = parse_mountinfo(b"60 28 8:17 / /m rw - vfat /dev/sdb1 rw").entries[0]
    same_id_other_disk = parse_mountinfo(b"60 28 8:33 / /m rw - vfat /dev/sdc1 rw").entries[0]
    same_everything = parse_mountinfo(b"60 28 8:17 / /m rw,noatime - vfat /dev/sdb1 ro").entries[0]
    assert first.identity != same_id_other_disk.identity
    assert first.identity == same_everything.identity  # options are not identity


def test_this_machines_table_parses() -> None:
    table = parse_mountinfo(Path("/proc/self/mountinfo").read_bytes())
    assert table.malformed == ()
    assert table.at("/") is not None
    assert isinstance(table, MountTable)
