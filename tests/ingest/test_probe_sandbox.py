"""ffprobe on hostile bytes: confined (no key, no store writes, no socket), whitelisted demuxers, bounded
output, a deadline; and the confinement works under the shipped unit's own seccomp filter."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.ingest import probe_sandbox
from edge.ingest.mediainfo import MAX_PROBE_OUTPUT, PROBE_ENV, media_facts, probe_argv, sandboxed_argv
from edge.ingest.store import StationStore
from edge.runtime.bounded import run_bounded
from tests.prerequisites import require
from tests.service.test_clock_under_unit_filter import UNIT, unit_filter

ROOT = Path(__file__).resolve().parents[2]


def need(tool: str) -> str:
    path = shutil.which(tool)
    require(path is not None, f"{tool} is not installed (make system installs it)")
    assert path is not None
    return path


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StationStore]:
    s = StationStore(tmp_path / "store", "TEST-STATION")
    yield s
    s.close()


@pytest.fixture
def part(store: StationStore, tmp_path: Path) -> Path:
    """A WAV being acquired, where the pipeline keeps it: the store's tmp/."""
    need("ffmpeg")
    target = store.layout.tmp / "0b7f6c1e-2f0e-4d0c-9a39-4b8f0f1f2a11.part"
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-nostdin", "-v", "error", "-f", "lavfi",
         "-i", "sine=sample_rate=8000:duration=1", "-c:a", "pcm_alaw", "-f", "wav", str(target)],
        check=True, timeout=60,
    )  # fmt: skip
    return target


