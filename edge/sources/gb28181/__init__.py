"""GB/T 28181 downloads as a source of the ingest pipeline: per recording, the raw PS as received (the
evidentiary original) and the MP4 made from it (:mod:`edge.sources.gb28181.recordings`); each recording
downloaded once (:mod:`edge.sources.gb28181.downloads`)."""

from edge.sources.gb28181.downloads import (
    DeviceGone,
    DownloadReport,
    GbDownloads,
    PassEnded,
    StartDownload,
    Transfer,
    WindowClosed,
)
from edge.sources.gb28181.recordings import (
    SOURCE_KIND,
    DownloadedRecording,
    GbRecordings,
    RecordingRef,
    already_sealed,
    ingest_download,
    mp4_key,
    raw_key,
    sealed_attempts,
)

__all__ = [
    "SOURCE_KIND",
    "DeviceGone",
    "DownloadReport",
    "DownloadedRecording",
    "GbDownloads",
    "GbRecordings",
    "PassEnded",
    "RecordingRef",
    "StartDownload",
    "Transfer",
    "WindowClosed",
    "already_sealed",
    "ingest_download",
    "mp4_key",
    "raw_key",
    "sealed_attempts",
]
