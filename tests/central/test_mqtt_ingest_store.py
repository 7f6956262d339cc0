"""The central's MQTT file-transfer store: durable segments, out-of-order and duplicated arrivals, verified
segments and files, a restart mid-transfer, hostile input answered (never raised), bounded memory, and the
completed file registered through the same Registrar as a tus upload."""

from __future__ import annotations

import hashlib
import os
import random
import tracemalloc
from pathlib import Path

import pytest

from edge.central.mqtt_ingest_store import MqttIngestStore, Outcome, TransferState
from edge.central.record_rate import RecordRate
from edge.central.registration import Registrar
from edge.custody.receipt import verify_receipt
from edge.mqtt.filetransfer import (
    FileMeta,
    FinCommand,
    InitCommand,
    Mode,
    ReasonCode,
    SegmentCommand,
    parse_response_payload,
    transfer_upload_id,
)
from tests.central.conftest import CentralParts, FakeStation, enroll

STATION = "st-0001"
FILE_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"


def _store(root: Path, **options: object) -> MqttIngestStore:
    settings: dict[str, object] = {"max_size_bytes": 1 << 30, "reserve_bytes": 0}
    settings.update(options)
    return MqttIngestStore(root, **settings)  # type: ignore[arg-type]


def _init(store: MqttIngestStore, data: bytes, *, file_id: str = FILE_ID, station: str = STATION,
          checksum: bool = True, **meta: object) -> Outcome:
    fields: dict[str, object] = {"name": "录像 01.mp4", "size": len(data)}
    if checksum:
        fields["checksum"] = hashlib.sha256(data).hexdigest()
    fields.update(meta)
    payload = FileMeta(**fields).to_payload()  # type: ignore[arg-type]
    return store.handle(station, InitCommand(file_id).topic, payload)


def _segment(store: MqttIngestStore, data: bytes, offset: int, length: int, *, file_id: str = FILE_ID,
             station: str = STATION, mode: Mode = Mode.ASYNC) -> Outcome:
    chunk = data[offset:offset + length]
    command = SegmentCommand(file_id, offset, hashlib.sha256(chunk).hexdigest(), mode)
    return store.handle(station, command.topic, chunk)


def _fin(store: MqttIngestStore, data: bytes, *, file_id: str = FILE_ID, station: str = STATION,
         size: int | None = None, checksum: str | None = "file") -> Outcome:
    sha = hashlib.sha256(data).hexdigest() if checksum == "file" else checksum
    command = FinCommand(file_id, len(data) if size is None else size, sha)
    return store.handle(station, command.topic, b"")


def _offsets(size: int, step: int) -> list[int]:
    return list(range(0, size, step))


def _ok(outcome: Outcome) -> Outcome:
    assert outcome.reason_code is ReasonCode.SUCCESS, outcome.description
    return outcome


def _listing(root: Path) -> set[str]:
    return {p.name for p in root.iterdir()}


DATA = random.Random(7).randbytes(10_000)


def test_a_file_sent_in_order_is_stored_verified_and_served_to_registration(tmp_path: Path) -> None:
    store = _store(tmp_path / "ft")
    _ok(_init(store, DATA))
    for offset in _offsets(len(DATA), 1000):
        _ok(_segment(store, DATA, offset, 1000))
    upload_id = transfer_upload_id(STATION, FILE_ID)
    facts = store.get(upload_id)
    # Every byte came but fin has not verified the file: it is not complete for registration.
    assert facts is not None and facts.received_bytes == len(DATA) and facts.offset < facts.length
    _ok(_fin(store, DATA))
    facts = store.get(upload_id)
    assert facts is not None
    assert (facts.station, facts.length, facts.offset, facts.state) == (STATION, len(DATA), len(DATA),
                                                                        TransferState.COMPLETE)
    assert facts.sha256 == hashlib.sha256(DATA).hexdigest() and facts.name == "录像 01.mp4"
    assert store.complete_path(upload_id).read_bytes() == DATA
    # A fin sent again (the station lost the answer) is answered at once, and so is a late duplicate.
    assert _ok(_fin(store, DATA)).description == "success (already complete)"
    _ok(_segment(store, DATA, 3000, 1000))
    # Names on disk are the server's id only: nothing the station sent.
    assert all(name.startswith(upload_id) or name == "incidents.jsonl" for name in _listing(tmp_path / "ft"))


