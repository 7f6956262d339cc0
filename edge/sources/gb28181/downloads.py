"""Downloading a device's recordings once each, into the ingest pipeline.

`GbDownloads.download(recordings)` takes the recordings the platform listed (RecordInfo items, as
`RecordingRef`s, for example from `RecordingRef.from_record_item`) and, one after the other (devices
serve few history sessions at a time: wvp #980), for each one not already sealed in the store
(`sealed_attempts`: its key comes from the recording alone, so this holds across restarts; a download
sealed incomplete does not count, and the recording is downloaded again, up to `MAX_INCOMPLETE_ATTEMPTS`
times, each a new pair of items):

1. picks a new raw PS file name in the spool (never from the device's text) and asks `start_download`
   (the platform's session: INVITE s=Download, the media receiver on that file, until MediaStatus 121,
   BYE, the device closing, idle, limit or error) for the transfer;
2. a transfer that brought no byte is an `error` entry naming the recording (stage `download`), the empty
   file is removed, the next recording is tried; a session that could not be made (the platform raised)
   likewise; a device gone offline (`DeviceGone` from `start_download`) ends the call instead;
3. anything received, however the session ended, goes to `ingest_download`: the raw PS and its MP4 are
   sealed, its gaps and how it ended are in the manifest (a partial transfer is still evidence of what
   was received; the next listing offers the recording again only if its raw PS was not sealed).

`start_download` is the seam to the platform (edge.gb28181.platform `start_session` with a Download
`MediaRequest` and the session's `wait()`): the composition root adapts it, so this module depends on
the media receiver's outcome only.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.custody.ledger import EntryType
from edge.gb28181.media import MediaOutcome
from edge.ingest.pipeline import IngestPipeline
from edge.sources.gb28181.recordings import (
    DownloadedRecording,
    DownloadIngest,
    GbRecordings,
    RecordingRef,
    display_text,
    ingest_download,
    sealed_attempts,
)

log = logging.getLogger(__name__)

# A recording whose downloads came incomplete this many times is not asked for again.
MAX_INCOMPLETE_ATTEMPTS = 3


@dataclass(frozen=True)
class Transfer:
    """What a download session gave: the receiver's outcome, and facts for the `acquired` entry (the
    session's Call-ID, the SSRC offered and answered, why the session ended)."""

    outcome: MediaOutcome
    facts: Mapping[str, Any] = field(default_factory=dict)


class DeviceGone(Exception):
    """Raised by `start_download` when the device is no longer there (offline): the rest of the listing
    waits for its next registration instead of becoming one `error` entry per recording."""


StartDownload = Callable[[RecordingRef, Path], Awaitable[Transfer]]


@dataclass
class DownloadReport:
    """One `download` call: what was skipped (already sealed), ingested, and what failed and why."""

    skipped: list[RecordingRef] = field(default_factory=list)
    ingested: list[DownloadIngest] = field(default_factory=list)
    failed: list[tuple[RecordingRef, str]] = field(default_factory=list)
    given_up: list[RecordingRef] = field(default_factory=list)  # incomplete MAX_INCOMPLETE_ATTEMPTS times


class GbDownloads:
    """The downloads of one device (see the module docstring)."""

    def __init__(
        self,
        pipeline: IngestPipeline,
        source: GbRecordings,
        start_download: StartDownload,
        *,
        device_clock_offset_ms: Callable[[], int | None] = lambda: None,
        device_tz_offset_min: int | None = None,
        convert_timeout_s: float = 600.0,
    ) -> None:
        self.pipeline = pipeline
        self.source = source
        self.start_download = start_download
        self.device_clock_offset_ms = device_clock_offset_ms
        self.device_tz_offset_min = device_tz_offset_min
        self.convert_timeout_s = convert_timeout_s

    async def download(self, recordings: Sequence[RecordingRef]) -> DownloadReport:
        report = DownloadReport()
        for ref in recordings:
            if ref.device_id != self.source.device_id:
                raise ValueError(f"recording of device {ref.device_id} given to the downloads of "
                                 f"{self.source.device_id}")
            attempts = sealed_attempts(self.pipeline.store, ref)
            if any(attempts):
                report.skipped.append(ref)
                continue
            if len(attempts) >= MAX_INCOMPLETE_ATTEMPTS:
                report.given_up.append(ref)  # incomplete each time: what came is sealed, no more tries
                continue
            failure = await self._one(ref, report, attempt=len(attempts) + 1)
            if failure is not None:
                report.failed.append((ref, failure))
        return report

    async def _one(self, ref: RecordingRef, report: DownloadReport, *, attempt: int) -> str | None:
        raw = self.source.spool / f"download-{uuid.uuid4().hex}.ps"
        shown = f"{ref.device_id}/{ref.channel_id} {display_text(ref.start_time, 64)}"
        try:
            transfer = await self.start_download(ref, raw)
        except DeviceGone:
            raw.unlink(missing_ok=True)
            raise
        except Exception as exc:  # the platform's refusal, in whatever form: recorded, next recording
            return await self._failed(ref, raw, shown, f"no download session: {exc}")
        outcome = transfer.outcome
        if outcome.bytes == 0:
            return await self._failed(ref, raw, shown, f"no media came ({outcome.ended}: {outcome.detail})")
        offset = self.device_clock_offset_ms()
        download = DownloadedRecording(ref, raw, outcome, device_clock_offset_ms=offset,
                                       device_tz_offset_min=self.device_tz_offset_min,
                                       facts=dict(transfer.facts), attempt=attempt)
        done = await ingest_download(self.pipeline, self.source, download,
                                     convert_timeout_s=self.convert_timeout_s)
        report.ingested.append(done)
        if done.raw_item is None:
            return "the raw PS was not sealed (see the pipeline's error entries)"
        return None

    async def _failed(self, ref: RecordingRef, raw: Path, shown: str, reason: str) -> str:
        raw.unlink(missing_ok=True)
        log.error("gb28181 %s: download of %s: %s", ref.device_id, shown, reason)
        data = {"device_id": ref.device_id, "channel_id": ref.channel_id, "original": shown,
                "stage": "download", "reason": reason}
        repository = self.pipeline.repository
        await self.pipeline.commit(lambda: repository.entry(EntryType.ERROR, None, data))
        return reason
