"""What people and programs see of a running station: one status model, its metrics, its local API.

Modules: :mod:`~edge.observe.sink` (the events the lower layers publish: the only module of this
package they may import), :mod:`~edge.observe.board` (the model: per bay, per supervised task, and the
station), :mod:`~edge.observe.metrics` (Prometheus, on the station's own registry),
:mod:`~edge.observe.api` (aiohttp on a Unix socket, and read-only on loopback TCP for the dock screen),
:mod:`~edge.observe.status_cli` (`edge status`), :mod:`~edge.observe.terminal` (words and tables) and
:mod:`~edge.observe.live` (live per-bay progress bars for `edge demo`).

The JSON (stable; a consumer ignores keys it does not know). Times are ISO 8601 UTC strings
(``2026-12-05T02:41:52Z``), null when unknown. Device text (officer names, serials, models) is escaped
with :func:`edge.custody.text.printable` by the board; every document is written with
:func:`~edge.custody.text.json_printable`. The model carries codes; the words (Chinese and English) live
with the pages that show them (the dock screen, :mod:`edge.observe.terminal`).

``GET /api/v1/status`` -> ``{"station": STATION, "bays": [BAY, ...]}``

STATION::

    {"id": str, "name": str, "unit": {"code": str, "name": str}, "version": str, "started_at": time,
     "key_id": str,                                  # the station signing key's id
     "clock": {"trusted": bool, "source": str, "detail": str},   # may it set recorder clocks (校时)
     "disk": {"free_bytes": int, "total_bytes": int},            # the store's file system
     "ledger": {"head_seq": int, "head_hash": str, "witnessed_seq": int, "witnessed_at": time,
                "unwitnessed_entries": int},
     "central": {"configured": bool, "reachable": bool | null,   # null: not contacted since start
                 "breaker": "closed" | "open" | "half_open" | null, "last_contact_at": time,
                 "last_receipt_at": time},
     "spool": {"items": int, "bytes": int, "oldest_at": time,   # sealed, not yet receipted
               "held": int},     # of those, held: stored copy found changed, not sent until re-acquired
     "tasks": [{"name": str, "state": "running" | "restarting" | "failed" | "stopped", "restarts": int,
                "last_event": str | null,                        # the task's last error, if any
                "last_event_at": time}],                          # its last useful event (liveness)
     "counts": {"refusals": {CLASS: int}, "errors": {STAGE: int}}}   # since the agent started

Refusal classes: the refusing error classes below (``not_allowed``, ``wrong_password``, ``no_password``,
``no_identity``), ``file`` (entries of a volume refused: names, types, sizes) and ``volume`` (a symlink
posing as a volume). Error stages: the ``stage`` of the ledger's ``error`` entries (``copy``, ``verify``,
``device``, ``store``, ``identity``, ``wipe``, ``control``, ``mass-storage``, ``docking``, ...).

BAY::

    {"bay": str,                      # the configured bay number ("1"), or "device:SERIAL" for a
                                      # recorder in no known bay
     "state": "empty" | "authenticating" | "copying" | "verifying" | "awaiting_receipt" | "done" | "error",
     "error_class": null | "not_allowed" | "wrong_password" | "no_password" | "no_identity" | "disk_full"
                    | "rooms_recording" | "pulled_early" | "files_failed" | "no_volume" | "device_error"
                    | "failed",
     "officer": {"name": str, "badge": str} | null,        # badge: 警号
     "device": {"serial": str, "model": str, "battery_pct": int | null} | null,
     "files_done": int, "files_total": int, "bytes_done": int, "bytes_total": int,
     "speed_bps": int | null, "eta_s": float | null,      # while copying
     "bouncing": bool,                # the bay board reports its presence changing too often to act
                                      # on (a worn switch, a faulty board): see the ledger's dock error
     "since": time,                   # when it entered this state
     "updated_at": time}

A bay goes empty -> authenticating -> copying -> verifying -> done (or awaiting_receipt when the wipe
policy waits for the central, or error with its class). It shows empty again once its recorder left,
except after ``pulled_early``, which stays until the next docking there (the officer must dock it again).

The status also holds ``"fleet": FLEET | null`` (null until the agent's fleet task has read it once):
every recorder the station knows, its state, holder, health and last docking, the JSON of
:func:`edge.equipment.fleet.fleet_summary` (documented there), also at ``GET /api/v1/fleet``.

When the station's MQTT telemetry is off because its telemetry salt cannot be used, the status holds
``"mqtt_telemetry": {"enabled": false, "reason": str}`` (no key otherwise; `edge status` shows a line).

With ``[gb28181] enabled = true`` the status also holds ``"gb28181": GB28181`` (edge.gb28181.registry;
device text as the device sent it, escaped by ``json_printable``, times with microseconds)::

    {"sip_id": str, "domain": str, "port": int,
     "devices": [{"device_id": str, "name": str, "online": bool, "registered": bool,
                  "address": "udp:HOST:PORT" | "tcp:HOST:PORT" | null,   # where requests go
                  "registered_at": time, "expires_s": int, "last_keepalive_at": time, "user_agent": str,
                  "device_info": {"name", "manufacturer", "model", "firmware"} | {},
                  "clock_offset_s": float | null, "clock_measured_at": time,   # device minus station
                  "clock_set_at": time | null,   # when the station last set its clock (Date)
                  "keepalive_other_port": {"count": int, "last_from": str, "last_at": time} | null,
                  "channels": [{"channel_id", "name", "status", "manufacturer", "model"}],
                  "sessions": [{"call_id", "channel_id", "kind": "Play" | "Playback" | "Download",
                                "transport", "ssrc_offered": int, "ssrc_answered": int | null,
                                "started_at": time, "state": "inviting" | "streaming" | "ending"}]}],
     "counters": {"registered": int, "refused": int, "bad_input": int, "keepalives": int,
                  "keepalives_other_port": int, "media_status_refused": int,
                  "answers_refused": int},
     "sip_tcp": {"connections": int, "proven": int,   # proven: an authenticated REGISTER came over it
                 "shed": int,   # connections refused or closed to make room since start
                 "refused_all_proven": int,   # of those, refused because every open one was proven
                 "budget": int, "per_address": int,   # budget: from RLIMIT_NOFILE
                 "nofile_soft_limit": int | null},
     "media_udp_receive_buffer": {"asked_bytes": int, "granted_bytes": int, "rmem_max_bytes": int | null,
                                  "limited": bool, "hint": str | null} | null,
     "downloads": {device_id: {...}},                       # edge.sources.gb28181.scheduler
     "live": {device_id: [{"channel_id", "state": "starting" | "streaming" | "interrupted" | "stopping",
                           "transport", "since": time, "streaming_since": time | null, "call_id",
                           "holders": int, "consumers": int, "connections": int, "bytes": int,
                           "interruptions": int, "consumers_cut_off": int, "last_problem": str | null,
                           "interrupted": {"from", "to": null, "detected_at", "reason"} | null,
                           "last_interruption": {"from", "to", "detected_at", "reason"} | null}]}}

``GET /api/v1/bays`` -> ``[BAY, ...]``. ``GET /api/v1/fleet`` -> FLEET (404 on a board with no fleet
view, 503 before its first read). ``GET /api/v1/events`` -> ``text/event-stream``: ``event:
snapshot`` (the whole status, first, and again whenever the reader fell behind), ``event: bay`` (one BAY;
``"state": "removed"`` retires a ``device:`` tile), ``event: station`` (STATION), ``: keep-alive``
comments every 15 s.

``GET /api/v1/items?limit=N`` -> ``[ITEM, ...]``, newest first (N <= 200), ITEM = ``{"item", "sha256",
"size", "device_serial", "officer_no", "acquired_at", "sealed": bool, "upload": "queued" | "uploaded" |
"receipted" | "rejected" | null, "case_number", "important": bool}``. ``GET /api/v1/items/{item}`` ->
ITEM plus ``"receipted_at"``, ``"case"`` (the manifest's case block folded with every ``tagged`` entry),
``"manifest"`` and ``"trail"`` (the item's ledger entries: ``{"seq", "time", "type", "data", "hash"}``).
``POST /api/v1/items/{item}/tags`` with case fields (``case_number``, ``location``, ``collector``,
``subject``, ``important``, ``category``, ``retention``) -> ``{"item", "seq", "by", "changes"}``.
``GET /metrics``: Prometheus text (:mod:`edge.observe.metrics`). Who may call what: :mod:`edge.observe.api`.
"""