def test_out_of_order_and_duplicated_segments_assemble_the_same_file(tmp_path: Path) -> None:
    store = _store(tmp_path / "ft")
    _ok(_init(store, DATA))
    offsets = _offsets(len(DATA), 700)
    order = offsets + offsets[::3] + offsets[5:9]
    random.Random(3).shuffle(order)
    for offset in order:
        _ok(_segment(store, DATA, offset, 700))
    # A resend cut at other boundaries carries the same bytes: accepted.
    _ok(_segment(store, DATA, 350, 1000))
    _ok(_fin(store, DATA))
    assert store.complete_path(transfer_upload_id(STATION, FILE_ID)).read_bytes() == DATA
    assert store.incidents() == []


def test_a_duplicate_with_other_bytes_is_refused_recorded_and_changes_nothing(tmp_path: Path) -> None:
    store = _store(tmp_path / "ft")
    _ok(_init(store, DATA))
    _ok(_segment(store, DATA, 0, 1000))
    forged = bytearray(DATA)
    forged[1500] ^= 0xFF
    _ok(_segment(store, bytes(forged), 1000, 1000))  # control: different bytes where nothing is stored yet
    # Now at the same offset, other content: refused.
    forged[1500] ^= 0xFF
    forged[400] ^= 0x01
    outcome = _segment(store, bytes(forged), 0, 1000)
    assert outcome.reason_code is ReasonCode.CANCEL
    assert "differs from the bytes already stored at 400" in outcome.description
    # Overlapping at another boundary, also different: refused too.
    outcome = _segment(store, bytes(forged), 200, 300)
    assert outcome.reason_code is ReasonCode.CANCEL and "at 400" in outcome.description
    incidents = store.incidents()
    assert [i["kind"] for i in incidents] == ["segment_conflict", "segment_conflict"]
    assert incidents[0]["station"] == STATION and incidents[0]["offset"] == 0
    part = store.root / f"{transfer_upload_id(STATION, FILE_ID)}.part"
    assert part.read_bytes()[:1000] == DATA[:1000]  # the stored bytes are kept


def test_a_segment_whose_checksum_is_wrong_is_refused_and_nothing_is_stored(tmp_path: Path) -> None:
    store = _store(tmp_path / "ft")
    _ok(_init(store, DATA))
    wrong = SegmentCommand(FILE_ID, 0, hashlib.sha256(b"other").hexdigest())
    outcome = store.handle(STATION, wrong.topic, DATA[:1000])
    assert outcome.reason_code is ReasonCode.RESEND and "hash to" in outcome.description
    facts = store.get(transfer_upload_id(STATION, FILE_ID))
    assert facts is not None and facts.received_bytes == 0
    _ok(_segment(store, DATA, 0, 1000))  # control: the right checksum is accepted
    facts = store.get(transfer_upload_id(STATION, FILE_ID))
    assert facts is not None and facts.received_bytes == 1000


def test_a_segment_without_checksum_needs_the_receiver_to_allow_it(tmp_path: Path) -> None:
    for required, code in ((True, ReasonCode.CANCEL), (False, ReasonCode.SUCCESS)):
        store = _store(tmp_path / f"ft-{required}", require_segment_checksum=required)
        _ok(_init(store, DATA))
        outcome = store.handle(STATION, SegmentCommand(FILE_ID, 0).topic, DATA[:100])
        assert outcome.reason_code is code, outcome.description


