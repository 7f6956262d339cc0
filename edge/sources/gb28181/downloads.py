"""Downloading a device's recordings once each, into the ingest pipeline.

`GbDownloads.download(recordings)` takes the recordings the platform listed (RecordInfo items, as
`RecordingRef`s, for example from `RecordingRef.from_record_item`) and, one after the other (devices
serve few history sessions at a time: wvp #980), for each one not already sealed complete in the store
(`sealed_downloads_of_device`: the keys come from the recording alone, so this holds across restarts):

1. a recording whose earlier downloads were all sealed incomplete (short, cut, or `lossy`: RTP packets lost
   in transfer) is downloaded again, as attempt 2, 3 ...
   (each a new pair of items), until `MAX_INCOMPLETE_ATTEMPTS` came incomplete; downloads cut short by
   the device going offline or the station stopping (their manifests say `interrupted`) are not the
   recording's fault and do not count there, but `MAX_INTERRUPTED_ATTEMPTS` of them end it too. Then the
   recording is given up (`given_up_because`): one `error` entry of stage `given-up` on its last raw PS
   names the device, channel and recording and why, written once (later listings find it);
2. picks a new raw PS file name in the spool (never from the device's text) and asks `start_download`
   (the platform's session: INVITE s=Download, the media receiver on that file, until MediaStatus 121,
   BYE, the device closing, idle, limit or error) for the transfer;
3. a transfer that brought no byte is an `error` entry naming the recording (stage `download`), the empty
   file is removed, the next recording is tried; a session that could not be made (the platform raised)
   likewise; a device gone offline or the download window closed (`PassEnded` from `start_download`)
   ends the call instead (`DownloadReport.stopped`);
4. anything received, however the session ended, goes to `ingest_download`: the raw PS and its MP4 are
   sealed, its gaps and how it ended are in the manifest (a partial transfer is still evidence of what
   was received, whether the recording or the device's leaving cut it short).

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
    SealedDownload,
    display_text,
    ingest_download,
    sealed_downloads_of_device,
)

log = logging.getLogger(__name__)

# A recording whose downloads came incomplete this many times is not asked for again.
MAX_INCOMPLETE_ATTEMPTS = 3
# Downloads cut short by the device going offline (or the station stopping) are not the recording's
# fault and do not count above; a device that drops in every transfer still stops being asked after this
# many, so the station does not loop over one recording forever.
MAX_INTERRUPTED_ATTEMPTS = 10
GIVEN_UP_STAGE = "given-up"
MAX_ITEMS_NAMED = 16


def given_up_because(earlier: Sequence[SealedDownload]) -> str | None:
    """Why a recording with these sealed downloads, none complete, is not downloaded again (None: it is)."""
    interrupted = [d for d in earlier if d.interrupted]
    incomplete = [d for d in earlier if not d.complete and not d.interrupted]
    if len(incomplete) >= MAX_INCOMPLETE_ATTEMPTS:
        last = incomplete[-1].incomplete or "no reason sealed"
        lossy = sum(1 for d in incomplete if d.lossy)
        said = (f"; {lossy} of the copies sealed are lossy (RTP packets lost in transfer: holes where their "
                "gap entries say; a TCP media transport avoids this on a lossy link)") if lossy else ""
        return (f"incomplete at each of its {len(incomplete)} downloads (the last: {last}){said}; what came "
                "is sealed, the recording is not downloaded again")
    if len(interrupted) >= MAX_INTERRUPTED_ATTEMPTS:
        return (f"{len(interrupted)} downloads were cut short by the device going offline or the station "
                "stopping; what came is sealed, the recording is not downloaded again")
    return None


def shown_recording(ref: RecordingRef) -> str:
    """The recording as logs and ledger entries name it (device text escaped)."""
    return (f"{display_text(ref.device_id, 64)}/{display_text(ref.channel_id, 64)} "
            f"{display_text(ref.start_time, 64)}")


@dataclass(frozen=True)
class Transfer:
    """What a download session gave: the receiver's outcome, and facts for the `acquired` entry (the
    session's Call-ID, the SSRC offered and answered, why the session ended)."""

    outcome: MediaOutcome
    facts: Mapping[str, Any] = field(default_factory=dict)


class PassEnded(Exception):
    """Raised by `start_download` when no more recordings are to be downloaded now, through no fault of
    theirs: the call ends, nothing is recorded as failed, the rest waits for the next pass."""


class DeviceGone(PassEnded):
    """The device is no longer there (offline): the rest of the listing waits for its next registration
    instead of becoming one `error` entry per recording."""


class WindowClosed(PassEnded):
    """The schedule's download window closed: the rest waits for the window to open again."""


StartDownload = Callable[[RecordingRef, Path], Awaitable[Transfer]]


