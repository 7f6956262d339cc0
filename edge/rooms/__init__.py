"""Interview and hearing rooms (询问室/听证室): case-bound sessions, recorded in segments sealed as they
close.

One module per job:

* :mod:`edge.rooms.session`: the session model (room, case number, location, collector, subject 证明对象,
  persons present and their roles, marks), validated; pure.
* :mod:`edge.rooms.state`: sessions persisted under the store (``<store>/rooms/``) with atomic writes, so a
  crash of the agent never loses one.
* :mod:`edge.rooms.argv`: ffmpeg and ffprobe command lines, built by pure functions (lists).
* :mod:`edge.rooms.segments`: the ffmpeg segment list (CSV), parsed as it grows: a line is a closed segment.
* :mod:`edge.rooms.capture`: one ffmpeg run of one source (asyncio subprocess, stopped gracefully).
* :mod:`edge.rooms.sealing`: each closed segment through the one ingest pipeline, then `segment_sealed`
  with its seal latency.
* :mod:`edge.rooms.recording`: a session's sources under a supervisor (restart with backoff, a source
  judged by its last segment's age); every interruption a `gap` ledger entry.
* :mod:`edge.rooms.composite`: a room's picture-in-picture with a burnt-in overlay, one more derived output
  recorded like a source; :mod:`edge.rooms.overlay_text`: the overlay's text, in files drawtext reads;
  :mod:`edge.rooms.feed_relay`: each source's feed to the composite, relayed by the agent over pipes.
* :mod:`edge.rooms.manifest`: the signed session manifest sealed at stop.
* :mod:`edge.rooms.joined`: one joined MP4 per source at stop (concat, ``-c copy``), each segment re-read
  against its sealed hash first.
* :mod:`edge.rooms.statement`: the session statement (相关说明) for signature; pure.
* :mod:`edge.rooms.products`: what a stop makes after the manifest (joined files, statement), sealed.
* :mod:`edge.rooms.documents`: documents (笔录: PDF, JPEG, PNG by content) attached to a session.
* :mod:`edge.rooms.export`: a stopped session's disc image (ISO 9660 by xorriso), checked against the ledger.
* :mod:`edge.rooms.service`: start, stop, mark, status; what the local API and `edge room` call.
* :mod:`edge.rooms.hardware`: the room's serial hardware (lamp and button panel, climate sensor, PTZ
  camera), one supervised task per room asking the service as the local API does.
"""
