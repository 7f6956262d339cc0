"""Fault specs, the token bucket, and the filesystem operations called directly (no FUSE needed)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from simulators.recorder import faultfs
from simulators.recorder.faultfs import GROW_BYTES, FaultFS, TokenBucket, VolumeFaults, VolumeFaultsError

ALL = VolumeFaults(read_error=("*.MP4", 1048576), bit_flip=("DCIM/*/A*.MP4", 4096),
                   unplug_after_bytes=5_000_000, grow="*_0003.MP4", vanish="*.JPG", ready_delay_ms=250)


def test_cli_string_and_args_round_trip() -> None:
    text = ALL.to_cli_string()
    assert text == ("read_error=*.MP4@1048576,bit_flip=DCIM/*/A*.MP4@4096,unplug_after_bytes=5000000,"
                    "grow=*_0003.MP4,vanish=*.JPG,ready_delay_ms=250")
    assert VolumeFaults.from_cli_string(text) == ALL
    assert VolumeFaults.from_args(ALL.to_args()) == ALL
    assert VolumeFaults().to_args() == [] and not VolumeFaults().any and ALL.any
    assert VolumeFaults.from_cli_string(" unplug-after-bytes = 10 , ") == VolumeFaults(unplug_after_bytes=10)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("read_error=*.MP4", "GLOB@OFFSET"),
        ("read_error=*.MP4@-5", "GLOB@OFFSET"),
        ("read_error=*.MP4@0x10", "GLOB@OFFSET"),
        ("read_error=@10", "glob"),
        ("unplug_after_bytes=lots", "decimal"),
        ("melt=*.MP4", "unknown name"),
        ("grow", "NAME=VALUE"),
        ("grow=a,grow=b", "twice"),
        ("vanish=", "glob"),
        ("ready_delay_ms=soon", "decimal"),
        ("ready_delay_ms=86400000", "<= 60000"),
    ],
)
def test_cli_string_errors(text: str, message: str) -> None:
    with pytest.raises(VolumeFaultsError, match=message):
        VolumeFaults.from_cli_string(text)


def test_direct_construction_validated() -> None:
    with pytest.raises(VolumeFaultsError):
        VolumeFaults(read_error=("a,b", 1))
    with pytest.raises(VolumeFaultsError):
        VolumeFaults(bit_flip=("*", -1))
    with pytest.raises(VolumeFaultsError):
        VolumeFaults(unplug_after_bytes=True)
    with pytest.raises(VolumeFaultsError):
        VolumeFaults(ready_delay_ms=-1)
    with pytest.raises(VolumeFaultsError):
        VolumeFaults.from_args(["--faults", "grow=x", "--extra"])


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_token_bucket_paces_to_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1_000_000, burst_bytes=100_000, clock=clock, sleep=clock.sleep)
    for _ in range(10):
        bucket.acquire(200_000)
    # 2 MB at 1 MB/s, less the one burst allowed up front.
    assert sum(clock.slept) == pytest.approx(1.9)
    clock.now += 60  # idle time does not bank more than one burst
    clock.slept.clear()
    bucket.acquire(1_100_000)
    assert sum(clock.slept) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        TokenBucket(0)


@pytest.fixture
def backing(tmp_path: Path) -> Path:
    media = tmp_path / "vol" / "DCIM" / "100MEDIA"
    media.mkdir(parents=True)
    (media / "A_0001.MP4").write_bytes(bytes(range(256)) * 8192)  # 2 MiB
    (media / "B_0003.MP4").write_bytes(b"b" * 10_000)
    (tmp_path / "vol" / "P.JPG").write_bytes(b"j" * 5000)
    return tmp_path / "vol"


def read_all(fs: FaultFS, path: str, chunk: int = 131072) -> bytes:
    fh = fs.open(path, os.O_RDONLY)
    try:
        out = bytearray()
        while data := fs.read(path, chunk, len(out), fh):
            out += data
        return bytes(out)
    finally:
        fs.release(path, fh)


def test_passthrough(backing: Path) -> None:
    fs = FaultFS(backing)
    assert fs.readdir("/", 0) == [".", "..", "DCIM", "P.JPG"]
    assert fs.getattr("/DCIM/100MEDIA/A_0001.MP4")["st_size"] == 2 * 1024 * 1024
    assert read_all(fs, "/DCIM/100MEDIA/A_0001.MP4") == (backing / "DCIM/100MEDIA/A_0001.MP4").read_bytes()
    assert fs.statfs("/")["f_bsize"] > 0
    assert fs.bytes_delivered == 2 * 1024 * 1024


@pytest.mark.parametrize("op", ["create", "write", "truncate", "mkdir", "rmdir", "chmod", "chown", "utimens",
                                "mknod", "setxattr", "removexattr", "rename", "symlink", "link"])
def test_changes_other_than_unlink_refused(backing: Path, op: str) -> None:
    fs = FaultFS(backing)
    second: object = "/Q.JPG" if op in ("rename", "symlink", "link") else 0
    with pytest.raises(OSError) as info:
        getattr(fs, op)("/P.JPG", second)
    assert info.value.errno == errno.EROFS


@pytest.mark.parametrize("flags",
                         [os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC, os.O_RDONLY | os.O_APPEND])
def test_open_for_writing_refused(backing: Path, flags: int) -> None:
    with pytest.raises(OSError) as info:
        FaultFS(backing).open("/P.JPG", flags)
    assert info.value.errno == errno.EROFS


def test_unlink_and_traversal(backing: Path) -> None:
    fs = FaultFS(backing)
    fs.unlink("/P.JPG")
    assert not (backing / "P.JPG").exists()
    with pytest.raises(OSError) as info:
        fs.getattr("/../etc/passwd")
    assert info.value.errno == errno.EINVAL


def test_read_error_only_where_it_is(backing: Path) -> None:
    fs = FaultFS(backing, VolumeFaults(read_error=("A_*.MP4", 1048576)))
    path = "/DCIM/100MEDIA/A_0001.MP4"
    fh = fs.open(path, os.O_RDONLY)
    assert len(fs.read(path, 1048576, 0, fh)) == 1048576
    for offset, size in ((1048576, 1), (1048575, 2), (1000000, 131072)):
        with pytest.raises(OSError) as info:
            fs.read(path, size, offset, fh)
        assert info.value.errno == errno.EIO
    assert len(fs.read(path, 4096, 1048577, fh)) == 4096
    assert read_all(fs, "/DCIM/100MEDIA/B_0003.MP4") == b"b" * 10_000  # other files untouched


def test_bit_flip_once(backing: Path) -> None:
    fs = FaultFS(backing, VolumeFaults(bit_flip=("DCIM/100MEDIA/A_*", 5000)))
    truth = (backing / "DCIM/100MEDIA/A_0001.MP4").read_bytes()
    first = read_all(fs, "/DCIM/100MEDIA/A_0001.MP4")
    diff = [i for i, (x, y) in enumerate(zip(first, truth, strict=True)) if x != y]
    assert diff == [5000] and bin(first[5000] ^ truth[5000]).count("1") == 1
    assert read_all(fs, "/DCIM/100MEDIA/A_0001.MP4") == truth


def test_unplug_after_bytes(backing: Path, tmp_path: Path) -> None:
    marker = tmp_path / "state" / "UNPLUGGED"
    calls: list[str] = []
    fs = FaultFS(backing, VolumeFaults(unplug_after_bytes=300_000), unplug_marker=marker,
                 on_unplug=lambda: calls.append("unplug"))
    path = "/DCIM/100MEDIA/A_0001.MP4"
    fh = fs.open(path, os.O_RDONLY)
    assert len(fs.read(path, 131072, 0, fh)) == 131072
    assert len(fs.read(path, 131072, 131072, fh)) == 131072
    with pytest.raises(OSError) as info:
        fs.read(path, 131072, 262144, fh)  # would pass 300 000 bytes delivered
    assert info.value.errno == errno.EIO
    assert calls == ["unplug"] and fs.bytes_delivered == 262144
    assert json.loads(marker.read_text())["bytes_delivered"] == 262144
    for op, args in (("getattr", ("/",)), ("readdir", ("/", 0)), ("unlink", ("/P.JPG",)), ("statfs", ("/",))):
        with pytest.raises(OSError) as info:
            getattr(fs, op)(*args)
        assert info.value.errno == errno.ENODEV
    with pytest.raises(OSError):
        fs.read(path, 10, 0, fh)
    assert (backing / "P.JPG").exists()


def test_no_unplug_error_before_the_marker_is_written(
    backing: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bus, and tests, take the marker as the proof of a simulated unplug: whoever gets the first
    error of the unplug must find it written. FUSE serves requests on several threads, and getattr
    takes no lock, so a getattr arriving while the marker is being written must still be answered."""
    marker = tmp_path / "state" / "UNPLUGGED"
    answers: list[str] = []
    write_marker = faultfs._write_marker

    def marker_written_while_asked(path: Path, payload: dict[str, object]) -> None:
        try:  # what another FUSE thread would answer at this very moment
            fs.getattr("/")
            answers.append("answered")
        except OSError as exc:
            answers.append(errno.errorcode[exc.errno or 0])
        write_marker(path, payload)

    monkeypatch.setattr(faultfs, "_write_marker", marker_written_while_asked)
    fs = FaultFS(backing, VolumeFaults(unplug_after_bytes=1000), unplug_marker=marker)
    path = "/DCIM/100MEDIA/A_0001.MP4"
    with pytest.raises(OSError):
        fs.read(path, 4096, 0, fs.open(path, os.O_RDONLY))
    assert answers == ["answered"]
    assert marker.exists()
    with pytest.raises(OSError) as after:
        fs.getattr("/")
    assert after.value.errno == errno.ENODEV  # and from then on the device is gone