def sandboxed(readable: Path, command: list[str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(sandboxed_argv(readable, command), capture_output=True, timeout=60, env=PROBE_ENV)


def test_the_probe_cannot_read_the_station_key_but_a_control_can(store: StationStore, part: Path) -> None:
    key = store.layout.private_key
    confined = sandboxed(part, ["cat", str(key)])
    assert confined.returncode != 0 and confined.stdout == b""
    assert b"Permission denied" in confined.stderr
    control = subprocess.run(["cat", str(key)], capture_output=True, timeout=60)
    assert control.returncode == 0 and control.stdout == key.read_bytes()
    # ffprobe itself, asked to open the key: refused by the sandbox (not a format error).
    ffprobe = need("ffprobe")
    refused = sandboxed(part, [ffprobe, "-v", "error", f"file:{key}"])
    assert b"Permission denied" in refused.stderr
    tried = subprocess.run([ffprobe, "-v", "error", f"file:{key}"], capture_output=True, timeout=60)
    assert b"Permission denied" not in tried.stderr, "outside the sandbox ffprobe opens the key"


def test_the_probe_cannot_write_into_the_store_but_a_control_can(store: StationStore, part: Path) -> None:
    planted = store.layout.tmp / "planted"
    before = part.read_bytes()
    confined = sandboxed(part, ["sh", "-c", f"echo x > '{planted}'; echo y >> '{part}'; : > '{part}'"])
    assert confined.returncode != 0 and b"Permission denied" in confined.stderr
    assert not planted.exists() and part.read_bytes() == before, "nothing planted, nothing changed"
    control = subprocess.run(["sh", "-c", f"echo x > '{planted}'"], capture_output=True, timeout=60)
    assert control.returncode == 0 and planted.read_bytes() == b"x\n"


def test_the_probe_reads_the_one_file_it_is_given(part: Path) -> None:
    facts = media_facts(part)
    assert facts == {
        "container": "wav",
        "duration_ms": 1000,
        "streams": [{"type": "audio", "codec": "pcm_alaw", "sample_rate": 8000, "channels": 1}],
        "parser": "ffprobe",
    }


def test_without_landlock_nothing_is_run(part: Path, tmp_path: Path) -> None:
    """Fail closed: where the sandbox cannot be set up (here a seccomp filter refuses the Landlock
    calls, as systemd's @system-service alone would), the command never runs."""
    require(_has_module("pyseccomp"), "pyseccomp is not installed; pip install -e '.[test]'")
    witness = tmp_path / "ran"
    script = textwrap.dedent(
        f"""
        import errno, os, sys
        import pyseccomp as seccomp
        flt = seccomp.SyscallFilter(seccomp.ALLOW)
        for name in ("landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self"):
            flt.add_rule(seccomp.ERRNO(errno.EPERM), name)
        flt.load()
        argv = {sandboxed_argv(part, ["touch", str(witness)])!r}
        os.execv(argv[0], argv)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert done.returncode == probe_sandbox.SANDBOX_UNAVAILABLE, done.stderr
    assert b"a seccomp filter forbids the Landlock system calls" in done.stderr
    assert not witness.exists()
    control = subprocess.run(["touch", str(witness)], timeout=60)
    assert control.returncode == 0 and witness.exists()


def _has_module(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


# -- bounds ----------------------------------------------------------------------------------------


def wav_with_comment(path: Path, comment_bytes: int) -> None:
    """A valid WAV whose LIST/INFO chunk carries an `ICMT` comment of `comment_bytes`: ffprobe prints
    it among the format's tags."""
    samples = bytes(800)
    fmt = b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, 8000, 8000, 1, 8)
    comment = b"A" * comment_bytes + b"\0"
    pad = b"\0" if len(comment) & 1 else b""
    info = b"INFO" + b"ICMT" + struct.pack("<I", len(comment)) + comment + pad
    data = b"data" + struct.pack("<I", len(samples)) + samples
    body = b"WAVE" + fmt + b"LIST" + struct.pack("<I", len(info)) + info + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def test_a_report_longer_than_the_bound_is_cut_and_the_probe_killed(tmp_path: Path) -> None:
    need("ffprobe")
    small, huge = tmp_path / "small.part", tmp_path / "huge.part"
    wav_with_comment(small, 1000)
    wav_with_comment(huge, MAX_PROBE_OUTPUT + (1 << 20))
    assert media_facts(small)["container"] == "wav", "control: the same file with a short comment reads"
    facts = media_facts(huge)
    assert facts == {"error": f"ffprobe printed more than {MAX_PROBE_OUTPUT} bytes and was killed"}


def test_the_bounded_run_keeps_at_most_its_bound_of_endless_output() -> None:
    run = run_bounded([need("yes")], timeout_s=30, max_output_bytes=100_000)
    assert run.output_exceeded and run.returncode is None
    assert not run.timed_out, "killed at the bound, not at the deadline"
    assert len(run.stdout) == 100_000


def hanging_probe(directory: Path) -> Path:
    """An `ffprobe` that starts a child and never answers."""
    script = directory / "ffprobe"
    script.write_text("#!/bin/sh\nsleep 300 &\necho $!\nwait\n")
    script.chmod(0o755)
    return script


def test_a_hanging_probe_is_killed_at_the_deadline_with_what_it_started(
    part: Path, tmp_path: Path
) -> None:
    fake = hanging_probe(tmp_path)
    run = run_bounded(
        sandboxed_argv(part, [str(fake)]), timeout_s=1.0, max_output_bytes=1000, env=PROBE_ENV
    )
    assert run.timed_out and run.returncode is None and not run.output_exceeded
    child = int(run.stdout.split()[0])
    assert _gone_or_zombie(child), "the probe's own child was killed with it"
    assert media_facts(part, ffprobe=str(fake), timeout_s=1.0) == {
        "error": "ffprobe did not finish within 1 s and was killed"
    }
    control = run_bounded(sandboxed_argv(part, ["true"]), timeout_s=10, max_output_bytes=1000, env=PROBE_ENV)
    assert control.returncode == 0 and not control.timed_out


def _gone_or_zombie(pid: int) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.01)
    return False


# -- demuxers --------------------------------------------------------------------------------------


def test_a_demuxer_off_the_whitelist_is_refused(tmp_path: Path) -> None:
    need("ffmpeg")
    ogg = tmp_path / "voice.part"
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "sine=duration=1",
         "-c:a", "flac", "-f", "ogg", str(ogg)],
        check=True, timeout=60,
    )  # fmt: skip
    assert media_facts(ogg) == {"error": "ffprobe: the ogg container is not among those read for evidence"}
    # Control: the same command line without the whitelist reads the file.
    argv = probe_argv(ogg)
    at = argv.index("-format_whitelist")
    del argv[at : at + 2]
    control = subprocess.run(argv, capture_output=True, timeout=60)
    assert control.returncode == 0 and json.loads(control.stdout)["format"]["format_name"] == "ogg"


