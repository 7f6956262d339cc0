// The room page: renders the rooms' status (GET /api/v1/rooms, read every POLL_MS) and starts, marks
// and stops sessions (POST /api/v1/rooms/ROOM/start|mark|stop, JSON: the browser adds this page's
// Origin, which the station's CSRF guard requires). A refusal shows the station's reason as it is.
// Every text from the station, its configuration or an operator is set with textContent, never as HTML.

import { localTime, parsePersons, secondsSince, sourceState, startBody } from "./model.js";
import { saveLanguage, savedLanguage, words } from "./i18n.js";

const ROOMS_URL = "/api/v1/rooms";
const POLL_MS = 2000;
const RETRY_MAX_MS = 10000;
const MARKS_SHOWN = 5;

const view = {
  language: savedLanguage(),
  status: null,
  cards: new Map(), // room id -> card element
  connected: false,
  refused: null, // the API's reason when it refuses this page altogether (403 on the status)
  retryMs: POLL_MS,
  timer: null,
  inFlight: false,
  again: false,
};

const $ = (selector, root = document) => root.querySelector(selector);

function setText(element, text) {
  const value = text == null ? "" : String(text);
  if (element.textContent !== value) element.textContent = value;
}

function show(element, visible) {
  element.hidden = !visible;
}

function t() {
  return words(view.language);
}

// -- talking to the station ---------------------------------------------------------------------------

async function errorText(response) {
  try {
    const body = await response.json();
    if (body && typeof body.error === "string") return body.error;
  } catch {
    // not JSON: the status line is all there is
  }
  return `HTTP ${response.status}`;
}

async function post(room, action, body) {
  const response = await fetch(`/api/v1/rooms/${encodeURIComponent(room)}/${action}`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
    credentials: "omit",
    cache: "no-store",
  });
  if (response.ok) return { ok: true, body: await response.json() };
  return { ok: false, reason: await errorText(response) };
}

async function poll() {
  if (view.inFlight) { // one read at a time: an action's fresh read waits for the one under way
    view.again = true;
    return;
  }
  view.inFlight = true;
  clearTimeout(view.timer);
  let next = POLL_MS;
  try {
    const response = await fetch(ROOMS_URL, { credentials: "omit", cache: "no-store" });
    if (response.ok) {
      view.status = await response.json();
      view.refused = null;
      view.connected = true;
      view.retryMs = POLL_MS;
    } else {
      view.refused = await errorText(response);
      view.connected = true;
    }
  } catch {
    view.connected = false;
    view.retryMs = Math.min(view.retryMs * 2, RETRY_MAX_MS);
    next = view.retryMs;
  }
  view.inFlight = false;
  render();
  if (view.again) {
    view.again = false;
    poll();
    return;
  }
  view.timer = setTimeout(poll, next);
}

// -- rendering ----------------------------------------------------------------------------------------

function render() {
  const w = t();
  document.documentElement.lang = w.lang;
  document.title = w.title;
  setText($("#title"), w.title);
  setText($("#language"), w.switchTo);
  document.body.dataset.connection = view.connected ? (view.refused ? "refused" : "live") : "lost";
  const banner = $("#banner");
  if (!view.connected) {
    setText(banner, w.disconnected);
  } else if (view.refused) {
    setText(banner, w.notAllowed(view.refused));
  }
  show(banner, !view.connected || Boolean(view.refused));
  renderSpace();
  const rooms = view.status?.rooms ?? [];
  for (const room of rooms) renderRoom(room);
  if (view.status && rooms.length === 0) {
    setText($("#rooms"), w.noRooms);
  }
}

function renderSpace() {
  const w = t();
  const space = view.status?.space;
  const element = $("#space");
  const level = space?.level;
  // Sources the recording reserve stopped (edge/rooms/reserve.py): the disk is at its reserve.
  const held = view.status?.reserve?.held ?? [];
  if (Array.isArray(held) && held.length > 0) {
    setText(element, w.spaceReserve(held.map(String).join(", ")));
    element.dataset.level = "critical";
    show(element, true);
  } else if (level === "unknown") {
    // The store's free space cannot be read (edge/rooms/space.py): no figure is shown as if current.
    setText(element, w.spaceUnknown(String(space.error ?? "")));
    element.dataset.level = "critical";
    show(element, true);
  } else if (level === "low" || level === "critical") {
    const minutes = typeof space.minutes_left === "number" ? Math.round(space.minutes_left) : w.spaceUnknownMinutes;
    setText(element, level === "critical" ? w.spaceCritical(minutes) : w.spaceLow(minutes));
    element.dataset.level = level;
    show(element, true);
  } else {
    setText(element, "");
    show(element, false);
  }
}