def test_segments_past_the_size_or_over_the_limit_are_refused(tmp_path: Path) -> None:
    store = _store(tmp_path / "ft", max_segment_bytes=2000)
    _ok(_init(store, DATA))
    longer = DATA + b"x" * 10
    outcome = _segment(store, longer, 9500, 510)
    assert outcome.reason_code is ReasonCode.CANCEL and "past the declared size 10000" in outcome.description
    outcome = _segment(store, longer, 10_001, 5)
    assert outcome.reason_code is ReasonCode.CANCEL and "past the declared size" in outcome.description
    outcome = _segment(store, DATA, 0, 2001)
    assert outcome.reason_code is ReasonCode.CANCEL and "over the limit of 2000" in outcome.description
    _ok(_segment(store, DATA, 8000, 2000))  # control: the last 2000 bytes exactly fit


def test_fin_checks_size_gaps_and_the_file_sha256(tmp_path: Path) -> None:
    store = _store(tmp_path / "ft")
    _ok(_init(store, DATA))
    for offset in _offsets(len(DATA), 1000):
        if offset != 4000:
            _ok(_segment(store, DATA, offset, 1000))
    outcome = _fin(store, DATA)
    assert outcome.reason_code is ReasonCode.RESEND
    assert "bytes 4000 to 4999 of 10000 have not arrived" in outcome.description
    outcome = _fin(store, DATA, size=9999)
    assert outcome.reason_code is ReasonCode.CANCEL and "differs from the size 10000" in outcome.description
    outcome = _fin(store, DATA, checksum="ab" * 32)
    assert outcome.reason_code is ReasonCode.CANCEL
    assert "differs from the init checksum" in outcome.description
    _ok(_segment(store, DATA, 4000, 1000))
    _ok(_fin(store, DATA, checksum=None))  # the init's checksum counts


def test_a_file_that_hashes_wrong_fails_is_recorded_and_kept(tmp_path: Path) -> None:
    store = _store(tmp_path / "ft", require_segment_checksum=False)
    declared = hashlib.sha256(DATA).hexdigest()
    _ok(_init(store, DATA))
    damaged = bytearray(DATA)
    damaged[5] ^= 0x40
    # Segments without a checksum: the damage passes them and is caught by the whole-file hash.
    for offset in _offsets(len(DATA), 2500):
        chunk = bytes(damaged[offset:offset + 2500])
        _ok(store.handle(STATION, SegmentCommand(FILE_ID, offset).topic, chunk))
    outcome = _fin(store, DATA, checksum=declared)
    assert outcome.reason_code is ReasonCode.CANCEL
    assert f"hash to {hashlib.sha256(damaged).hexdigest()}" in outcome.description
    upload_id = transfer_upload_id(STATION, FILE_ID)
    facts = store.get(upload_id)
    assert facts is not None and facts.state is TransferState.FAILED and facts.sha256 is None
    assert [i["kind"] for i in store.incidents()] == ["file_checksum_mismatch"]
    assert (store.root / f"{upload_id}.part").read_bytes() == bytes(damaged)  # kept as it came
    assert _segment(store, DATA, 0, 10).reason_code is ReasonCode.CANCEL
    # A new init starts the transfer over.
    _ok(_init(store, DATA))
    for offset in _offsets(len(DATA), 2500):
        _ok(_segment(store, DATA, offset, 2500))
    _ok(_fin(store, DATA))


def test_fin_without_any_sha256_is_refused(tmp_path: Path) -> None:
    store = _store(tmp_path / "ft")
    _ok(_init(store, DATA, checksum=False))
    _ok(_segment(store, DATA, 0, len(DATA)))
    outcome = _fin(store, DATA, checksum=None)
    assert outcome.reason_code is ReasonCode.CANCEL and "no SHA-256 of the file" in outcome.description
    _ok(_fin(store, DATA))  # control: with the fin's checksum