def test_a_playlist_naming_another_file_is_refused(store: StationStore, tmp_path: Path) -> None:
    """The classic: an HLS playlist that makes ffprobe open another file (here another item's stored
    MPEG-TS; it could be anything the agent can read). Without the whitelist ffprobe follows it and
    reports that file's streams as this one's."""
    need("ffmpeg")
    other = store.layout.items / "other-item.ts"
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-nostdin", "-v", "error", "-f", "lavfi",
         "-i", "sine=sample_rate=8000:duration=1", "-c:a", "mp2", "-f", "mpegts", str(other)],
        check=True, timeout=60,
    )  # fmt: skip
    playlist = store.layout.tmp / "playlist.part"
    playlist.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\n{other}\n#EXT-X-ENDLIST\n")
    assert media_facts(playlist) == {
        "error": "ffprobe: the hls container is not among those read for evidence"
    }
    # Control: ffprobe as it was called before follows the playlist into the other file.
    followed = subprocess.run(
        [need("ffprobe"), "-v", "error", "-show_streams", "-of", "json", "--", str(playlist)],
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert json.loads(followed.stdout)["streams"][0]["codec_name"] == "mp2"


# -- under the shipped unit ------------------------------------------------------------------------

UNDER_FILTER = textwrap.dedent(
    r"""
    import errno, json, sys
    from pathlib import Path
    import pyseccomp as seccomp

    policy = json.loads(sys.argv[1])
    main = seccomp.SyscallFilter(seccomp.ERRNO(getattr(errno, policy["errno"])))
    for name in policy["allow"]:
        try:
            main.add_rule(seccomp.ALLOW, name)
        except (OSError, ValueError):
            pass  # a call this architecture does not have
    main.load()

    from edge.ingest.mediainfo import media_facts
    print(json.dumps(media_facts(Path(sys.argv[2]))))
    """
)


def run_under(policy: dict[str, Any], part: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", UNDER_FILTER, json.dumps(policy), str(part)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_the_sandbox_works_under_the_shipped_units_seccomp_filter(part: Path) -> None:
    require(_has_module("pyseccomp"), "pyseccomp is not installed; pip install -e '.[test]'")
    need("systemd-analyze")
    policy = unit_filter(UNIT)
    assert policy["allow"] is not None and {"landlock_create_ruleset", "landlock_restrict_self"} <= set(
        policy["allow"]
    ), "the unit allows the Landlock calls"
    assert run_under(policy, part)["container"] == "wav", "ffprobe runs, confined, under the unit's filter"
    # Control: the same filter without the unit's Landlock line (systemd's @system-service alone).
    without = {**policy, "allow": [n for n in policy["allow"] if not n.startswith("landlock_")]}
    refused = run_under(without, part)
    assert refused["error"].startswith("ffprobe not run, no sandbox"), refused


SOCKET_ATTEMPTS = textwrap.dedent(
    """
    import json, socket, sys
    tried = {}
    for name, family, kind, address in (
        ("unix", socket.AF_UNIX, socket.SOCK_STREAM, sys.argv[1]),
        ("udp", socket.AF_INET, socket.SOCK_DGRAM, ("127.0.0.1", int(sys.argv[2]))),
    ):
        try:
            with socket.socket(family, kind) as s:
                s.connect(address)
                s.send(b"from the probe")
            tried[name] = "sent"
        except OSError as exc:
            tried[name] = exc.strerror
    try:
        socket.socketpair()
        tried["socketpair"] = "made"
    except OSError as exc:
        tried["socketpair"] = exc.strerror
    print(json.dumps(tried))
    """
)


def test_the_probe_opens_no_socket_of_any_kind_but_a_control_can(part: Path, tmp_path: Path) -> None:
    """Landlock leaves path-named UNIX sockets (journald, D-Bus) and UDP open; the sandbox's seccomp
    layer refuses socket creation itself. The control runs the same script outside the sandbox."""
    import socket

    path = str(tmp_path / "listener.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener, socket.socket(
        socket.AF_INET, socket.SOCK_DGRAM
    ) as udp:
        listener.bind(path)
        listener.listen(1)
        udp.bind(("127.0.0.1", 0))
        argv = ["python3", "-I", "-S", "-c", SOCKET_ATTEMPTS, path, str(udp.getsockname()[1])]
        confined = sandboxed(part, argv)
        assert confined.returncode == 0, confined.stderr
        assert json.loads(confined.stdout) == {
            "unix": "Permission denied",
            "udp": "Permission denied",
            "socketpair": "Permission denied",
        }
        control = subprocess.run(argv, capture_output=True, timeout=60)
        assert json.loads(control.stdout) == {"unix": "sent", "udp": "sent", "socketpair": "made"}
        udp.settimeout(10)
        assert udp.recv(64) == b"from the probe", "the control's datagram arrived"


def test_the_socket_filter_is_refused_for_an_architecture_it_does_not_know() -> None:
    """Fail closed: system-call numbers differ by architecture; an unknown one gets no guessed filter
    (and so no probe run), while the shipped ones get a program."""
    with pytest.raises(probe_sandbox.SandboxError, match="riscv64"):
        probe_sandbox.socket_filter("riscv64")
    for machine in ("x86_64", "aarch64"):
        program = probe_sandbox.socket_filter(machine)
        assert len(program) % 8 == 0 and len(program) // 8 == 10
