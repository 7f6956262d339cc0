"""What tests of real mounts need from the machine (through tests/prerequisites.py: skipped on a
developer's machine that lacks it, a failure under CI).

Volumes are real mounts: bind mounts as root, FUSE otherwise (see simulators/recorder/volume.py).
"""

from __future__ import annotations

import os

from simulators.recorder.volume import VolumeMountError, check_fuse_available
from tests.prerequisites import require


def fuse_problem() -> str | None:
    try:
        check_fuse_available()
    except VolumeMountError as exc:
        return str(exc)
    return None


def require_fuse() -> None:
    problem = fuse_problem()
    require(problem is None, problem or "")


def require_bind_mounts() -> None:
    require(os.geteuid() == 0, "bind mounts need root")


def require_volume_mounts() -> None:
    """What the recorder simulator mounts with by default: a bind mount as root, else FUSE."""
    if os.geteuid() != 0:
        require_fuse()