function cardFor(room) {
  let card = view.cards.get(room.room);
  if (card) return card;
  card = $("#room-card").content.firstElementChild.cloneNode(true);
  card.dataset.room = room.room;
  wireCard(card);
  $("#rooms").append(card);
  view.cards.set(room.room, card);
  return card;
}

function renderLabels(card) {
  const w = t();
  const labels = {
    ".l-case": w.caseNumber, ".l-subject": w.subject, ".l-collector": w.collector, ".l-persons": w.persons,
    ".l-started": w.started, ".h-source": w.source, ".h-state": w.state, ".h-sealed": w.sealed,
    ".h-latency": w.latency, ".start-title": w.startTitle, ".f-case": w.fCase, ".f-subject": w.fSubject,
    ".f-collector": w.fCollector, ".f-collector-no": w.fCollectorNo, ".f-persons": w.fPersons,
    ".f-persons-hint": w.fPersonsHint, ".start-button": w.start, ".f-note": w.note, ".mark-button": w.mark,
    ".stop-button": w.stop, ".confirm-title": w.confirmTitle, ".cancel-button": w.cancel,
    ".confirm-button": w.confirmStop,
  };
  for (const [selector, text] of Object.entries(labels)) setText($(selector, card), text);
}

function renderRoom(room) {
  const w = t();
  const card = cardFor(room);
  renderLabels(card);
  const session = room.session;
  const sources = room.sources ?? [];
  const gaps = sources.filter((s) => sourceState(s) === "gap").length;
  card.dataset.state = session ? (gaps ? "gap" : "recording") : "idle";
  setText($(".room-name", card), room.name);
  setText($(".room-id", card), room.room);
  setText($(".room-address", card), room.address);
  setText($(".room-state", card), session ? (gaps ? w.attention : w.recording) : w.idle);
  renderHardware(card, room.hardware);

  show($(".session", card), Boolean(session));
  show($(".sources", card), Boolean(session));
  show($(".marks", card), Boolean(session));
  show($(".controls", card), Boolean(session));
  show($(".start", card), !session);
  card.dataset.session = session ? session.room_session : "";
  renderElapsed(card);
  if (!session) {
    $(".sources tbody", card).replaceChildren();
    $(".marks", card).replaceChildren();
    return;
  }
  const c = session.case ?? {};
  setText($(".case-number", card), c.case_number);
  setText($(".subject", card), c.subject);
  setText($(".collector", card), w.collectorWithNo(c.collector ?? "", c.collector_no ?? ""));
  setText($(".persons", card), (session.persons ?? []).map((p) => w.person(p.name, p.role)).join("、"));
  setText($(".started", card), w.startedBy(localTime(session.started_utc), session.started_by ?? ""));
  renderSources(card, sources);
  renderMarks(card, session.marks ?? []);
}

// The room's panel (connection, what its lamp shows, the climate sensor) and PTZ camera, when it has them.
function renderHardware(card, hardware) {
  const w = t();
  const line = $(".hardware", card);
  const panel = hardware?.panel;
  const climate = hardware?.climate;
  const ptz = hardware?.ptz;
  const panelElement = $(".panel", line);
  setText(panelElement, panel ? (panel.connected ? w.panelConnected : w.panelAway) : "");
  panelElement.dataset.connected = panel ? String(Boolean(panel.connected)) : "";
  setText($(".lamp", line), panel?.connected && panel.lamp ? (w.lamp[panel.lamp] ?? panel.lamp) : "");
  $(".lamp", line).dataset.lamp = panel?.connected && panel.lamp ? panel.lamp : "";
  const hasClimate = climate && typeof climate.temperature_c === "number" && typeof climate.humidity_percent === "number";
  setText($(".climate", line), hasClimate ? w.climate(climate.temperature_c.toFixed(1), climate.humidity_percent.toFixed(1)) : "");
  setText($(".ptz", line), ptz ? (ptz.error ? w.ptzError(ptz.error) : w.ptz(ptz.preset)) : "");
  show(line, Boolean(panel || ptz));
}

