"""How recorder volumes formatted FAT32 are mounted, and whether this kernel can mount them that way.

Recorders sold here write 8.3 short names in GBK (code page 936). The kernel decodes short names with
the mount's ``codepage=`` (default: its CONFIG_FAT_DEFAULT_CODEPAGE, 437), through the module
``nls_cp<N>``. Mounting with ``codepage=936`` on a kernel without ``nls_cp936`` fails, and then no
recorder is offloaded at all, so the code page is not a default: ``[usb] vfat_codepage`` sets it, and the
station checks that the kernel has the module it needs (:func:`nls_problem`, run by ``edge check-config``
and at start). The options string the udev rule must carry is :func:`vfat_mount_options`; what the
kernel actually mounted with is read back from the mount table (:func:`codepage_problem`).

Long (VFAT) names are UTF-16 on the disk and need no code page; ``iocharset=utf8`` gives them to us as
UTF-8 either way.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# The options of systemd/99-evidence-edge.rules for vfat volumes, without a code page.
VFAT_BASE_OPTIONS = (
    "nosuid", "nodev", "noexec", "uid=evidence-edge", "gid=evidence-edge", "fmask=0177", "dmask=0077",
    "iocharset=utf8", "tz=UTC", "flush",
)
SYS_MODULE = Path("/sys/module")
_CODEPAGE = re.compile(r"(?:^|,)codepage=([0-9]{1,5})(?:,|$)")


def vfat_mount_options(codepage: int | None) -> str:
    """The `--options=` of the udev rule's systemd-mount for a vfat volume."""
    options = list(VFAT_BASE_OPTIONS)
    if codepage is not None:
        options.insert(options.index("iocharset=utf8"), f"codepage={codepage}")
    return ",".join(options)


def nls_module(codepage: int) -> str:
    return f"nls_cp{codepage}"


def _modules_dir() -> Path:
    return Path("/lib/modules") / os.uname().release


def module_available(
    name: str, *, sys_module: Path = SYS_MODULE, modules_dir: Path | None = None
) -> str | None:
    """How the kernel has module `name` (loaded, built in, installed), or None when it has not."""
    if (sys_module / name).is_dir():
        return "loaded"
    root = modules_dir if modules_dir is not None else _modules_dir()
    wanted = re.compile(rf"(?:^|/){re.escape(name)}\.ko(?:\.(?:xz|gz|zst))?$")
    for listing, how in (("modules.builtin", "built in"), ("modules.dep", "installed")):
        try:
            with (root / listing).open(encoding="utf-8", errors="replace") as lines:
                if any(wanted.search(line.split(":", 1)[0].strip()) for line in lines):
                    return how
        except OSError:
            continue
    return None


def nls_problem(
    codepage: int | None, *, sys_module: Path = SYS_MODULE, modules_dir: Path | None = None
) -> str | None:
    """Why vfat volumes cannot be mounted with `codepage` on this kernel, or None (also for no code
    page: the kernel's default needs nothing configured here)."""
    if codepage is None:
        return None
    missing = [
        name for name in ("vfat", nls_module(codepage))
        if module_available(name, sys_module=sys_module, modules_dir=modules_dir) is None
    ]
    if not missing:
        return None
    where = modules_dir if modules_dir is not None else _modules_dir()
    return (f"[usb] vfat_codepage = {codepage} needs the kernel modules {', '.join(missing)}, which are "
            f"neither loaded ({sys_module}) nor built in or installed ({where}): mounts with "
            f"codepage={codepage} would fail and no recorder would be offloaded (install the kernel's "
            "modules package, or unset vfat_codepage)")


def mounted_codepage(super_options: str) -> int | None:
    """The code page a vfat mount uses, from its super options in the mount table (None: not shown)."""
    found = _CODEPAGE.search(super_options)
    return None if found is None else int(found[1])


def codepage_problem(fs_type: str, super_options: str, configured: int | None) -> str | None:
    """Why a mounted volume decodes short names otherwise than configured, or None."""
    if fs_type != "vfat" or configured is None:
        return None
    mounted = mounted_codepage(super_options)
    if mounted == configured:
        return None
    shown = "the kernel's default code page" if mounted is None else f"codepage={mounted}"
    return (f"vfat volume mounted with {shown}, but [usb] vfat_codepage = {configured}: its 8.3 short "
            f"names are misread; the udev rule must mount with {vfat_mount_options(configured)}")
