"""Verifying a disclosure package takes memory bounded by what it discloses, not by its redacted lines.

A package's ledger segment runs from the disclosed item's first entry to the central's head, so a package of
an item docked months ago holds one redacted line per entry the station wrote since: millions on a busy
station. `edge verify` used to keep every line it read (about 0.55 kB each, 540 MB per million; review 5).
Here a genuine package (:mod:`tests.audit.long_segment`: a real station ledger, pushed to and packaged by a
running central) is verified with ``n`` and ``10 n`` redacted lines: ten times the lines may cost at most
twice the verifier's peak Python memory (tracemalloc).
"""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

from edge.custody.disclosure import ledger_paths
from edge.verify.package import verify_package
from edge.verify.station import VerifyReport
from tests.audit.long_segment import STATION, long_package

SMALL, LARGE = 2_000, 20_000


def _verified(folder: Path) -> tuple[VerifyReport, int]:
    """The report on the package and the verifier's peak Python memory in bytes."""
    gc.collect()
    tracemalloc.start()
    try:
        report = verify_package(folder)
        return report, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


async def test_ten_times_the_redacted_lines_cost_at_most_twice_the_memory(tmp_path: Path) -> None:
    (tmp_path / "small").mkdir()
    (tmp_path / "large").mkdir()
    small_package = (await long_package(tmp_path / "small", SMALL)).folder
    large_package = (await long_package(tmp_path / "large", LARGE)).folder
    small, small_peak = _verified(small_package)
    large, large_peak = _verified(large_package)
    lines = [(package / ledger_paths(STATION).entries).read_bytes().count(b"\n")
             for package in (small_package, large_package)]
    assert lines[1] >= 9 * lines[0]
    # Control: both packages are genuine and whole, and the verifier read and checked every line of
    # them (each redacted line's hash recomputed and its tag tested against the disclosed item).
    for report, count in ((small, lines[0]), (large, lines[1])):
        assert report.problems == [], report.problems
        assert set(report.unproven) == {"origin"}, report.unproven  # no central key pinned here
        assert report.checked["ledger_entries"] == count
        redacted = report.checked["ledger_redacted_tags_checked"]
        assert count - 10 < redacted < count
        assert any(note.startswith(f"{redacted} ledger entries of items outside") for note in report.notes)
    mib = 2**20
    assert large_peak <= 2 * small_peak, (
        f"verifying {lines[0]} ledger lines took {small_peak / mib:.1f} MiB at peak, {lines[1]} lines "
        f"{large_peak / mib:.1f} MiB")
