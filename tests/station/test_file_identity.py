"""File identity on the recorder (issue 7, 1.8), through real mounts of simulated recorder volumes.

A name, a size and an mtime are not proof that a file is the one acquired before: a recorder whose
clock was reset can write a new recording with all three of a file the station erased, or of one it
sealed and left on the recorder. Hashing is the only truth. A directory that lists a file twice (a
repeated FAT/FUSE entry, a hard link) gives one item. A name that is not UTF-8 is kept as its exact
bytes beside its readable form.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.config.station import StationConfig
from edge.ingest.store import StationStore
from edge.sources.usb.offload import OffloadOutcome, OffloadResult, VolumeOffload
from edge.verify.station import verify_store
from simulators.recorder.faultfs import VolumeFaults
from simulators.recorder.volume import MountKind
from tests.mounting import require_bind_mounts, require_fuse, require_volume_mounts

from .conftest import Dock, session_info, sha256_file, volume_hashes

MEDIA = Path("DCIM/100MEDIA")


async def offload(store: StationStore, config: StationConfig, root: Path) -> OffloadResult:
    return await VolumeOffload(store, config, session_info(), root).run()


def entries(store: StationStore, type_: str) -> list[Any]:
    return [e for e in store.ledger.entries() if e.type == type_]


def item_hashes(store: StationStore) -> dict[str, str]:
    return {r["item"]: r["sha256"] for r in store.conn.execute("SELECT item, sha256 FROM items")}


def first_video(backing: Path) -> Path:
    return sorted((backing / MEDIA).glob("*_0001.MP4"))[0]


def rewrite_keeping_size_and_mtime(path: Path, mtime_ns: int) -> bytes:
    """A new recording under the old name: other bytes, the same size, the same mtime (clock reset)."""
    data = bytearray(path.read_bytes() if path.exists() else b"")
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return bytes(data)


async def test_a_new_file_with_an_erased_files_path_size_and_mtime_is_acquired_and_erased(
    store: StationStore, backing: Path, dock: Dock, config_factory: Callable[..., StationConfig]
) -> None:
    require_volume_mounts()
    video = first_video(backing)
    relative = video.relative_to(backing)
    old_bytes, info = video.read_bytes(), video.stat()
    config = config_factory(wipe={"policy": "after-verify"})
    with dock() as root:
        first = await offload(store, config, root)
    assert first.outcome is OffloadOutcome.DONE and not video.exists(), "erased after verification"
    old_item = next(i for i, h in item_hashes(store).items() if h == sha256_file_bytes(old_bytes))

    # The recorder's clock was reset: a new recording gets the erased file's name, size and mtime.
    video.write_bytes(old_bytes)
    new_bytes = rewrite_keeping_size_and_mtime(video, info.st_mtime_ns)
    assert (video.stat().st_size, video.stat().st_mtime_ns) == (info.st_size, info.st_mtime_ns)
    with dock() as root:
        second = await offload(store, config, root)

    new_hash = sha256_file_bytes(new_bytes)
    new_items = [i for i, h in item_hashes(store).items() if h == new_hash]
    assert len(new_items) == 1, "the new recording is acquired, not skipped as the erased one"
    (new_item,) = new_items
    assert new_item != old_item and second.items == [new_item]
    acquired = [e for e in entries(store, "acquired") if e.item == new_item]
    assert len(acquired) == 1 and acquired[0].data["earlier_item"] == old_item
    assert acquired[0].data["original"] == str(relative)
    assert not video.exists(), "the new recording is erased in its turn, once verified"
    assert second.outcome is OffloadOutcome.DONE
    assert verify_store(store.layout.root).ok


async def test_a_sealed_file_left_on_the_recorder_is_the_same_only_if_its_hash_says_so(
    store: StationStore, backing: Path, dock: Dock, config_factory: Callable[..., StationConfig]
) -> None:
    require_volume_mounts()
    config = config_factory(wipe={"policy": "never"})
    with dock() as root:
        await offload(store, config, root)
    before = item_hashes(store)
    video = first_video(backing)
    old_item = next(i for i, h in before.items() if h == sha256_file(video))

    # Control: docked again unchanged, every file is proven the same by its hash: no new item.
    with dock() as root:
        again = await offload(store, config, root)
    assert item_hashes(store) == before and again.outcome is OffloadOutcome.DONE
    proven = [e for e in entries(store, "verified") if "offered again" in str(e.data.get("purpose"))]
    assert {e.item for e in proven} == set(before), "each re-listed file was hashed and matched"

    # Then the recorder overwrites the file in place: same name, size and mtime, other bytes.
    new_bytes = rewrite_keeping_size_and_mtime(video, video.stat().st_mtime_ns)
    with dock() as root:
        third = await offload(store, config, root)
    after = item_hashes(store)
    added = {i: h for i, h in after.items() if i not in before}
    assert list(added.values()) == [sha256_file_bytes(new_bytes)], "the other bytes are a new item"
    (new_item,) = added
    assert third.items.count(new_item) == 1
    state = store.conn.execute("SELECT state FROM acquisitions WHERE item=?", (old_item,)).fetchone()[0]
    assert state == "superseded"
    said = [e for e in entries(store, "error") if e.item == old_item and e.data.get("stage") == "identity"]
    assert len(said) == 1 and said[0].data["new_item"] == new_item
    assert said[0].data["found_sha256"] == after[new_item]
    linked = next(e for e in entries(store, "acquired") if e.item == new_item)
    assert linked.data["earlier_item"] == old_item
    assert verify_store(store.layout.root).ok

    # And the superseded item is not acquired again at the next docking, nor the new one twice.
    with dock() as root:
        await offload(store, config, root)
    assert item_hashes(store) == after


async def test_new_recordings_are_acquired_before_the_old_ones_are_proven(
    store: StationStore, backing: Path, dock: Dock, config_factory: Callable[..., StationConfig]
) -> None:
    """A recorder docked again with its old files still on it (wipe policy never): its new recording
    is not kept waiting behind the hashing that proves the old ones."""
    require_volume_mounts()
    config = config_factory(wipe={"policy": "never"})
    with dock() as root:
        await offload(store, config, root)
    old_items = set(item_hashes(store))
    newest = backing / "PHOTO" / "ZZZZ_LAST.JPG"  # listed last of all
    newest.write_bytes(b"a new photo after the docking" * 50)
    start = store.ledger.head()[0]
    with dock() as root:
        await offload(store, config, root)
    this_docking = [e for e in store.ledger.entries(start + 1)]
    (new_item,) = set(item_hashes(store)) - old_items
    acquired = next(e.seq for e in this_docking if e.type == "acquired" and e.item == new_item)
    proofs = [e.seq for e in this_docking if e.type == "verified" and e.item in old_items]
    assert len(proofs) == len(old_items) and acquired < min(proofs)


def sha256_file_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def acquired_per_item(store: StationStore) -> dict[str, int]:
    counts: dict[str, int] = {}
    for e in entries(store, "acquired"):
        counts[e.item] = counts.get(e.item, 0) + 1
    return counts


async def test_a_directory_entry_listed_twice_is_one_item_acquired_once(
    store: StationStore, backing: Path, dock: Dock, config_factory: Callable[..., StationConfig]
) -> None:
    require_fuse()
    video = first_video(backing)
    truth = volume_hashes(backing)
    with dock(VolumeFaults(repeat_entry=video.name)) as root:
        assert os.listdir(root / MEDIA).count(video.name) == 2, "the simulated directory repeats it"
        result = await offload(store, config_factory(wipe={"policy": "after-verify"}), root)
    assert acquired_per_item(store) == dict.fromkeys(acquired_per_item(store), 1), "each acquired once"
    assert sorted(item_hashes(store).values()) == sorted(truth.values()), "one item per file"
    refused = [e.data for e in entries(store, "refused")]
    assert [r["original"] for r in refused] == [str(video.relative_to(backing))]
    assert "listed twice" in refused[0]["reason"]
    assert not video.exists(), "the one item is erased once verified"
    assert result.outcome is OffloadOutcome.PARTIAL, "a damaged directory is on the record"


async def test_a_hard_link_is_one_item_and_a_copy_with_the_same_bytes_is_its_own(
    store: StationStore, backing: Path, dock: Dock, config_factory: Callable[..., StationConfig]
) -> None:
    require_bind_mounts()  # the kernel's own inodes, as a real volume's driver gives them
    video = first_video(backing)
    link = video.with_name("ALIAS.MP4")
    os.link(video, link)
    copy = video.with_name("COPY.MP4")
    shutil.copy2(video, copy)  # control: the same bytes in another file are another original
    with dock(kind=MountKind.BIND) as root:
        await offload(store, config_factory(wipe={"policy": "never"}), root)
    same = sha256_file(video)
    holding = [i for i, h in item_hashes(store).items() if h == same]
    assert len(holding) == 2, "the file and its copy; the hard link is not a third"
    refused = {e.data["original"]: e.data["reason"] for e in entries(store, "refused")}
    assert list(refused) == [str(link.relative_to(backing))]
    assert f"another name of the file {video.relative_to(backing)}" in refused[str(link.relative_to(backing))]
    assert acquired_per_item(store) == dict.fromkeys(acquired_per_item(store), 1)
    assert any(e.data.get("same_as") for e in entries(store, "duplicate")), "the copy is linked by hash"


# Names a recorder (or an attacker's FAT image) can hold: each must be acquired once, recorded exactly.
GBK_NAME = "录像".encode("gbk") + b".MP4"  # reads as the UTF-8 name beside it
HOSTILE_NAMES = [
    "录像.MP4".encode(),
    GBK_NAME,
    "𠀀.MP4".encode("gb18030"),  # a GB18030 four-byte character: not GBK
    b"\xff\xfe_bad.MP4",  # neither UTF-8 nor GB18030
    b"line\nFAKE 2026 INFO forged.MP4",
    b"esc\x1b[2J\x1b]0;owned\x07.MP4",
    "bidi\u202e4PM.exe.MP4".encode(),
]


async def test_names_are_kept_as_exact_bytes_beside_a_readable_form(
    store: StationStore, backing: Path, dock: Dock, config_factory: Callable[..., StationConfig]
) -> None:
    require_volume_mounts()
    for folder in (backing / MEDIA, backing / "PHOTO", backing / "AUDIO"):
        shutil.rmtree(folder, ignore_errors=True)
    (backing / MEDIA).mkdir()
    for i, raw in enumerate(HOSTILE_NAMES):
        (backing / MEDIA / os.fsdecode(raw)).write_bytes(b"recording %d " % i * 100)
    os.utime(backing / MEDIA / os.fsdecode(GBK_NAME), ns=(10**18, 10**18))
    os.utime(backing / MEDIA / "录像.MP4", ns=(10**18, 10**18))
    with dock() as root:
        result = await offload(store, config_factory(wipe={"policy": "never"}), root)
    assert result.outcome is OffloadOutcome.DONE, result.errors
    manifests = [json.loads(r[0]) for r in store.conn.execute("SELECT manifest FROM items")]
    by_bytes: dict[bytes, dict[str, Any]] = {}
    for m in manifests:
        original = m["original"]
        raw = bytes.fromhex(original["path_bytes_hex"]) if "path_bytes_hex" in original else (
            original["path"].encode()
        )
        by_bytes[raw] = original
    assert sorted(by_bytes) == sorted(bytes(MEDIA) + b"/" + n for n in HOSTILE_NAMES), "one item per name"

    utf8, gbk = by_bytes[bytes(MEDIA) + b"/" + "录像.MP4".encode()], by_bytes[bytes(MEDIA) + b"/" + GBK_NAME]
    assert utf8["path"] == gbk["path"] == f"{MEDIA}/录像.MP4", "they read alike"
    assert "path_bytes_hex" not in utf8 and gbk["path_readable_from"] == "gb18030", "but are told apart"
    four_byte = by_bytes[bytes(MEDIA) + b"/" + "𠀀.MP4".encode("gb18030")]
    assert four_byte["name"] == "𠀀.MP4" and four_byte["path_readable_from"] == "gb18030"
    bad = by_bytes[bytes(MEDIA) + b"/" + b"\xff\xfe_bad.MP4"]
    assert bad["name"] == "\\xff\\xfe_bad.MP4" and bad["path_readable_from"] == "escaped"
    # Device text is kept exactly in the record (escaping is for showing it).
    assert by_bytes[bytes(MEDIA) + b"/" + HOSTILE_NAMES[4]]["name"] == "line\nFAKE 2026 INFO forged.MP4"

    # The ledger's entries carry the exact bytes too, where the readable form is ambiguous.
    acquired = {e.item: e.data for e in entries(store, "acquired")}
    gbk_entries = [d for d in acquired.values() if d.get("original_bytes_hex") == (
        bytes(MEDIA) + b"/" + GBK_NAME).hex()]
    assert len(gbk_entries) == 1
    assert [d for d in acquired.values() if d["original"] == f"{MEDIA}/录像.MP4"
            and "original_bytes_hex" not in d], "the UTF-8 name needs no bytes beside it"
    keys = [r[0] for r in store.conn.execute("SELECT original FROM acquisitions")]
    assert len(set(keys)) == len(HOSTILE_NAMES)
