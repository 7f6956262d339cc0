"""The service stack works under MemoryDenyWriteExecute=yes (as edge-station.service sets it).

systemd implements the option as a seccomp filter; the probe below installs the same rules in a child
Python process (x86-64 system call numbers) and then does what the agent does: ctypes callbacks (libffi
closures, which is what usually breaks), pyusb's libusb backend, signatures with cryptography, and an
ffmpeg encode (children inherit the filter).
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
import textwrap

from tests.prerequisites import prerequisite_met, require, requires

pytestmark = requires(
    sys.platform == "linux" and platform.machine() == "x86_64",
    "the probe's seccomp filter uses x86-64 system call numbers",
)

_PROBE = textwrap.dedent(
    r"""
    import ctypes, mmap, struct, sys

    # Rules of systemd's MemoryDenyWriteExecute=yes (src/shared/seccomp-util.c), as EPERM:
    #   mmap with PROT_WRITE|PROT_EXEC; mprotect/pkey_mprotect with PROT_EXEC; shmat with SHM_EXEC.
    LD_W_ABS, JEQ_K, AND_K, RET_K = 0x20, 0x15, 0x54, 0x06
    ALLOW, EPERM = 0x7FFF0000, 0x00050000 | 1
    NR_MMAP, NR_MPROTECT, NR_SHMAT, NR_PKEY_MPROTECT = 9, 10, 30, 329
    ARG2 = 16 + 2 * 8  # seccomp_data.args[2], low 32 bits (little endian)
    program = [
        (LD_W_ABS, 0, 0, 0),                 # 0: A = syscall nr
        (JEQ_K, 4, 0, NR_MMAP),              # 1: -> 6
        (JEQ_K, 6, 0, NR_MPROTECT),          # 2: -> 9
        (JEQ_K, 5, 0, NR_PKEY_MPROTECT),     # 3: -> 9
        (JEQ_K, 7, 0, NR_SHMAT),             # 4: -> 12
        (RET_K, 0, 0, ALLOW),                # 5
        (LD_W_ABS, 0, 0, ARG2),              # 6: mmap prot
        (AND_K, 0, 0, 0x6),                  # 7
        (JEQ_K, 7, 8, 0x6),                  # 8: W|X -> 16 (EPERM) else -> 17
        (LD_W_ABS, 0, 0, ARG2),              # 9: mprotect prot
        (AND_K, 0, 0, 0x4),                  # 10
        (JEQ_K, 4, 5, 0x4),                  # 11: X -> 16 else -> 17
        (LD_W_ABS, 0, 0, ARG2),              # 12: shmat flags
        (AND_K, 0, 0, 0o100000),             # 13: SHM_EXEC
        (JEQ_K, 1, 2, 0o100000),             # 14: -> 16 else -> 17
        (RET_K, 0, 0, ALLOW),                # 15 (unused)
        (RET_K, 0, 0, EPERM),                # 16
        (RET_K, 0, 0, ALLOW),                # 17
    ]
    code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *op) for op in program))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    libc = ctypes.CDLL(None, use_errno=True)
    fprog = SockFprog(len(program), ctypes.addressof(code))
    PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or libc.prctl(
        PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0
    ) != 0:
        print("SKIP: cannot install a seccomp filter here, errno", ctypes.get_errno())
        sys.exit(77)

    # The filter is really there: W|X mappings and making pages executable are refused.
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        sys.exit("filter not active: W|X mmap succeeded")
    except PermissionError:
        pass
    libc.mmap.restype = ctypes.c_void_p
    c_int = ctypes.c_int
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, c_int, c_int, c_int, ctypes.c_long]
    rw, private_anon = mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    page = libc.mmap(None, 4096, rw, private_anon, -1, 0)
    if libc.mprotect(ctypes.c_void_p(page), 4096, mmap.PROT_READ | mmap.PROT_EXEC) == 0:
        sys.exit("filter not active: mprotect(PROT_EXEC) succeeded")

    # ctypes callbacks need executable trampolines (libffi closures): libusb hot-plug would use them.
    compare = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int))
    values = (ctypes.c_int * 5)(5, 1, 4, 2, 3)
    libc.qsort(values, 5, ctypes.sizeof(ctypes.c_int), compare(lambda a, b: a[0] - b[0]))
    assert list(values) == [1, 2, 3, 4, 5], list(values)

    import usb.backend.libusb1
    import usb.core
    backend = usb.backend.libusb1.get_backend()
    if backend is not None:
        list(usb.core.find(find_all=True, backend=backend))

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    key = Ed25519PrivateKey.generate()
    key.public_key().verify(key.sign(b"manifest"), b"manifest")

    import hashlib, sqlite3, ssl, asyncio, aiohttp, pydantic, serial  # noqa: F401
    sqlite3.connect(":memory:").execute("create table t(x)")

    if len(sys.argv) > 1:
        import subprocess
        done = subprocess.run(
            [sys.argv[1], "-v", "error", "-f", "lavfi", "-i", "testsrc=d=0.2:s=160x120", "-c:v", sys.argv[2],
             "-f", "null", "-"],
            capture_output=True, text=True,
        )
        if done.returncode != 0:
            sys.exit("ffmpeg under W^X failed: " + done.stderr[-500:])
    print("OK")
    """
)


def test_service_stack_runs_under_memory_deny_write_execute() -> None:
    ffmpeg = shutil.which("ffmpeg")
    argv = [sys.executable, "-c", _PROBE]
    if prerequisite_met(ffmpeg is not None, "the encode under W^X needs ffmpeg (make setup installs it)"):
        assert ffmpeg is not None
        encoders = subprocess.run(
            [ffmpeg, "-hide_banner", "-encoders"], capture_output=True, text=True
        ).stdout
        argv += [ffmpeg, "libx264" if " libx264 " in encoders else "mpeg4"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    require(done.returncode != 77, done.stdout.strip())
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith("OK")
