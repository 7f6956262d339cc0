"""GB/T 28181 downloads as a source of the ingest pipeline: per recording, the raw PS as received (the
evidentiary original) and the MP4 made from it (:mod:`edge.sources.gb28181.recordings`)."""

from edge.sources.gb28181.recordings import (
    SOURCE_KIND,
    DownloadedRecording,
    GbRecordings,
    RecordingRef,
    already_sealed,
    ingest_download,
    mp4_key,
    raw_key,
)

__all__ = [
    "SOURCE_KIND",
    "DownloadedRecording",
    "GbRecordings",
    "RecordingRef",
    "already_sealed",
    "ingest_download",
    "mp4_key",
    "raw_key",
]
