"""GBK 8.3 short names: the vfat code page is a validated setting, never a default that could break
mounts. What can be tested without a vfat kernel module: the options the udev rule must carry, the check
that the kernel has vfat and nls_cp<N> (on sysfs and module trees made in the test, and `edge check-config`
on this machine's own kernel), and the reading of a mounted volume's code page from the mount table.
A real vfat mount with codepage=936 must be checked on station hardware (README, "vfat code page")."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from drivers.usb.mountinfo import parse_mountinfo
from edge.sources.usb.vfat import codepage_problem, module_available, nls_problem, vfat_mount_options

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "systemd" / "99-evidence-edge.rules"


def test_the_default_options_are_the_shipped_rules_and_a_code_page_adds_only_codepage() -> None:
    shipped = re.findall(r'ENV\{ID_FS_TYPE\}=="vfat".*--options=(\S+)', RULES.read_text())
    assert len(shipped) == 2 and set(shipped) == {vfat_mount_options(None)}
    assert "codepage" not in vfat_mount_options(None)  # no untested default: the kernel's own
    gbk = vfat_mount_options(936).split(",")
    assert [o for o in gbk if o not in vfat_mount_options(None).split(",")] == ["codepage=936"]
    assert gbk.index("codepage=936") < gbk.index("iocharset=utf8")


def _kernel(root: Path, *, loaded: tuple[str, ...] = (), builtin: tuple[str, ...] = (),
            installed: tuple[str, ...] = ()) -> tuple[Path, Path]:
    sys_module, modules = root / "sys" / "module", root / "lib" / "modules" / "6.1.0-test"
    modules.mkdir(parents=True)
    for name in loaded:
        (sys_module / name).mkdir(parents=True)
    (modules / "modules.builtin").write_text("".join(f"kernel/fs/{n}.ko\n" for n in builtin))
    (modules / "modules.dep").write_text("".join(f"kernel/fs/nls/{n}.ko.xz:\n" for n in installed))
    return sys_module, modules


@pytest.mark.parametrize(
    ("where", "how"),
    [({"loaded": ("vfat", "nls_cp936")}, "loaded"), ({"builtin": ("fat/vfat", "nls/nls_cp936")}, "built in"),
     ({"installed": ("vfat", "nls_cp936")}, "installed")],
)
def test_the_check_finds_the_modules_loaded_built_in_or_installed(
    tmp_path: Path, where: dict[str, tuple[str, ...]], how: str
) -> None:
    sys_module, modules = _kernel(tmp_path, **where)
    assert module_available("nls_cp936", sys_module=sys_module, modules_dir=modules) == how
    assert nls_problem(936, sys_module=sys_module, modules_dir=modules) is None


def test_the_check_names_the_missing_module(tmp_path: Path) -> None:
    # A similar name is not the module (nls_cp9360 is not nls_cp936); vfat alone is not enough.
    sys_module, modules = _kernel(tmp_path, loaded=("vfat",), installed=("nls_cp9360", "nls_cp437"))
    problem = nls_problem(936, sys_module=sys_module, modules_dir=modules)
    assert problem is not None and "nls_cp936" in problem and "vfat," not in problem
    assert nls_problem(437, sys_module=sys_module, modules_dir=modules) is None  # the control
    assert nls_problem(None, sys_module=sys_module, modules_dir=modules) is None
    empty = _kernel(tmp_path / "bare")
    assert "vfat, nls_cp936" in (nls_problem(936, sys_module=empty[0], modules_dir=empty[1]) or "")


def _station_toml(tmp_path: Path, codepage: str) -> Path:
    config = tmp_path / "station.toml"
    config.write_text(f'[station]\nid = "S-1"\nstore_dir = "{tmp_path / "store"}"\n'
                      f'[usb]\nmount_root = "{tmp_path / "media"}"\nvfat_codepage = {codepage}\n')
    return config


def check_config(config: Path) -> subprocess.CompletedProcess[str]:
    """The real `edge check-config`, in a process of its own."""
    return subprocess.run([sys.executable, "-m", "edge.cli", "check-config", str(config)],
                          capture_output=True, text=True, timeout=60, cwd=REPO)


def test_edge_check_config_prints_the_rule_options_and_checks_this_kernel(tmp_path: Path) -> None:
    result = check_config(_station_toml(tmp_path, "936"))
    assert result.returncode == 0, result.stderr
    assert f"--options={vfat_mount_options(936)}" in result.stdout
    expected = nls_problem(936)  # this machine's kernel, read the same way
    if expected is None:
        assert "warning" not in result.stderr
    else:
        assert f"warning: {expected}" in result.stderr and "nls_cp936" in result.stderr

    bad = check_config(_station_toml(tmp_path, "935"))
    assert bad.returncode == 78 and "vfat_codepage" in bad.stderr, bad.stderr


def _vfat_mount(super_options: bytes) -> tuple[str, str]:
    line = (b"301 28 8:17 / /media/evidence-edge/pci-0000_00_14_0-usb-0_1_3_1_0-scsi-0_0_0_0-part1 "
            b"rw,nosuid,nodev,noexec,relatime shared:180 - vfat /dev/sdb1 " + super_options + b"\n")
    (entry,) = parse_mountinfo(line).entries
    return entry.fs_type, entry.super_options


def test_a_volume_mounted_with_another_code_page_is_named() -> None:
    cp437 = _vfat_mount(b"rw,uid=998,gid=998,fmask=0177,dmask=0077,codepage=437,iocharset=utf8,tz=UTC,flush")
    cp936 = _vfat_mount(b"rw,uid=998,gid=998,fmask=0177,dmask=0077,codepage=936,iocharset=utf8,tz=UTC,flush")
    problem = codepage_problem(*cp437, 936)
    assert problem is not None and "codepage=437" in problem and vfat_mount_options(936) in problem
    assert codepage_problem(*cp936, 936) is None  # the control
    assert codepage_problem(*cp437, None) is None  # nothing configured: the kernel's default is fine
    assert codepage_problem("exfat", "rw,iocharset=utf8", 936) is None  # exFAT names are UTF-16