@dataclass
class DownloadReport:
    """One `download` call: what was skipped (already sealed), ingested, and what failed and why."""

    skipped: list[RecordingRef] = field(default_factory=list)
    ingested: list[DownloadIngest] = field(default_factory=list)
    failed: list[tuple[RecordingRef, str]] = field(default_factory=list)
    # incomplete MAX_INCOMPLETE_ATTEMPTS times, or interrupted MAX_INTERRUPTED_ATTEMPTS times
    given_up: list[RecordingRef] = field(default_factory=list)
    stopped: PassEnded | None = None  # the device left or the window closed: the rest was not tried


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
        sealed = sealed_downloads_of_device(self.pipeline.store, self.source.device_id,
                                            {ref.identity() for ref in recordings})
        for ref in recordings:
            if ref.device_id != self.source.device_id:
                raise ValueError(f"recording of device {ref.device_id} given to the downloads of "
                                 f"{self.source.device_id}")
            earlier = sealed.get(ref.identity(), [])
            if any(d.complete for d in earlier):
                report.skipped.append(ref)
                continue
            why = given_up_because(earlier)
            if why is not None:
                report.given_up.append(ref)  # what came is sealed, no more tries
                await self._given_up(ref, earlier, why)
                continue
            attempt = max((d.attempt for d in earlier), default=0) + 1
            try:
                failure = await self._one(ref, report, attempt=attempt)
            except PassEnded as exc:
                report.stopped = exc  # what was done so far stays counted
                break
            if failure is not None:
                report.failed.append((ref, failure))
        return report

    async def _given_up(self, ref: RecordingRef, earlier: list[SealedDownload], why: str) -> None:
        """The decision not to download `ref` again, on the ledger once: an `error` entry of stage
        `given-up` on its last sealed raw PS, naming the device, channel and recording (escaped) and why.
        Later listings find that entry and write none (the recording is listed again at every pass)."""
        last = earlier[-1].item
        if any(e.type == EntryType.ERROR and e.data.get("stage") == GIVEN_UP_STAGE
               for e in self.pipeline.store.ledger.entries(item=last)):
            return
        shown = shown_recording(ref)
        data = {"source": "gb28181", "stage": GIVEN_UP_STAGE, "device_id": display_text(ref.device_id, 64),
                "channel_id": display_text(ref.channel_id, 64), "original": shown,
                "recording": ref.described(), "attempts": len(earlier),
                "raw_items": [d.item for d in earlier][-MAX_ITEMS_NAMED:], "reason": why}
        log.error("gb28181 %s: %s given up: %s", display_text(ref.device_id, 64), shown, why)
        repository = self.pipeline.repository
        await self.pipeline.commit(lambda: repository.entry(EntryType.ERROR, last, data))

    async def _one(self, ref: RecordingRef, report: DownloadReport, *, attempt: int) -> str | None:
        raw = self.source.spool / f"download-{uuid.uuid4().hex}.ps"
        shown = shown_recording(ref)
        try:
            transfer = await self.start_download(ref, raw)
        except PassEnded:
            raw.unlink(missing_ok=True)
            raise
        except Exception as exc:  # the platform's refusal, in whatever form: recorded, next recording
            return await self._failed(ref, raw, shown, f"no download session: {exc}")
        outcome = transfer.outcome
        if outcome.bytes == 0:
            return await self._failed(ref, raw, shown, f"no media came ({outcome.ended}: {outcome.detail})")
        # The platform gives the offset of the clock that stamped this recording (the one before the
        # station last set it, for a recording made before); the device's latest is the fallback.
        facts = dict(transfer.facts)
        offset = facts["device_clock_offset_ms"] if "device_clock_offset_ms" in facts \
            else self.device_clock_offset_ms()
        download = DownloadedRecording(ref, raw, outcome, device_clock_offset_ms=offset,
                                       device_tz_offset_min=self.device_tz_offset_min,
                                       facts=facts, attempt=attempt)
        done = await ingest_download(self.pipeline, self.source, download,
                                     convert_timeout_s=self.convert_timeout_s)
        report.ingested.append(done)
        if done.raw_item is None:
            return "the raw PS was not sealed (see the pipeline's error entries)"
        return None

    async def _failed(self, ref: RecordingRef, raw: Path, shown: str, reason: str) -> str:
        raw.unlink(missing_ok=True)
        log.error("gb28181 %s: download of %s: %s", display_text(ref.device_id, 64), shown, reason)
        data = {"device_id": display_text(ref.device_id, 64), "channel_id": display_text(ref.channel_id, 64),
                "original": shown,
                "stage": "download", "reason": reason}
        repository = self.pipeline.repository
        await self.pipeline.commit(lambda: repository.entry(EntryType.ERROR, None, data))
        return reason
