"""Review 19: the live socket directory is checked (ours, 0700, not a symlink), its parent is not
(edge.gb28181.live `LiveStreams._bind`).

A consumer (the rooms' ffmpeg) connects by *path*, later. Whoever owns a directory above the socket
directory can rename the agent's directory away (a rename within a directory one owns needs no right on
the directory moved), make their own in its place with a socket of theirs, and every consumer that
connects afterwards records *their* PS as the channel's live video. `_bind` creates missing parents
(`mkdir(parents=True)`) and accepts any that exist, whoever owns them: `socket_dir =
/tmp/evidence-edge/live` with `/tmp/evidence-edge` made first by another local user is enough.

The attack runs as `nobody` (uid 65534) in a real subprocess; the consumer is a real Unix-socket client.
Control: the same attack against a parent the agent owns fails, and the socket stays the agent's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from edge.gb28181.live import LiveError
from tests.gb28181.media_sender import HAVE_FFMPEG
from tests.prerequisites import require

from .live_env import live_env, make_recording

NOBODY = 65534
FORGED = b"forged PS from another local user"
# As nobody: move the agent's socket directory aside, put one of ours with a listening socket in its place.
ATTACK = """
import os, socket, sys
directory, name, forged = sys.argv[1], sys.argv[2], sys.argv[3].encode()
os.rename(directory, directory + ".moved")
os.mkdir(directory, 0o755)
path = os.path.join(directory, name)
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(path)
os.chmod(path, 0o777)
server.listen(1)
print("ready", flush=True)
server.settimeout(30)
connection, _ = server.accept()
connection.sendall(forged)
connection.close()
"""


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    return make_recording(tmp_path_factory.mktemp("review19-socket"))


@pytest.fixture
def root() -> Iterator[Path]:
    require(os.geteuid() == 0, "needs root (to run the attacker as another user)")
    require(shutil.which("python3") is not None, "needs python3 for the attacker")
    path = Path(tempfile.mkdtemp(prefix="r19-", dir="/tmp"))  # short: sun_path holds 107 bytes
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def attacker(socket_dir: Path, name: str) -> subprocess.Popen[str]:
    return subprocess.Popen(["python3", "-c", ATTACK, str(socket_dir), name, FORGED.decode()],
                            user=NOBODY, group=NOBODY, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd="/")


@contextlib.asynccontextmanager
async def attack(socket_dir: Path, name: str) -> AsyncIterator[tuple[int | None, str]]:
    """The attacker, until it is ready (or failed): (its exit code, None while it listens; its stderr)."""
    process = attacker(socket_dir, name)
    try:
        assert process.stdout is not None
        line = await asyncio.to_thread(process.stdout.readline)
        if line.strip() == "ready":
            yield None, ""
        else:
            _, err = await asyncio.to_thread(process.communicate)
            yield process.returncode, err
    finally:
        if process.poll() is None:
            process.kill()
        await asyncio.to_thread(process.communicate)


async def test_review19_a_parent_of_the_socket_dir_owned_by_another_user_lets_them_feed_the_consumers(
        media: Path, root: Path) -> None:
    """MEDIUM: refuse a socket directory under a directory another user owns (or check every parent)."""
    parent = root / "evidence-edge"
    parent.mkdir(mode=0o755)
    os.chown(parent, NOBODY, NOBODY)  # made first by another local user
    socket_dir = parent / "live"
    async with live_env(media, socket_dir=socket_dir) as env:
        try:
            async with env.open() as handle:
                async with attack(socket_dir, handle.socket_path.name) as (code, err):
                    assert code is None, err
                    reader, writer = await asyncio.open_unix_connection(str(handle.socket_path))
                    async with asyncio.timeout(30):
                        data = await reader.read(4096)
                    writer.close()
                assert data != FORGED, "the consumer recorded another user's bytes as the channel's video"
        except LiveError:
            pass  # refused: the fix


async def test_review19_control_the_attack_fails_under_a_parent_the_agent_owns(
        media: Path, root: Path) -> None:
    parent = root / "evidence-edge"
    parent.mkdir(mode=0o755)
    socket_dir = parent / "live"
    async with live_env(media, socket_dir=socket_dir) as env, env.open() as handle:
        async with attack(socket_dir, handle.socket_path.name) as (code, err):
            assert code not in (None, 0) and "PermissionError" in err, err
        assert os.lstat(handle.socket_path).st_uid == os.geteuid()
