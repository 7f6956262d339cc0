"""Exit statuses of the `edge` commands, chosen for what should happen next (sysexits.h numbers).

systemd acts on them through the units: `Restart=on-failure` restarts after any non-zero status, and
`RestartPreventExitStatus=` lists the ones a restart cannot fix, so a unit with a broken configuration
stops at once (`systemctl status` shows the message) instead of looping until its start limit.

| status | meaning | systemd |
| --- | --- | --- |
| 0 | done, or stopped cleanly on SIGTERM | — |
| 1 | a fault a fresh start may cure (a task kept failing, the port is taken) | restarts |
| 2 | the command line is wrong (argparse's own status) | does not restart |
| 69 (EX_UNAVAILABLE) | `edge status`: no station agent answers on the local API socket | — |
| 75 (EX_TEMPFAIL) | another process holds the store, or (mqtt-worker) the central never ran | restarts |
| 77 (EX_NOPERM) | `edge status`: the caller may not use the local API (not root, owner or operator) | — |
| 78 (EX_CONFIG) | the configuration, a secret it names, or its store is unusable | does not restart |
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["ExitCode"]


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1
    USAGE = 2
    UNAVAILABLE = 69
    STORE_BUSY = 75
    NO_PERMISSION = 77
    CONFIG = 78
