"""Entry point of the fault-injecting volume filesystem process.

`python -m simulators.recorder.faultfs_main --backing DIR --mount-point DIR [--faults ...]`. A module of
its own so that running it never imports `simulators.recorder.faultfs` twice (once as `__main__`).
"""

from __future__ import annotations

import sys

from simulators.recorder.faultfs import main

if __name__ == "__main__":
    sys.exit(main())
