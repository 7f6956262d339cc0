"""A GB/T 28181 device simulator: a 4G body-worn recorder or an IPC over real UDP/TCP sockets.

Run it on its own::

    python -m simulators gb28181-device --platform HOST:PORT --platform-id 20DIGITS \\
        --device-id 20DIGITS --password-file FILE [--media-dir DIR] [--transport udp|tcp] \\
        [--keepalive-interval S] [--expires S] [--clock-offset S] [--seed N] [--fault NAME[=P] ...]
        [--contact-host IP] [--media-host IP] [--ignore-date] [--live-file FILE] [--generate N]

or from Python: `simulators.gb28181.device.SimulatedDevice(DeviceSettings(...))`, `await run()` until
`await close()` (or `async with`); `settings.py` documents every field.

What it does (device.py): REGISTER with digest (with or without qop, as challenged), re-registration at
80 % of the granted expiry, `Expires: 0` on a clean stop, a Keepalive every interval (a 403/404 answer
makes it register again). Catalog (its channels), DeviceInfo, DeviceStatus (DeviceTime from its own clock:
UTC + `--utc-offset`, off by `--clock-offset`) and RecordInfo (the files in --media-dir, split over several
MESSAGEs when there are more than `--records-per-message`, same SN, SumNum the total, each part sent after
the platform's 200 to the previous one). Each file is one recording: its time range comes from a sidecar
`NAME.json` (`{"start": "...", "end": "..."}`, device-local) or ends at the file's mtime and lasts its
ffprobe duration. INVITE Play (loops the first recording or `--live-file`, with its sound as G.711A
when it has any, or ffmpeg's testsrc without sound when there are no files), Playback (real time) and
Download (at `a=downloadspeed`) are answered with SDP (`y=` as offered,
or its own SSRC when the offer has none), then the file goes out as GB PS (drivers/gb28181/ps.PsMuxer:
H.264 or H.265, G.711A audio when the source has audio) over RTP: UDP, TCP where the device connects
(the platform offered `a=setup:passive`) or TCP where it listens (`a=setup:active`), RFC 4571 framing.
MediaStatus 121 goes inside the dialog at the end of a history file; BYE ends a session (a session that
ended and gets no BYE is ended after `bye_wait_s`; more than `max_sessions` get 486; a new INVITE with
the Subject sender tag of a running stream tears that stream down, Annex M c).

`--generate N` first makes N distinct recordings in --media-dir (ffmpeg test pattern, H.264 + AAC, each
with its sidecar, ending now by the device's clock); from Python: `media.generate_recordings()`.

Like a real device it sets its clock from the Date header of the REGISTER 200 (`--ignore-date` keeps
it), and `--contact-host` puts a 4G carrier-private address in Via and Contact (the device is reachable
only at its source address). Raw H.264/H.265 files go out in decode order at their frame rate.

Faults (`--fault NAME ...`, repeatable; `DeviceSettings.faults`):

    wrong-password     answers the digest challenge with another password (the platform should refuse)
    no-121             no MediaStatus 121 at the end of a Download or Playback
    different-y        answers with another SSRC in y= and streams with that one
    missing-y          answers without y= (streams with the offered SSRC)
    ssrc-mismatch      answers y= as offered, but RTP carries another SSRC
    loss=P             drops each RTP packet with probability P (its sequence number is skipped)
    reorder=P          sends a packet after its successor with probability P
    duplicate=P        sends a packet twice with probability P
    nat-rebind         after its first keepalive, SIP leaves and arrives on a new local port; a platform
                       that follows only REGISTERs reaches it there once it registers again, which it
                       does before the expiry the platform granted runs out (as real devices do)
    gb2312-name        Chinese device and channel names (bodies are GB2312 either way)
    split-recordinfo   RecordInfo one item per MESSAGE, the parts out of order
    slow               history streams at a quarter of real time, whatever downloadspeed asked
    die-mid-stream     the stream stops halfway: no more RTP, no 121, a TCP media connection is reset
    stall=N            the stream pauses halfway for N seconds (once per session), then goes on at its pace
    audio-drop=N       from halfway, N seconds of audio are not sent (once per session); the picture goes on
    late-stall=N       as stall=N, a whole file's length after halfway (with audio-drop: a stall while the
                       sound is missing)
    keepalive-only=N   as late-stall=N, but through the pause RTP packets without payload go on (RFC 6263
                       keepalives every 0.2 s in the stream's numbering, every other one all padding)

The packet faults are seeded (`--seed`): the same seed drops, swaps and repeats the same packets, and
`MediaSession.stats` names their sequence numbers. The packet faults act on TCP media too (a device whose
buffer overflows skips packets there as well).

Bounded: files are read through ffmpeg pipes one access unit at a time, TCP writes wait for the
platform to read, sessions are limited (`max_sessions`, then 486), RecordInfo answers at most 10000 items.

Not simulated: MANSRTSP playback control (INFO), subscriptions, alarms, SIP over TLS, audio talk-back.
"""