def test_init_is_idempotent_and_refuses_other_metadata_or_what_does_not_fit(tmp_path: Path) -> None:
    store = _store(tmp_path / "ft", max_size_bytes=50_000, station_quota_bytes=25_000)
    _ok(_init(store, DATA))
    assert _ok(_init(store, DATA)).description == "success (already initialised)"
    outcome = _init(store, DATA, name="other.mp4")
    assert outcome.reason_code is ReasonCode.CANCEL and "name differ" in outcome.description
    payload = b'{"name": "x.mp4"}'
    outcome = store.handle(STATION, InitCommand("no-size").topic, payload)
    assert outcome.reason_code is ReasonCode.CANCEL and "needs the file's size" in outcome.description
    outcome = _init(store, b"x" * 60_000, file_id="too-big")
    assert outcome.reason_code is ReasonCode.CANCEL and "over the central's limit" in outcome.description
    before = _listing(store.root)
    outcome = _init(store, b"x" * 20_000, file_id="over-quota")
    assert outcome.reason_code is ReasonCode.QUOTA_EXCEEDED and "quota of 25000" in outcome.description
    assert _listing(store.root) == before  # a refused init leaves nothing behind
    _ok(_init(store, b"x" * 20_000, file_id="other-station", station="st-0002"))  # quotas are per station


def test_commands_for_unknown_transfers_are_refused_and_leave_nothing(tmp_path: Path) -> None:
    store = _store(tmp_path / "ft")
    before = _listing(store.root)
    assert _segment(store, DATA, 0, 100).reason_code is ReasonCode.CANCEL
    outcome = _fin(store, DATA)
    assert outcome.reason_code is ReasonCode.CANCEL and "init it first" in outcome.description
    assert store.handle(STATION, f"$file/{FILE_ID}/abort", b"").ok
    assert _listing(store.root) == before


def test_another_station_cannot_touch_a_transfer(tmp_path: Path) -> None:
    store = _store(tmp_path / "ft")
    _ok(_init(store, DATA))
    _ok(_segment(store, DATA, 0, 1000))
    # Same file id from another station is another transfer: it was never initialised.
    forged = b"F" * 1000
    topic = SegmentCommand(FILE_ID, 0, hashlib.sha256(forged).hexdigest()).topic
    outcome = store.handle("st-0002", topic, forged)
    assert outcome.reason_code is ReasonCode.CANCEL and "init it first" in outcome.description
    assert (store.root / f"{transfer_upload_id(STATION, FILE_ID)}.part").read_bytes()[:1000] == DATA[:1000]


def test_a_restart_mid_transfer_loses_nothing_acknowledged(tmp_path: Path) -> None:
    root = tmp_path / "ft"
    store = _store(root)
    _ok(_init(store, DATA))
    for offset in (0, 3000, 1000, 7000):
        _ok(_segment(store, DATA, offset, 1000))
    upload_id = transfer_upload_id(STATION, FILE_ID)
    # A crash while the next segment was on its way: its bytes reached the file, half its journal record
    # reached the journal, and it was never acknowledged.
    with (root / f"{upload_id}.part").open("r+b") as part:
        part.seek(5000)
        part.write(b"\xee" * 1000)
    with (root / f"{upload_id}.segments").open("ab") as journal:
        journal.write(b"\x00" * 20)
    del store
    reopened = _store(root)
    facts = reopened.get(upload_id)
    assert facts is not None and facts.received_bytes == 4000 and facts.state is TransferState.OPEN
    assert (root / f"{upload_id}.segments").stat().st_size == 4 * 48  # the torn record was cut off
    for offset in _offsets(len(DATA), 1000):
        _ok(_segment(reopened, DATA, offset, 1000))  # the station resends what was not acknowledged
    _ok(_fin(reopened, DATA))
    assert reopened.complete_path(upload_id).read_bytes() == DATA