function renderElapsed(card) {
  const room = view.status?.rooms?.find((r) => r.room === card.dataset.room);
  const started = room?.session?.started_utc;
  const seconds = started ? secondsSince(started, Date.now()) : null;
  setText($(".elapsed", card), seconds == null ? "" : t().elapsed(t().duration(seconds)));
}

function renderSources(card, sources) {
  const w = t();
  const rows = sources.map((source) => {
    const row = $("#source-row").content.firstElementChild.cloneNode(true);
    const state = sourceState(source);
    row.dataset.source = source.source;
    row.dataset.state = state;
    setText($(".source-name", row), source.name ? `${source.name} (${source.source})` : source.source);
    let stateText = w.sourceStarting;
    if (state === "recording") stateText = w.sourceRecording;
    if (state === "gap") {
      stateText = w.sourceGap(localTime(source.gap.from_utc), source.gap.reason ?? "");
      if (source.gap.attempts) stateText += w.sourceGapAttempts(source.gap.attempts);
    }
    setText($(".source-state", row), stateText);
    const failed = Number(source.segments_failed) || 0;
    setText($(".source-sealed", row), `${Number(source.segments_sealed) || 0}${failed ? w.failed(failed) : ""}`);
    const latency = source.last_seal_latency_s;
    setText($(".source-latency", row), typeof latency === "number" ? w.seconds(latency.toFixed(2)) : "–");
    return row;
  });
  $(".sources tbody", card).replaceChildren(...rows);
}

function renderMarks(card, marks) {
  const w = t();
  const items = marks.slice(-MARKS_SHOWN).reverse().map((mark) => {
    const item = document.createElement("li");
    item.textContent = w.marked(localTime(mark.time_utc), mark.note ?? "", mark.by ?? "");
    return item;
  });
  $(".marks", card).replaceChildren(...items);
}

function showRefusal(card, text) {
  const element = $(".refusal", card);
  setText(element, text ?? "");
  show(element, Boolean(text));
}

// -- actions ------------------------------------------------------------------------------------------

function busy(card, yes) {
  for (const button of card.querySelectorAll("button")) button.disabled = yes;
}

async function act(card, action, body, onDone) {
  busy(card, true);
  try {
    const result = await post(card.dataset.room, action, body);
    if (result.ok) {
      showRefusal(card, null);
      if (onDone) onDone(result.body);
    } else {
      showRefusal(card, t().refused(result.reason));
    }
  } catch {
    showRefusal(card, t().disconnected);
  } finally {
    busy(card, false);
    poll();
  }
}

function wireCard(card) {
  const startForm = $(".start", card);
  startForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const fields = Object.fromEntries(new FormData(startForm).entries());
    const parsed = parsePersons(fields.persons);
    if (parsed.bad !== undefined) {
      showRefusal(card, t().personsBad(parsed.bad));
      return;
    }
    act(card, "start", startBody(fields, parsed.persons), () => startForm.reset());
  });
  const markForm = $(".mark", card);
  markForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const note = String(new FormData(markForm).get("note") ?? "").trim();
    act(card, "mark", { note }, () => markForm.reset());
  });
  const dialog = $(".confirm-stop", card);
  $(".stop-button", card).addEventListener("click", () => {
    const room = view.status?.rooms?.find((r) => r.room === card.dataset.room);
    const caseNumber = room?.session?.case?.case_number ?? "";
    setText($(".confirm-text", card), t().confirmText(room?.name ?? card.dataset.room, caseNumber));
    dialog.dataset.session = card.dataset.session;
    dialog.showModal();
  });
  $(".cancel-button", card).addEventListener("click", () => dialog.close());
  $(".confirm-button", card).addEventListener("click", () => {
    const confirmed = dialog.dataset.session;
    dialog.close();
    // The confirmation was for the session shown then: if another one runs now, ask again.
    if (confirmed && confirmed === card.dataset.session) act(card, "stop", {});
  });
}

// -- start --------------------------------------------------------------------------------------------

function tick() {
  setText($("#now"), localTime(new Date().toISOString()));
  for (const card of view.cards.values()) renderElapsed(card);
}

$("#language").addEventListener("click", () => {
  view.language = view.language === "zh" ? "en" : "zh";
  saveLanguage(view.language);
  render();
});

render();
tick();
setInterval(tick, 1000);
poll();
