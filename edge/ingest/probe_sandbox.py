"""Run a command (ffprobe) confined by Landlock: it may read one given file and the system's programs
and libraries, and nothing else; it may write no file, open no socket (TCP, UDP or UNIX), signal no process
outside itself. Run as a script, before exec, so the agent itself is never confined:

    python -I probe_sandbox.py --read FILE -- COMMAND [ARG...]

Why Landlock: ffprobe parses hostile bytes with a large C code base, and it runs on the station beside
the signing key and the evidence store. It must not be able to read the key nor write the store. The
agent runs as `evidence-edge` without capabilities, with NoNewPrivileges and RestrictNamespaces=yes
(systemd/edge-station.service): it cannot switch to another uid (setpriv/setuid need CAP_SETUID), nor
make a user or mount namespace (unshare, bwrap). Landlock needs neither: an unprivileged process
restricts itself (with no_new_privs set), and the restriction passes to what it executes. The unit
allows its three system calls explicitly (systemd's @system-service does not hold them).

Landlock does not cover every socket: a UNIX socket named by a path (journald, the system D-Bus) and
UDP stay open to a Landlocked process. ffprobe with the file protocol needs no socket at all, so a
seccomp filter on top refuses `socket`, `socketpair` and `io_uring_setup` (io_uring can open sockets
without the socket call) with EACCES, and kills a process that calls through a foreign system-call
ABI (x32, i386), where the numbers would mean something else. The unit allows prctl (@process), so the
agent may install it; the filter only narrows what the unit's own filter already allows.

Exit status 125 and a message on stderr when the sandbox cannot be set up: the command is then not
run at all (fail closed). Standard library only: this file runs with `python -I`, importing nothing
of the project.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import struct
import sys
from collections.abc import Sequence

SANDBOX_UNAVAILABLE = 125

_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446  # the same on every architecture
_CREATE_RULESET_VERSION = 1 << 0
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 22, 2

# seccomp: (audit architecture, {call: number}) of the architectures the station ships on.
_SECCOMP_ARCH: dict[str, tuple[int, dict[str, int]]] = {
    "x86_64": (0xC000003E, {"socket": 41, "socketpair": 53, "io_uring_setup": 425}),
    "aarch64": (0xC00000B7, {"socket": 198, "socketpair": 199, "io_uring_setup": 425}),
}
_X32_SYSCALL_BIT = 0x40000000
_SECCOMP_RET_KILL_PROCESS, _SECCOMP_RET_ERRNO, _SECCOMP_RET_ALLOW = 0x80000000, 0x00050000, 0x7FFF0000
# Classic BPF opcodes: load a word at an absolute offset of struct seccomp_data, compare, return.
_BPF_LD_W_ABS, _BPF_JEQ_K, _BPF_JGE_K, _BPF_RET_K = 0x20, 0x15, 0x35, 0x06
_SECCOMP_DATA_NR, _SECCOMP_DATA_ARCH = 0, 4

# Filesystem access rights (linux/landlock.h) and the ABI version that introduced each.
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FS_RIGHTS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1  # ABI 4
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6

# What a dynamically linked program needs to start: its libraries and the loader's cache.
SYSTEM_DIRECTORIES = ("/usr", "/lib", "/lib64", "/bin", "/sbin")
SYSTEM_FILES = ("/etc/ld.so.cache",)


class SandboxError(Exception):
    """The sandbox could not be set up; nothing was run."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise SandboxError(f"{what}: {os.strerror(code)} (errno {code})")
    return result


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; raises SandboxError when Landlock is unavailable."""
    version = _libc().syscall(
        _SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION)
    )
    if version < 0:
        code = ctypes.get_errno()
        why = {
            errno.ENOSYS: "the kernel has no Landlock",
            errno.EOPNOTSUPP: "Landlock is disabled at boot",
            errno.EPERM: "a seccomp filter forbids the Landlock system calls",
        }.get(code, os.strerror(code))
        raise SandboxError(f"Landlock unavailable: {why}")
    return int(version)


def _fs_rights(abi: int) -> int:
    return _FS_RIGHTS_BY_ABI[max(v for v in _FS_RIGHTS_BY_ABI if v <= abi)]


def confine(readable_files: Sequence[str], executable: str) -> None:
    """Restrict this process (and what it executes) to reading `readable_files`, the system's
    libraries and the directory holding `executable`."""
    libc = _libc()
    abi = landlock_abi()
    handled_fs = _fs_rights(abi)
    # struct landlock_ruleset_attr grew with the ABI: pass the fields this kernel knows.
    handled_net = _NET_BIND_TCP | _NET_CONNECT_TCP  # handled and never allowed: no TCP at all
    scoped = _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL  # no abstract sockets, no signals outside
    fields = [handled_fs, handled_net, scoped][: 3 if abi >= 6 else 2 if abi >= 4 else 1]
    attr = struct.pack(f"={len(fields)}Q", *fields)
    ruleset = _check(
        libc.syscall(
            _SYS_CREATE_RULESET, ctypes.c_char_p(attr), ctypes.c_size_t(len(attr)), ctypes.c_uint32(0)
        ),
        "landlock_create_ruleset",
    )
    try:
        directories = {*SYSTEM_DIRECTORIES, os.path.dirname(os.path.realpath(executable))}
        for directory in sorted(directories):
            _allow(libc, ruleset, directory, EXECUTE | READ_FILE | READ_DIR, optional=True)
        for path in SYSTEM_FILES:
            _allow(libc, ruleset, path, READ_FILE, optional=True)
        _allow(libc, ruleset, "/dev/null", READ_FILE | WRITE_FILE, optional=True)  # shells redirect to it
        for path in readable_files:
            _allow(libc, ruleset, path, READ_FILE, optional=False)
        _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
        _check(
            libc.syscall(_SYS_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)),
            "landlock_restrict_self",
        )
    finally:
        os.close(ruleset)
    refuse_sockets()


def socket_filter(machine: str) -> bytes:
    """The classic-BPF seccomp program (struct sock_filter[]) that refuses socket creation with
    EACCES on `machine` (os.uname().machine) and kills a call through a foreign ABI."""
    try:
        audit_arch, numbers = _SECCOMP_ARCH[machine]
    except KeyError:
        raise SandboxError(f"no socket filter for architecture {machine!r}") from None
    refused = sorted(numbers.values())
    n = len(refused)
    # 0: arch; 1: foreign -> kill; 2: nr; 3: x32 -> kill; 4..4+n-1: refused -> errno; allow; errno; kill
    allow_at = 4 + n
    errno_at, kill_at = allow_at + 1, allow_at + 2
    program = [
        (_BPF_LD_W_ABS, 0, 0, _SECCOMP_DATA_ARCH),
        (_BPF_JEQ_K, 0, kill_at - 2, audit_arch),
        (_BPF_LD_W_ABS, 0, 0, _SECCOMP_DATA_NR),
        (_BPF_JGE_K, kill_at - 4, 0, _X32_SYSCALL_BIT),
        *((_BPF_JEQ_K, errno_at - (5 + i), 0, nr) for i, nr in enumerate(refused)),
        (_BPF_RET_K, 0, 0, _SECCOMP_RET_ALLOW),
        (_BPF_RET_K, 0, 0, _SECCOMP_RET_ERRNO | errno.EACCES),
        (_BPF_RET_K, 0, 0, _SECCOMP_RET_KILL_PROCESS),
    ]
    return b"".join(struct.pack("=HBBI", *instruction) for instruction in program)


def refuse_sockets(machine: str | None = None) -> None:
    """Install `socket_filter` on this process (no_new_privs must be set); raises SandboxError."""
    program = socket_filter(machine or os.uname().machine)
    buffer = ctypes.create_string_buffer(program, len(program))
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }
    fprog = struct.pack("HxxxxxxP", len(program) // 8, ctypes.addressof(buffer))
    fprog_buffer = ctypes.create_string_buffer(fprog, len(fprog))
    _check(
        _libc().prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, fprog_buffer, 0, 0),
        "prctl(PR_SET_SECCOMP)",
    )


def _allow(libc: ctypes.CDLL, ruleset: int, path: str, access: int, *, optional: bool) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        if optional:
            return
        raise SandboxError(f"{path}: no such file to allow") from None
    try:
        rule = struct.pack("=Qi", access, fd)  # struct landlock_path_beneath_attr (packed)
        _check(
            libc.syscall(_SYS_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(_RULE_PATH_BENEATH),
                         ctypes.c_char_p(rule), ctypes.c_uint32(0)),
            f"landlock_add_rule({path})",
        )
    finally:
        os.close(fd)


def main(argv: Sequence[str]) -> int:
    readable: list[str] = []
    args = list(argv)
    while args and args[0] == "--read" and len(args) >= 2:
        readable.append(args[1])
        args = args[2:]
    if not args or args[0] != "--" or len(args) < 2:
        print("usage: probe_sandbox.py [--read FILE]... -- COMMAND [ARG...]", file=sys.stderr)
        return 2
    command = args[1:]
    executable = shutil.which(command[0]) or command[0]
    try:
        confine(readable, executable)
    except (SandboxError, OSError) as exc:
        print(f"sandbox: {exc}; not running {os.path.basename(command[0])}", file=sys.stderr)
        return SANDBOX_UNAVAILABLE
    try:
        os.execv(executable, command)
    except OSError as exc:
        print(f"sandbox: cannot run {command[0]}: {exc.strerror}", file=sys.stderr)
        return 127
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