def test_a_segment_is_on_disk_before_its_journal_record_and_both_before_the_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit rule, as the system calls happen: data fsynced, then the record written and fsynced."""

    store = _store(tmp_path / "ft")
    _ok(_init(store, DATA))
    calls: list[str] = []
    real_fdatasync, real_write = os.fdatasync, os.write

    def name(fd: int) -> str:
        return os.readlink(f"/proc/self/fd/{fd}").rsplit(".", 1)[-1]

    def fdatasync(fd: int) -> None:
        calls.append(f"fdatasync {name(fd)}")
        real_fdatasync(fd)

    def write(fd: int, data: bytes) -> int:
        calls.append(f"write {name(fd)}")
        return real_write(fd, data)

    monkeypatch.setattr(os, "fdatasync", fdatasync)  # the module calls os.fdatasync / os.write
    monkeypatch.setattr(os, "write", write)
    _ok(_segment(store, DATA, 0, 1000))
    assert calls == ["fdatasync part", "write segments", "fdatasync segments"]
    calls.clear()
    _ok(_segment(store, DATA, 0, 1000))  # a duplicate writes nothing
    assert calls == []


def test_a_damaged_journal_makes_fin_ask_for_everything_again(tmp_path: Path) -> None:
    root = tmp_path / "ft"
    store = _store(root)
    _ok(_init(store, DATA))
    for offset in _offsets(len(DATA), 1000):
        _ok(_segment(store, DATA, offset, 1000))
    upload_id = transfer_upload_id(STATION, FILE_ID)
    journal = root / f"{upload_id}.segments"
    raw = bytearray(journal.read_bytes())
    raw[48 * 3 + 10] ^= 0xFF  # the fourth record
    journal.write_bytes(bytes(raw))
    reopened = _store(root)
    outcome = _fin(reopened, DATA)
    assert outcome.reason_code is ReasonCode.RESEND and "bytes 3000 to 9999" in outcome.description
    for offset in _offsets(len(DATA), 1000):
        _ok(_segment(reopened, DATA, offset, 1000))
    _ok(_fin(reopened, DATA))


def test_two_processes_sharing_the_store_see_each_others_segments(tmp_path: Path) -> None:
    """A shared subscription spreads one transfer over several central processes (each its own store
    object and cache here): each reads the journal's new records under the transfer's lock."""
    root = tmp_path / "ft"
    first, second = _store(root), _store(root)
    _ok(_init(first, DATA))
    for index, offset in enumerate(_offsets(len(DATA), 1000)):
        _ok(_segment(first if index % 2 else second, DATA, offset, 1000))
    # A duplicate with other bytes reaching the other process is still caught.
    assert _segment(first, b"\x00" * len(DATA), 0, 1000).reason_code is ReasonCode.CANCEL
    _ok(_fin(second, DATA))
    facts = first.get(transfer_upload_id(STATION, FILE_ID))
    assert facts is not None and facts.state is TransferState.COMPLETE


def test_a_transfer_started_over_is_not_mistaken_for_the_old_one_by_another_process(tmp_path: Path) -> None:
    root = tmp_path / "ft"
    first, second = _store(root), _store(root)
    _ok(_init(first, DATA))
    for offset in _offsets(len(DATA), 1000):
        _ok(_segment(first, DATA, offset, 1000))
    seen = second.get(transfer_upload_id(STATION, FILE_ID))
    assert seen is not None and seen.received_bytes == len(DATA)
    _ok(first.handle(STATION, f"$file/{FILE_ID}/abort", b""))
    # Started over through the first process, with twelve small segments so far (a longer journal than
    # before): the second process's memory of the old journal must not make it believe the file is there.
    _ok(_init(first, DATA))
    for offset in range(0, 1200, 100):
        _ok(_segment(first, DATA, offset, 100))
    outcome = _fin(second, DATA)
    assert outcome.reason_code is ReasonCode.RESEND and "bytes 1200 to 9999" in outcome.description


def test_an_empty_file_is_init_then_fin(tmp_path: Path) -> None:
    store = _store(tmp_path / "ft")
    _ok(_init(store, b""))
    _ok(_fin(store, b""))
    upload_id = transfer_upload_id(STATION, FILE_ID)
    facts = store.get(upload_id)
    assert facts is not None and facts.state is TransferState.COMPLETE and facts.length == facts.offset == 0
    assert store.complete_path(upload_id).read_bytes() == b""


def test_too_many_separate_runs_are_paused(tmp_path: Path) -> None:
    store = _store(tmp_path / "ft", max_runs=3)
    _ok(_init(store, DATA))
    for offset in (0, 2000, 4000):
        _ok(_segment(store, DATA, offset, 1000))
    outcome = _segment(store, DATA, 6000, 1000)
    assert outcome.reason_code is ReasonCode.QUOTA_EXCEEDED
    assert "more than 3 separate runs" in outcome.description
    _ok(_segment(store, DATA, 1000, 1000))  # control: filling a gap is always welcome
    _ok(_segment(store, DATA, 6000, 1000))


# -- hostile input ---------------------------------------------------------------------------------------


HOSTILE_TOPICS = [
    "", "$file", "$file/", "$file//init", "$file/../init", f"$file/{FILE_ID}/-1", f"$file/{FILE_ID}/1e3",
    f"$file/{FILE_ID}/0/xyz", f"$file/{FILE_ID}/fin/abc", "$file/a\x00b/init", "$file/\u202e/0",
    f"$file/{FILE_ID}/0/" + "0" * 64 + "/more", "$SYS/broker", "$file-response/st-0001",
]


@pytest.mark.parametrize("topic", HOSTILE_TOPICS)
def test_hostile_topics_are_answered_never_raised(tmp_path: Path, topic: str) -> None:
    store = _store(tmp_path / "ft")
    outcome = store.handle(STATION, topic, b"payload")
    assert outcome.reason_code is ReasonCode.RESEND and outcome.command is None
    assert "\n" not in outcome.description


@pytest.mark.parametrize("station", ["", "../etc", "a/b", "st\n01", "x" * 65, "-lead"])
def test_a_hostile_station_identity_is_refused(tmp_path: Path, station: str) -> None:
    store = _store(tmp_path / "ft")
    outcome = _init(store, DATA, station="st-0001")
    assert outcome.ok  # control
    outcome = store.handle(station, InitCommand(FILE_ID).topic, FileMeta("a", 1).to_payload())
    assert outcome.reason_code is ReasonCode.RESEND and "client id" in outcome.description


def test_random_bytes_everywhere_never_raise_and_write_only_inside_the_store(tmp_path: Path) -> None:
    root = tmp_path / "ft"
    store = _store(root, require_segment_checksum=False)
    _ok(_init(store, DATA))
    rng = random.Random(11)
    forms = ["$file/{id}/init", "$file/{id}/{n}", "$file/{id}/{n}/{h}", "$file-async/{id}/fin/{n}/{h}",
             "$file/{id}/fin/{n}", "$file/{id}/abort"]
    ids = [FILE_ID, "x", "..", "a" * 200, rng.randbytes(8).decode("latin-1")]
    for _ in range(400):
        topic = rng.choice(forms).format(
            id=rng.choice(ids), n=rng.choice([0, 1, 9999, 10_000, 10**20, -3, "07"]),
            h=rng.choice(["0" * 64, hashlib.sha256(b"").hexdigest(), "zz"]),
        )
        if rng.random() < 0.2:
            raw = bytearray(topic.encode("utf-8", "surrogatepass"))
            raw[rng.randrange(len(raw))] = rng.randrange(256)
            topic = raw.decode("utf-8", "replace")
        payload = rng.randbytes(rng.choice([0, 1, 100, 3000]))
        outcome = store.handle(rng.choice([STATION, "st-0002"]), topic, payload)
        assert isinstance(outcome.reason_code, ReasonCode)
        if outcome.command is not None:
            parse_response_payload(outcome.response(rng.randrange(65536)).to_payload())  # type: ignore[union-attr]
    assert {p.parent for p in tmp_path.rglob("*")} <= {tmp_path, root}


# -- bounded memory --------------------------------------------------------------------------------------


def test_memory_stays_bounded_whatever_the_file_size(tmp_path: Path) -> None:
    """Receiving and verifying 64 MiB costs what 4 MiB costs (control: the measurement sees a whole-file
    read)."""
    segment_bytes = 256 * 1024
    block = os.urandom(segment_bytes)

    def peak(size: int) -> int:
        store = _store(tmp_path / f"ft-{size}")
        sha = hashlib.sha256()
        for _ in range(size // segment_bytes):
            sha.update(block)
        file_id = f"f{size}"
        meta = FileMeta("big.mp4", size, sha.hexdigest()).to_payload()
        _ok(store.handle(STATION, InitCommand(file_id).topic, meta))
        block_sum = hashlib.sha256(block).hexdigest()
        offsets = list(range(0, size, segment_bytes))
        random.Random(1).shuffle(offsets)  # out of order: the runs structure is exercised too
        tracemalloc.start()
        try:
            for offset in offsets:
                _ok(store.handle(STATION, SegmentCommand(file_id, offset, block_sum).topic, block))
            _ok(store.handle(STATION, FinCommand(file_id, size, sha.hexdigest()).topic, b""))
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            store.remove(transfer_upload_id(STATION, file_id))

    small, large = peak(4 << 20), peak(64 << 20)
    assert large < 2 * small + (256 << 10), (small, large)
    assert large < 8 << 20, large
    control = tmp_path / "control"
    control.write_bytes(b"\0" * (16 << 20))
    tracemalloc.start()
    try:
        control.read_bytes()
        whole = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert whole >= 16 << 20


# -- expiry ------------------------------------------------------------------------------------------------


def test_expired_transfers_and_orphans_are_purged_and_leased_ones_kept(tmp_path: Path) -> None:
    now = [1_000_000.0]
    store = _store(tmp_path / "ft", segments_ttl_s=600, min_segments_ttl_s=300, max_segments_ttl_s=3600,
                   expire_complete_after_s=1000, clock=lambda: now[0])
    _ok(_init(store, DATA, file_id="open-one"))
    _ok(_init(store, DATA, file_id="done-one"))
    _ok(_segment(store, DATA, 0, len(DATA), file_id="done-one"))
    _ok(_fin(store, DATA, file_id="done-one"))
    orphan = store.root / ("ab" * 16 + ".part")
    orphan.write_bytes(b"left by a crash")
    real = os.stat(store.root / f"{transfer_upload_id(STATION, 'open-one')}.info.json").st_mtime
    now[0] = real + 599
    assert store.purge_expired() == 0
    now[0] = real + 601
    assert store.purge_expired() == 1  # the open one, after its segments' time to live
    assert store.get(transfer_upload_id(STATION, "open-one")) is None
    assert not orphan.exists()
    done = transfer_upload_id(STATION, "done-one")
    store.complete_path(done)  # registration holds it for an hour from now
    now[0] = real + 1100
    assert store.purge_expired() == 0
    assert store.get(done) is not None
    now[0] = real + 601 + 3601
    assert store.purge_expired() == 1  # the lease ran out and nobody registered it
    assert store.get(done) is None


# -- registration ----------------------------------------------------------------------------------------


async def test_a_file_sent_over_mqtt_is_registered_with_the_same_signed_receipt(
    parts: CentralParts, station: FakeStation, tmp_path: Path
) -> None:
    enroll(parts.index, station)
    acquired = station.acquire(b"video bytes over mqtt " * 4000)
    store = _store(tmp_path / "mqtt-transfers")
    registrar = Registrar(parts.index, parts.objects, parts.merkle, store, signing_key=parts.signing_key,
                          central_id="central-test")
    content = acquired.content
    _ok(_init(store, content, file_id=acquired.item, station=station.station_id))
    for offset in _offsets(len(content), 8192):
        _ok(_segment(store, content, offset, 8192, file_id=acquired.item, station=station.station_id))
    _ok(_fin(store, content, file_id=acquired.item, station=station.station_id))
    upload_id = transfer_upload_id(station.station_id, acquired.item)
    body = {"upload": upload_id, "manifest": acquired.manifest, "ledger": station.segment(0)}
    registered = await registrar.register_item(parts.caller(station.station_id), station.station_id, body)
    assert verify_receipt(registered.receipt.to_dict(), parts.signing_key.public_key(),
                          expected_item=acquired.item, expected_sha256=acquired.sha256,
                          expected_station=station.station_id) == []
    assert parts.file_objects.path_of(acquired.sha256).read_bytes() == content
    assert store.get(upload_id) is None  # consumed, as a tus upload is


def test_conflicting_duplicates_are_recorded_at_a_bounded_rate_with_the_count_of_the_others(
    tmp_path: Path,
) -> None:
    """Review 8, finding 5: a station resending conflicting segments grew incidents.jsonl by a line (and an
    fsync) per message. Every one is still refused; a burst is recorded, then a few a minute, and the next
    record carries how many were not."""
    now = [1000.0]
    store = _store(tmp_path / "ft")
    store.incident_rate = RecordRate(30, monotonic=lambda: now[0])
    _ok(_init(store, DATA))
    _ok(_segment(store, DATA, 0, 1000))
    forged = bytearray(DATA)
    forged[10] ^= 0xFF
    for _ in range(200):
        assert _segment(store, bytes(forged), 0, 1000).reason_code is ReasonCode.CANCEL
    incidents = store.incidents()
    assert len(incidents) == 30  # the burst; the other 170 refused, counted, not written
    assert all("unrecorded_incidents_before" not in i for i in incidents)
    now[0] += 2.0  # one more record a 2 seconds at 30 a minute
    assert _segment(store, bytes(forged), 0, 1000).reason_code is ReasonCode.CANCEL
    last = store.incidents()[-1]
    assert len(store.incidents()) == 31 and last["unrecorded_incidents_before"] == 170
    # Another station's incidents have their own budget.
    _ok(_init(store, DATA, station="st-0002"))
    _ok(_segment(store, DATA, 0, 1000, station="st-0002"))
    assert _segment(store, bytes(forged), 0, 1000, station="st-0002").reason_code is ReasonCode.CANCEL
    assert store.incidents()[-1]["station"] == "st-0002"


def test_a_resend_of_a_recorded_segment_is_answered_from_its_journal_digest_without_reading_it_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review 8, finding 7: every duplicate cost a read and compare of up to 2 MiB. The journal records
    each segment's SHA-256: a resend with that digest at the same offset and length is the same bytes."""
    store = _store(tmp_path / "ft")
    _ok(_init(store, DATA))
    _ok(_segment(store, DATA, 0, 1000))
    _ok(_segment(store, DATA, 1000, 1000))
    compared: list[int] = []
    real = MqttIngestStore._first_difference

    def counting(
        self: MqttIngestStore, upload_id: str, coverage: object, start: int, payload: bytes
    ) -> object:
        compared.append(start)
        return real(self, upload_id, coverage, start, payload)  # type: ignore[arg-type]

    monkeypatch.setattr(MqttIngestStore, "_first_difference", counting)
    outcome = _segment(store, DATA, 1000, 1000)
    assert outcome.ok and outcome.description == "success (already stored)" and compared == []
    # After a restart the digests come from the journal: still no read-back.
    again = _store(tmp_path / "ft")
    assert _segment(again, DATA, 0, 1000).ok and compared == []
    # Controls: a resend cut at other boundaries is compared with the stored bytes (accepted), and other
    # bytes at the same offset and length (another digest) are compared and refused.
    assert _segment(again, DATA, 500, 1000).ok and compared == [500]
    forged = bytearray(DATA)
    forged[1200] ^= 0xFF
    refused = _segment(again, bytes(forged), 1000, 1000)
    assert refused.reason_code is ReasonCode.CANCEL and compared == [500, 1000]
    for offset in range(2000, len(DATA), 1000):
        _ok(_segment(again, DATA, offset, 1000))
    _ok(_fin(again, DATA))  # the stored bytes are the file's
