"""The mount reaper process (see `simulators.recorder.mounts`): reads announcements on stdin until EOF,
then lazily unmounts every bind mount still announced whose mount is still the announced one.

`python -m simulators.recorder.mount_reaper` (started by the first bind mount of a simulator process).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Iterable
from pathlib import Path

from simulators.recorder.mounts import mount_at, umount_syscall

log = logging.getLogger("simulators.recorder.mount_reaper")


def parse_announcements(lines: Iterable[bytes]) -> dict[Path, tuple[int, int, int]]:
    """What is still mounted after these announcements: path -> (mount id, major, minor).

    A malformed line is skipped: the reaper must outlive anything its parent writes.
    """
    live: dict[Path, tuple[int, int, int]] = {}
    for line in lines:
        fields = line.split()
        try:
            path = Path(os.fsdecode(bytes.fromhex(fields[1].decode("ascii"))))
            if fields[0] == b"+" and len(fields) == 5:
                mount_id, major, minor = (int(f) for f in fields[2:5])
                live[path] = (mount_id, major, minor)
            elif fields[0] == b"-" and len(fields) == 2:
                live.pop(path, None)
        except (IndexError, ValueError, UnicodeDecodeError):
            continue
    return live


def reap(live: dict[Path, tuple[int, int, int]]) -> None:
    for path, (mount_id, major, minor) in live.items():
        entry = mount_at(path)
        if entry is None or (entry.mount_id, entry.major, entry.minor) != (mount_id, major, minor):
            continue  # gone already, or someone else's mount now
        try:
            umount_syscall(path, lazy=True)
            log.warning("unmounted %s, left behind by a simulator that died", path)
        except OSError as exc:
            log.error("cannot unmount %s: %s", path, exc)


def main() -> int:
    # Our parent's death is what we wait for; a Ctrl-C meant for it is not for us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="mount-reaper: %(message)s")
    reap(parse_announcements(sys.stdin.buffer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