def test_grow_after_first_read(backing: Path) -> None:
    fs = FaultFS(backing, VolumeFaults(grow="*_0003.MP4"))
    path = "/DCIM/100MEDIA/B_0003.MP4"
    fh = fs.open(path, os.O_RDONLY)
    assert fs.read(path, 100, 0, fh) == b"b" * 100
    assert fs.getattr(path)["st_size"] == 10_000 + GROW_BYTES
    fs.read(path, 100, 0, fh)
    assert fs.getattr(path)["st_size"] == 10_000 + GROW_BYTES  # grows once


def test_vanish_after_first_read(backing: Path) -> None:
    fs = FaultFS(backing, VolumeFaults(vanish="*.JPG"))
    fh = fs.open("/P.JPG", os.O_RDONLY)
    assert fs.read("/P.JPG", 100, 0, fh) == b"j" * 100
    assert not (backing / "P.JPG").exists()
    with pytest.raises(OSError) as info:
        fs.read("/P.JPG", 100, 100, fh)
    assert info.value.errno == errno.EIO
    with pytest.raises(FileNotFoundError):
        fs.getattr("/P.JPG")
    assert "P.JPG" not in fs.readdir("/", 0)


def test_reads_are_paced_by_the_rate_limit(backing: Path) -> None:
    # The limit as the filesystem applies it to reads, on a clock the test owns: a burst at once, then
    # each read waits for its bytes at the configured rate. (A mounted volume runs this same FaultFS.)
    clock = FakeClock()
    fs = FaultFS(backing, rate_limit_bytes_per_s=1_000_000)
    assert fs.bucket is not None and fs.bucket.rate_bytes_per_s == 1_000_000
    fs.bucket = TokenBucket(1_000_000, burst_bytes=100_000, clock=clock, sleep=clock.sleep)
    data = read_all(fs, "/DCIM/100MEDIA/A_0001.MP4", chunk=100_000)
    assert data == (backing / "DCIM/100MEDIA/A_0001.MP4").read_bytes()
    assert clock.slept[0] == pytest.approx(0.1), "the first read past the burst waits for its bytes"
    # What was asked for is paced, as the kernel asks it: 22 requests of 100 000 bytes for 2 MiB (the last
    # two short and empty) at 1 MB/s, less the burst allowed up front.
    assert len(clock.slept) == 21 and sum(clock.slept) == pytest.approx((22 - 1) * 100_000 / 1_000_000)
    assert FaultFS(backing).bucket is None  # no limit, no pacing


def test_the_mounted_volume_gets_the_rate_limit(
    backing: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from simulators.recorder.volume import fuse_command

    served: dict[str, object] = {}

    def fake_serve(backing_dir: Path, mount_point: Path, faults: VolumeFaults, **options: object) -> int:
        served.update(options, faults=faults)
        return 0

    monkeypatch.setattr(faultfs, "serve", fake_serve)
    argv = fuse_command(backing, tmp_path / "m", VolumeFaults(grow="*.X"), 4_000_000, None,
                        ready_fd=7, lifeline_fd=8)
    assert argv[1:3] == ["-m", "simulators.recorder.faultfs_main"]
    assert faultfs.main(argv[3:]) == 0
    assert served["rate_limit_bytes_per_s"] == 4_000_000 and served["faults"] == VolumeFaults(grow="*.X")
    assert (served["ready_fd"], served["lifeline_fd"]) == (7, 8)
