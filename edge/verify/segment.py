"""One pass over a disclosure package's ledger segment (``ledger/STATION/entries.jsonl``), keeping only what
the later checks need.

A package's segment runs from the first disclosed entry to the central's head: a package of an item docked
months ago holds one redacted line per entry the station wrote since, up to millions. So each line is
checked as it is read (its chain link and hash by :func:`edge.custody.disclosure.ledger_segment_problems`,
fed the same lines) and then dropped, unless it is a whole (shown) entry: those are kept for the item,
membership and item-chain checks, and are as few as the disclosed items' entries and their dockings'.
What is kept of the redacted lines is bounded by what the package states or signs, never by their
number: the lines at the seqs package.json, the manifests and the final checkpoint name, the lines whose
hash a shown entry has too, the hits of a disclosed item's tag, and the seqs of format-1 lines as runs.

:class:`SegmentScan` is pure (the caller reads the file): it does per line what the verifier used to do
over the whole list afterwards, with the same outcomes:

- each checkpoints.jsonl line is checked against the entry at its seq (the last line there, as a lookup by
  seq gave), its signature and key epoch once up front;
- for the binding walk (which runs backwards from the signed checkpoints once they are all known) it keeps
  the segment's skeleton: the whole entries, one mark per run of format-1 redacted lines (a chain cannot
  bind through them: their hashes are the central's word), and the redacted lines at a seq a checkpoint
  names; the format-2 lines between are left out, as the walk passes through them unchanged (their hashes
  are recomputed);
- format-2 redacted lines' item tags are tested against the disclosed items; format-1 lines are kept as
  runs of seqs, or named stripped after a format-2 entry.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from dataclasses import dataclass

from edge.custody.disclosure import key_epoch_problem
from edge.custody.errors import CanonicalJsonError, LedgerError
from edge.custody.keys import verify_signature
from edge.custody.keyschedule import KeySchedule
from edge.custody.ledger import (
    Checkpoint,
    ItemTagTester,
    LedgerEntry,
    RedactedEntry,
    checkpoint_payload,
    entry_format,
    entry_hash,
)
from edge.custody.problems import Problem
from edge.custody.text import printable

__all__ = ["SegmentScan", "SignedLine"]

_FORMAT_1 = None  # in the skeleton: a run of format-1 redacted lines at no anchor seq


@dataclass
class SignedLine:
    """One line of checkpoints.jsonl and what became of it."""

    where: str
    checkpoint: Checkpoint
    # Decided without the entry: signed for another station (``foreign``), or by a key that is not the
    # station's, outside its epoch, or with a signature that does not verify (``unusable``).
    foreign: str | None = None
    unusable: str | None = None
    seen: bool = False  # a line of the segment holds its seq
    found: str | None = None  # what the (last) entry at its seq shows against it
    binds: bool = False  # it signs the recomputed hash of the whole entry at its seq


class SegmentScan:
    """What one pass over a station's segment leaves for the checks that follow it (module docstring).

    ``items``: the package's disclosed items of this station (their tags are tested). ``wanted_seqs``: the
    seqs whose line later checks look up (package.json's head and last entries, the final checkpoint's,
    the manifests' acquired entries): the line there is kept even when redacted. ``watched_seqs``: seqs
    at which every redacted line is recorded in ``redacted_at`` (the manifests' acquired entries).
    ``signed``: the checkpoints.jsonl lines, ``final_seq`` the seq of the checkpoint that ends the segment
    (checkpoint.json), ``schedule`` the station's keys over their epochs (None: no key is trusted, no line
    binds)."""

    def __init__(
        self, station: str, *, items: Iterable[str] = (), wanted_seqs: Iterable[int] = (),
        watched_seqs: Iterable[int] = (), signed: Iterable[tuple[str, Checkpoint]] = (),
        final_seq: int | None = None, schedule: KeySchedule | None = None,
    ) -> None:
        self.station = station
        self.schedule = schedule
        self.lines = 0
        self.first_seq: int | None = None
        self.last_seq: int | None = None
        self.redacted = 0
        self.recomputable = 0  # format-2 redacted lines: their hash recomputed, their tag tested
        self.shown: list[LedgerEntry] = []  # the whole entries, in file order
        # The last line at a seq or with a hash: every whole entry, and a redacted line only where a later
        # check looks (a wanted seq) or where it replaces a whole entry's answer.
        self.by_seq: dict[int, LedgerEntry | RedactedEntry] = {}
        self.by_hash: dict[str, LedgerEntry | RedactedEntry] = {}
        self.tag_hits: list[tuple[str, int]] = []  # (disclosed item, seq) of a redacted line with its tag
        self.format1_runs: list[list[int]] = []  # [first, last] seqs of consecutive format-1 lines
        self.stripped: list[int] = []  # seqs of format-1 redacted lines after format 2
        self.redacted_at: list[int] = []  # seqs of redacted lines at a watched seq
        self._tester = ItemTagTester(items)
        self._wanted = set(wanted_seqs)
        self._watched = set(watched_seqs)
        self._seen_format_2 = False
        # What the binding walk needs (module docstring): whole entries, redacted lines at an anchor seq (one
        # a checkpoint names), and _FORMAT_1 for each run of other format-1 redacted lines.
        self._skeleton: list[LedgerEntry | RedactedEntry | None] = []
        self.signed_lines = [self._line(where, cp) for where, cp in signed]
        self._at_seq: dict[int, list[SignedLine]] = {}
        for line in self.signed_lines:
            if line.foreign is None:
                self._at_seq.setdefault(line.checkpoint.seq, []).append(line)
        self._anchor_seqs = set(self._at_seq) | ({final_seq} if final_seq is not None else set())

    def _line(self, where: str, cp: Checkpoint) -> SignedLine:
        line = SignedLine(where, cp)
        if cp.station != self.station:
            line.foreign = f"is signed for station {printable(cp.station)}, not {self.station}"
            return line
        schedule = self.schedule
        key = schedule.get(cp.key_id) if schedule is not None else None
        if schedule is None or key is None:
            line.unusable = (f"is signed by key {printable(cp.key_id)}, which is not one of the station's "
                             "keys trusted here (listed in the package, pinned with --station-key when any "
                             "are, on the chain of its key rotations)")
            return line
        epoch = key_epoch_problem(schedule, cp.key_id, cp.seq)
        if epoch is not None:
            line.unusable = epoch
            return line
        try:
            signature = base64.b64decode(cp.signature.encode("ascii"), validate=True)
            payload = checkpoint_payload(cp.station, cp.seq, cp.hash, cp.time)
        except (binascii.Error, UnicodeEncodeError, CanonicalJsonError):
            signature, payload = b"", b""
        if not payload or not verify_signature(key.public_key, signature, payload):
            line.unusable = (f"signature (seq {cp.seq}) does not verify with station key {key.key_id}: the "
                             "checkpoint was forged or altered")
        return line

    def feed(self, entry: LedgerEntry | RedactedEntry) -> None:
        """One line of the segment, in file order."""
        self.lines += 1
        if self.first_seq is None:
            self.first_seq = entry.seq
        self.last_seq = entry.seq
        self._check_lines(entry)
        if isinstance(entry, LedgerEntry):
            self.shown.append(entry)
            self.by_seq[entry.seq] = entry
            self.by_hash[entry.hash] = entry
            if entry_format(entry.data) == 2:
                self._seen_format_2 = True
            self._skeleton.append(entry)
            return
        self.redacted += 1
        # Kept only where a later lookup asks (or where a shown entry's place would otherwise answer).
        if entry.seq in self._wanted or entry.seq in self.by_seq:
            self.by_seq[entry.seq] = entry
        if entry.hash in self.by_hash:
            self.by_hash[entry.hash] = entry
        if entry.seq in self._watched:
            self.redacted_at.append(entry.seq)
        if entry.seq in self._anchor_seqs:
            self._skeleton.append(entry)
        elif not entry.recomputable and (not self._skeleton or self._skeleton[-1] is not _FORMAT_1):
            self._skeleton.append(_FORMAT_1)
        if entry.recomputable:
            self.recomputable += 1
            self._seen_format_2 = True
            assert entry.item_tag is not None
            hidden = self._tester.item_of(entry.seq, entry.item_tag)
            if hidden is not None:
                self.tag_hits.append((hidden, entry.seq))
            return
        if self._seen_format_2:
            self.stripped.append(entry.seq)
        elif self.format1_runs and self.format1_runs[-1][1] + 1 == entry.seq:
            self.format1_runs[-1][1] = entry.seq
        else:
            self.format1_runs.append([entry.seq, entry.seq])

    def _check_lines(self, entry: LedgerEntry | RedactedEntry) -> None:
        """Check the checkpoints.jsonl lines at the entry's seq against it (the last entry there decides,
        as a lookup by seq did)."""
        lines = self._at_seq.get(entry.seq)
        if not lines:
            return
        recomputed: str | None = None
        if isinstance(entry, LedgerEntry):
            try:
                recomputed = entry_hash(entry.body())
            except (LedgerError, CanonicalJsonError):
                recomputed = None  # the chain check names an entry that cannot be hashed
        for line in lines:
            cp = line.checkpoint
            line.seen, line.found, line.binds = True, None, False
            if line.unusable is not None:
                continue
            if isinstance(entry, RedactedEntry):
                if entry.hash != cp.hash:
                    line.found = (f"the station signed hash {cp.hash[:80]} at seq {cp.seq}, but the redacted "
                                  f"line there has hash {entry.hash[:80]}: the redacted line was altered")
            elif recomputed is None:
                pass
            elif recomputed != cp.hash:
                line.found = (f"the station signed hash {cp.hash[:80]} at seq {cp.seq}, but the entry there "
                              f"hashes to {recomputed}: the entry was altered")
            else:
                line.binds = True

    def signed_problems(self) -> list[Problem]:
        """Every checkpoints.jsonl line that does not hold, in line order."""
        first, last = (self.first_seq, self.last_seq) if self.first_seq is not None else (0, -1)
        problems: list[Problem] = []
        for line in self.signed_lines:
            what = line.foreign
            if what is None and not line.seen:
                what = f"names seq {line.checkpoint.seq}, outside the segment's seqs {first}-{last}"
            what = what or line.unusable or line.found
            if what is not None:
                problems.append(Problem(line.where, what))
        return problems

    def bound_seqs(self) -> set[int]:
        """Seqs of whole entries whose recomputed hash a valid station checkpoint signs."""
        return {line.checkpoint.seq for line in self.signed_lines if line.binds}

    def not_bound(self, signed: set[int]) -> list[LedgerEntry]:
        """Whole entries from which no chain reaches an entry at a ``signed`` seq, from the last line back.

        Walking backwards: an entry is reached when it or a later one is signed with only whole entries and
        format-2 redacted lines between (their hashes are recomputed, so the chain binds through them); a
        format-1 redacted line breaks the chain (its hash is the central's word)."""
        reached = False
        found: list[LedgerEntry] = []
        for entry in reversed(self._skeleton):
            if entry is _FORMAT_1:
                reached = False
            elif isinstance(entry, RedactedEntry):
                reached = (reached or entry.seq in signed) and entry.recomputable
            else:
                reached = reached or entry.seq in signed
                if not reached:
                    found.append(entry)
        return found

    def format1_after(self, seq: int | None) -> tuple[int, int, int] | None:
        """(count, first, last) of the format-1 redacted lines after ``seq`` (all when None), in file
        order; None when there is none."""
        count, first, last = 0, None, 0
        for start, end in self.format1_runs:
            low = start if seq is None else max(start, seq + 1)
            if low > end:
                continue
            count += end - low + 1
            first = low if first is None else first
            last = end
        return None if first is None else (count, first, last)
