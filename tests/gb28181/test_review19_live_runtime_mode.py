"""Review 19: a live socket directory that is the unit's runtime directory itself is silently made 0700,
which locks the operators out of the local API socket beside it (edge.gb28181.live `LiveStreams._bind`).

The unit makes /run/evidence-edge 0755 (RuntimeDirectoryMode=0755) so that the operators group reaches the
API socket (0660) in it. `[gb28181.live] socket_dir = "/run/evidence-edge"` passes validation (absolute,
short), and the first live channel opened chmods the directory to 0700: from then on `edge status` and
the operators' page fail with EACCES, with nothing in the ledger or log saying why. Refusing a directory
that is not the live sockets' own (or not changing the mode of one that exists) would not.

Real sockets: an "API" socket 0666 in a 0755 directory, and `nobody` (uid 65534) connecting to it in a
subprocess. Control: `nobody` connects before the live channel is opened.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.gb28181.live import LiveError
from tests.gb28181.media_sender import HAVE_FFMPEG
from tests.prerequisites import require

from .live_env import live_env, make_recording

NOBODY = 65534
CONNECT = """
import socket, sys
client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    client.connect(sys.argv[1])
except OSError as exc:
    print(exc.strerror)
    sys.exit(1)
print("connected")
"""


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    return make_recording(tmp_path_factory.mktemp("review19-mode"))


@pytest.fixture
def runtime() -> Iterator[Path]:
    require(os.geteuid() == 0, "needs root (to connect as another user)")
    require(shutil.which("python3") is not None, "needs python3")
    root = Path(tempfile.mkdtemp(prefix="r19m-", dir="/tmp"))
    os.chmod(root, 0o755)
    directory = root / "run"
    directory.mkdir()
    os.chmod(directory, 0o755)  # RuntimeDirectoryMode=0755
    try:
        yield directory
    finally:
        shutil.rmtree(root, ignore_errors=True)


def nobody_connects(path: Path) -> str:
    done = subprocess.run(["python3", "-c", CONNECT, str(path)], user=NOBODY, group=NOBODY,
                          capture_output=True, text=True, timeout=60, cwd="/")
    return done.stdout.strip() or done.stderr.strip()


async def test_review19_the_runtime_directory_as_socket_dir_locks_operators_out_of_the_api(
        media: Path, runtime: Path) -> None:
    """LOW: opening a live channel changes the mode of a directory that is not the live sockets' own."""
    api = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        api.bind(str(runtime / "station.sock"))
        os.chmod(runtime / "station.sock", 0o666)
        api.listen(4)
        assert nobody_connects(runtime / "station.sock") == "connected"  # the control
        async with live_env(media, socket_dir=runtime) as env:
            try:
                async with env.open():
                    after = nobody_connects(runtime / "station.sock")
            except LiveError as exc:  # refused (the fix): the directory is not the live sockets' own
                assert "open to other users" in str(exc), exc
                after = nobody_connects(runtime / "station.sock")
        assert after == "connected", f"an operator reaching the API socket now gets: {after}"
    finally:
        api.close()
