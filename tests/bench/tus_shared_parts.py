"""CPU of the shared tus store's write path: ``SharedUploadWrite.write`` of --mib MiB, in the HTTP layer's
blocks (edge.central.tus._WRITE_BLOCK_BYTES), collected into parts and stored with ``TusStaging.put_part``.

    python tests/bench/tus_shared_parts.py [--mib 256] [--part-mb 8] [--rounds 3] [--target stub|ceph]

--target stub: the staging's S3 client takes each PUT's body without sending it (what remains is this
process's own work: the running SHA-256, the part's collection and its Content-MD5). --target ceph: a
throwaway Ceph RGW (tests/central/ceph.py, ~15 s to start) on an Object Lock bucket, plain http, so
botocore also hashes each body for its SigV4 signature. The write runs under a sha256-prefix checksum, so
nothing commits (no PostgreSQL needed); its parts are deleted after each round. Prints one JSON object:
the CPU seconds of this process (every thread) per round and their median (the gateway's not counted).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import secrets
import statistics
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from edge.central.postgres.tus_shared_store import SharedUploadWrite
from edge.central.tus import _WRITE_BLOCK_BYTES
from edge.central.tus_staging import TusStaging
from edge.central.tus_store import PREFIX_SHA256, ChunkChecksum, UploadInfo


class _TakingClient:
    """Takes each PUT's body as a bytes-like object without sending it; counts the bytes."""

    def __init__(self) -> None:
        self.bytes_put = 0

    def put_object(self, *, Body: Any, **_: Any) -> dict[str, str]:
        self.bytes_put += memoryview(Body).nbytes
        return {"VersionId": secrets.token_hex(8)}

    def delete_object(self, **_: Any) -> None:
        return None


@contextlib.contextmanager
def _staging(target: str) -> Iterator[TusStaging]:
    if target == "stub":
        objects = SimpleNamespace(prefix="objects/", client=_TakingClient(), bucket="bench",
                                  config=SimpleNamespace(staging_bucket=None))  # what TusStaging reads
        yield TusStaging(objects)  # type: ignore[arg-type]
        return
    from tests.central.ceph import running_ceph
    from tests.central.s3 import s3_store

    with running_ceph() as gateway:
        yield TusStaging(s3_store(gateway))


def _round(staging: TusStaging, total: int, part_size: int, block: bytes) -> float:
    now = datetime.now(UTC)
    info = UploadInfo(upload_id=secrets.token_hex(16), station="bench", length=total, offset=0, metadata={},
                      created=now, expires=now + timedelta(hours=1))
    store = SimpleNamespace(part_size=part_size, staging=staging)
    checksum = ChunkChecksum(PREFIX_SHA256, bytes(32))  # never verified: the round only writes
    write = SharedUploadWrite(store, object(), info, [], hashlib.sha256(), checksum)  # type: ignore[arg-type]
    started = time.process_time()
    for _ in range(total // len(block)):
        write.write(block)
    spent = time.process_time() - started
    write.discard()  # deletes the parts it stored
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--part-mb", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--target", choices=("stub", "ceph"), default="stub")
    args = parser.parse_args()
    block = os.urandom(_WRITE_BLOCK_BYTES)
    total = args.mib << 20
    with _staging(args.target) as staging:
        spent = [_round(staging, total, args.part_mb << 20, block) for _ in range(args.rounds)]
    print(json.dumps({"target": args.target, "mib": args.mib, "part_mb": args.part_mb,
                      "cpu_s": [round(s, 3) for s in spent],
                      "cpu_s_median": round(statistics.median(spent), 3)}))


if __name__ == "__main__":
    main()
