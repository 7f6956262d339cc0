// The dock screen: renders the station's status (GET /api/v1/status) and follows it live over
// server-sent events (GET /api/v1/events: "snapshot", "bay", "station"), reconnecting after any loss.
// The GB/T 28181 devices (the status's "gb28181" part, present only while the station runs the platform)
// come with no event of their own: while the station has them, the page reads the status again every
// GB_REFRESH_MS, and counts the keepalive ages on by the second in between.
// The fleet (every recorder this station knows: out with whom, overdue, faulty, in a bay) is read from
// GET /api/v1/fleet every FLEET_REFRESH_MS, and FLEET_AFTER_BAY_MS after a bay changed (the station reads
// its fleet again half a second after a docking's ledger entries); overdue recorders come first, as the
// station sorts them.
// Every text that came from a device or the configuration is set with textContent, never as HTML.

import * as format from "./format.js";
import { animateLed, ledOf } from "./led.js";
import { saveLanguage, savedLanguage, stateWords, words } from "./i18n.js";

const STATUS_URL = "/api/v1/status";
const EVENTS_URL = "/api/v1/events";
const PATTERNS_URL = "/dock/led-patterns.json";
const RECONNECT_MIN_MS = 1000;
const RECONNECT_MAX_MS = 15000;
const GB_REFRESH_MS = 3000;
const GB_ROWS_MAX = 8; // the page fits one screen: more devices are counted, not listed
const FLEET_URL = "/api/v1/fleet";
const FLEET_REFRESH_MS = 5000;
const FLEET_AFTER_BAY_MS = 1500;
const FLEET_ROWS_MAX = 8;

const view = {
  language: savedLanguage(),
  status: null,
  patterns: null,
  tiles: new Map(), // bay id -> tile element
  connected: false,
  reconnectMs: RECONNECT_MIN_MS,
  source: null,
  gbRefresh: null, // the timer that reads the GB/T 28181 devices again
  fleet: null, // GET /api/v1/fleet, null while the station has none
  fleetRefresh: null,
  fleetDueAt: 0, // when the scheduled read is due (Date.now() milliseconds)
  fleetStopped: false, // the station keeps no fleet view (404): never asked again
};

const $ = (selector, root = document) => root.querySelector(selector);

function setText(element, text) {
  const value = text == null ? "" : String(text);
  if (element.textContent !== value) element.textContent = value;
}

function t() {
  return words(view.language);
}

// -- station header ---------------------------------------------------------------------------------

function renderFact(id, label, value, level) {
  const fact = document.getElementById(id);
  setText($("dt", fact), label);
  setText($("dd", fact), value);
  fact.dataset.level = level;
}

function renderStation() {
  const w = t();
  setText($("#title"), w.title);
  document.title = w.title;
  const station = view.status?.station;
  if (!station) return;
  const unit = station.unit?.name || station.unit?.code || "";
  setText($("#station-id"), [unit, station.id].filter(Boolean).join(" · "));

  const central = station.central ?? {};
  if (!central.configured) {
    renderFact("fact-central", w.central, w.centralNotConfigured, "warn");
  } else if (central.reachable && central.breaker !== "open") {
    renderFact("fact-central", w.central, w.centralReachable, "good");
  } else {
    renderFact("fact-central", w.central, central.breaker === "open" ? w.breakerOpen : w.centralUnreachable, "bad");
  }

  const spool = station.spool ?? {};
  const items = Number(spool.items) || 0;
  renderFact("fact-backlog", w.backlog, items ? w.backlogItems(items, format.bytes(spool.bytes)) : w.backlogNone,
    items ? "warn" : "good");

  const disk = station.disk ?? {};
  const freePct = format.percent(disk.free_bytes, disk.total_bytes);
  renderFact("fact-disk", w.disk, w.diskFree(format.bytes(disk.free_bytes), freePct ?? "–"),
    freePct == null ? "warn" : freePct < 5 ? "bad" : freePct < 15 ? "warn" : "good");

  const clock = station.clock ?? {};
  renderFact("fact-clock", w.clock, clock.trusted ? w.clockTrusted : w.clockUntrusted, clock.trusted ? "good" : "bad");
}

function renderNow() {
  const formatter = new Intl.DateTimeFormat(t().lang, {
    month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false,
  });
  setText($("#now"), formatter.format(new Date()));
}

// -- bays -------------------------------------------------------------------------------------------

function bayOrder(a, b) {
  const na = Number(a.bay);
  const nb = Number(b.bay);
  if (Number.isFinite(na) && Number.isFinite(nb)) return na - nb;
  return String(a.bay).localeCompare(String(b.bay));
}

function layoutGrid(count) {
  const main = $("#bays");
  const width = main.clientWidth || window.innerWidth;
  const height = main.clientHeight || window.innerHeight;
  let best = { cols: 1, rows: Math.max(1, count), size: 0 };
  for (let cols = 1; cols <= Math.max(1, count); cols += 1) {
    const rows = Math.ceil(count / cols);
    // The biggest tile a little wider than high: what lets the text be largest.
    const size = Math.min(width / cols / 1.15, height / rows);
    if (size > best.size) best = { cols, rows, size };
  }
  main.style.setProperty("--cols", best.cols);
  main.style.setProperty("--rows", best.rows);
}

function tileFor(bay) {
  const key = String(bay.bay);
  let tile = view.tiles.get(key);
  if (!tile) {
    tile = $("#bay-tile").content.firstElementChild.cloneNode(true);
    tile.dataset.bay = key;
    view.tiles.set(key, tile);
    $("#bays").append(tile); // in the document before its LED starts blinking; renderBays orders it
  }
  return tile;
}

function renderBay(bay) {
  const w = t();
  const tile = tileFor(bay);
  const [heading, instruction] = stateWords(w, bay);
  tile.dataset.state = bay.state;
  if (bay.error_class) tile.dataset.errorClass = bay.error_class;
  else delete tile.dataset.errorClass;

  setText($(".bay-no", tile), w.bay(bay.bay));
  setText($(".state", tile), heading);
  setText($(".instruction", tile), instruction);
  // A bay whose presence the station cannot act on (bay_presence): said in words whatever the state.
  if (bay.bouncing) tile.dataset.bouncing = "";
  else delete tile.dataset.bouncing;
  setText($(".bouncing", tile), bay.bouncing ? w.bouncing : "");
  // The USB serial its recorder claims is shared with another bay's, or missing (edge/station.py).
  const serialWarning = bay.usb_serial_warning;
  if (serialWarning) tile.dataset.usbSerial = serialWarning.problem;
  else delete tile.dataset.usbSerial;
  const serialWords = w.usbSerial[serialWarning?.problem];
  setText($(".usb-serial", tile), !serialWarning ? ""
    : typeof serialWords === "function" ? serialWords(serialWarning.bays ?? []) : serialWords ?? "");

  if (view.patterns) {
    const led = ledOf(bay, view.patterns);
    const pattern = view.patterns.leds.find((p) => p.led === led);
    if (pattern) {
      tile.dataset.colour = pattern.colour;
      const dot = $(".led", tile);
      if (dot.dataset.led !== led) {
        dot.dataset.led = led;
        animateLed(dot, pattern);
      }
    }
  }

  const officer = bay.officer;
  setText($(".officer", tile), officer?.name ? officer.name : "");
  setText($(".badge", tile), officer?.badge ? `${w.badge} ${officer.badge}` : "");

  const device = bay.device;
  setText($(".model", tile), device?.model ?? "");
  setText($(".serial", tile), device?.serial ?? "");
  const battery = device?.battery_pct;
  setText($(".battery", tile), typeof battery === "number" ? `${w.battery} ${battery}%` : "");

  const total = bay.files_total;
  setText($(".files", tile), typeof total === "number" && total > 0
    ? `${w.files} ${format.count(bay.files_done)}/${format.count(total)}` : "");
  const moving = bay.state === "copying" || bay.state === "verifying";
  setText($(".speed", tile), moving && bay.speed_bps > 0 ? format.speed(bay.speed_bps) : "");
  const eta = format.seconds(bay.eta_s);
  setText($(".eta", tile), moving && eta != null ? `${w.eta} ${w.duration(eta)}` : "");

  const pct = format.percent(bay.bytes_done, bay.bytes_total)
    ?? format.percent(bay.files_done, bay.files_total)
    ?? (bay.state === "done" || bay.state === "awaiting_receipt" ? 100 : 0);
  $(".fill", tile).style.width = `${pct}%`;
  $(".bar", tile).setAttribute("aria-valuenow", String(pct));
}

function renderBays() {
  const bays = [...(view.status?.bays ?? [])].sort(bayOrder);
  const main = $("#bays");
  const keep = new Set(bays.map((b) => String(b.bay)));
  for (const [key, tile] of view.tiles) {
    if (!keep.has(key)) {
      tile.remove();
      view.tiles.delete(key);
    }
  }
  bays.forEach((bay, index) => {
    const tile = tileFor(bay);
    if (main.children[index] !== tile) main.insertBefore(tile, main.children[index] ?? null);
    renderBay(bay);
  });
  layoutGrid(bays.length);
}

// -- GB/T 28181 devices -----------------------------------------------------------------------------

function gbDeviceRow() {
  return $("#gb-device").content.firstElementChild.cloneNode(true);
}

function gbDownloads(w, progress) {
  if (!progress || typeof progress !== "object") return "";
  const state = w.gb.downloadStates[progress.state] ?? String(progress.state ?? "");
  const parts = [progress.current ? `${state} ${progress.current}` : state];
  parts.push(w.gb.done(format.count(progress.done)));
  if (progress.skipped > 0) parts.push(w.gb.skipped(format.count(progress.skipped)));
  if (progress.failed > 0) parts.push(w.gb.failed(format.count(progress.failed)));
  if (progress.incomplete > 0) parts.push(w.gb.incomplete(format.count(progress.incomplete)));
  const lastPass = Date.parse(String(progress.last_pass_at ?? "").replace(/(\.\d{3})\d+/, "$1"));
  if (Number.isFinite(lastPass)) {
    const time = new Intl.DateTimeFormat(w.lang, { hour: "2-digit", minute: "2-digit", hour12: false });
    parts.push(w.gb.lastPass(time.format(new Date(lastPass))));
  }
  return `${w.gb.downloads}: ${parts.join(" · ")}`;
}

function renderGbDevice(row, device, progress, w, nowMs) {
  row.dataset.deviceId = String(device.device_id ?? "");
  row.dataset.online = device.online ? "true" : "false";
  // The configured name first; else the name the device gave in its DeviceInfo answer (device text).
  setText($(".gb-name", row), device.name || device.device_info?.name || "");
  setText($(".gb-id", row), device.device_id);
  const age = format.ageSeconds(device.last_keepalive_at, nowMs);
  const keepalive = age == null ? w.gb.noKeepalive : w.gb.keepalive(w.duration(age));
  setText($(".gb-state", row), `${device.online ? w.gb.online : w.gb.offline} · ${keepalive}`);
  const facts = [];
  if (device.address) facts.push(String(device.address));
  const offset = format.offset(device.clock_offset_s);
  if (offset != null) facts.push(w.gb.clockOffset(offset));
  facts.push(w.gb.channels(Array.isArray(device.channels) ? device.channels.length : 0));
  setText($(".gb-facts", row), facts.join(" · "));
  setText($(".gb-downloads", row), gbDownloads(w, progress));
}

function renderGb28181() {
  const section = $("#gb28181");
  const gb = view.status?.gb28181;
  if (!gb || typeof gb !== "object") {
    section.hidden = true;
    return;
  }
  section.hidden = false;
  const w = t();
  const devices = Array.isArray(gb.devices) ? gb.devices : [];
  const online = devices.filter((d) => d.online).length;
  setText($(".gb-title", section), w.gb.title);
  setText($(".gb-summary", section), devices.length ? w.gb.summary(devices.length, online) : w.gb.none);
  // Online devices first, then by id: what is reachable is what an operator looks for.
  const shown = [...devices]
    .sort((a, b) => Number(Boolean(b.online)) - Number(Boolean(a.online))
      || String(a.device_id).localeCompare(String(b.device_id)))
    .slice(0, GB_ROWS_MAX);
  const list = $(".gb-devices", section);
  while (list.children.length < shown.length) list.append(gbDeviceRow());
  while (list.children.length > shown.length) list.lastElementChild.remove();
  const downloads = gb.downloads && typeof gb.downloads === "object" ? gb.downloads : {};
  const nowMs = Date.now();
  shown.forEach((device, index) => {
    const progress = Object.hasOwn(downloads, device.device_id) ? downloads[device.device_id] : null;
    renderGbDevice(list.children[index], device, progress, w, nowMs);
  });
  setText($(".gb-more", section), devices.length > shown.length ? w.gb.more(devices.length - shown.length) : "");
}

async function refreshGb28181() {
  try {
    const status = await loadJson(STATUS_URL);
    if (view.status) view.status.gb28181 = status.gb28181;
  } catch (error) {
    console.error("dock screen: GB/T 28181 devices", error);
  }
  renderGb28181();
  scheduleGbRefresh();
}

function scheduleGbRefresh() {
  clearTimeout(view.gbRefresh);
  view.gbRefresh = view.status?.gb28181 ? setTimeout(refreshGb28181, GB_REFRESH_MS) : null;
}

// -- the fleet --------------------------------------------------------------------------------------

function shortTime(w, isoText) {
  const parsed = Date.parse(String(isoText ?? "").replace(/(\.\d{3})\d+/, "$1"));
  if (!Number.isFinite(parsed)) return "–";
  return new Intl.DateTimeFormat(w.lang, {
    month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", hour12: false,
  }).format(new Date(parsed));
}

function fleetWho(w, recorder) {
  const holder = recorder.holder;
  if (holder && typeof holder === "object") {
    const who = [holder.officer_name, holder.officer_no ? `${w.badge} ${holder.officer_no}` : ""].filter(Boolean);
    return [who.join(" "), w.fleet.since(shortTime(w, holder.since)), w.fleet.due(shortTime(w, holder.due_at))]
      .join(" · ");
  }
  const bay = recorder.bay;
  if (bay && typeof bay === "object") {
    return `${w.fleet.bay(bay.bay)} · ${w.fleet.bayStates[bay.state] ?? String(bay.state ?? "")}`;
  }
  const last = recorder.last_holder;
  if (last && typeof last === "object") {
    return w.fleet.lastHolder([last.officer_name, last.officer_no].filter(Boolean).join(" "),
      shortTime(w, last.returned_at));
  }
  return "";
}

function fleetFacts(w, recorder) {
  const facts = [];
  for (const problem of Array.isArray(recorder.problems) ? recorder.problems : []) {
    facts.push(w.fleet.problems[problem?.code] ?? String(problem?.code ?? ""));
  }
  if (typeof recorder.battery_percent === "number") facts.push(w.fleet.battery(recorder.battery_percent));
  if (typeof recorder.storage_total_bytes === "number" && recorder.storage_total_bytes > 0) {
    facts.push(w.fleet.storage(format.bytes(recorder.storage_free_bytes), format.bytes(recorder.storage_total_bytes)));
  }
  if (recorder.firmware) facts.push(w.fleet.firmware(recorder.firmware));
  if (recorder.last_docking?.started_at) facts.push(w.fleet.lastDocking(shortTime(w, recorder.last_docking.started_at)));
  return facts.join(" · ");
}

function renderFleet() {
  const section = $("#fleet");
  const fleet = view.fleet;
  // No panel while the station knows no recorder (nothing on its allow-list, none ever docked).
  if (!fleet || typeof fleet !== "object" || !Array.isArray(fleet.recorders) || !fleet.recorders.length) {
    section.hidden = true;
    return;
  }
  section.hidden = false;
  const w = t();
  const recorders = fleet.recorders;
  const counts = fleet.counts && typeof fleet.counts === "object" ? fleet.counts : {};
  const parts = Object.keys(w.fleet.counts)
    .filter((state) => Number(counts[state]) > 0)
    .map((state) => w.fleet.counts[state](Number(counts[state])));
  setText($(".fleet-title", section), w.fleet.title);
  setText($(".fleet-summary", section), [w.fleet.total(recorders.length), ...parts].join(" · "));
  if (Number(counts.overdue) > 0) section.dataset.overdue = "";
  else delete section.dataset.overdue;
  const shown = recorders.slice(0, FLEET_ROWS_MAX);
  const list = $(".fleet-recorders", section);
  while (list.children.length < shown.length) list.append($("#fleet-recorder").content.firstElementChild.cloneNode(true));
  while (list.children.length > shown.length) list.lastElementChild.remove();
  shown.forEach((recorder, index) => {
    const row = list.children[index];
    row.dataset.serial = String(recorder.device_serial ?? "");
    row.dataset.state = String(recorder.state ?? "");
    setText($(".fleet-serial", row), recorder.device_serial);
    setText($(".fleet-state", row), w.fleet.states[recorder.state] ?? String(recorder.state ?? ""));
    setText($(".fleet-who", row), fleetWho(w, recorder));
    setText($(".fleet-facts", row), fleetFacts(w, recorder));
  });
  setText($(".fleet-more", section), recorders.length > shown.length ? w.fleet.more(recorders.length - shown.length) : "");
}

function scheduleFleet(delayMs) {
  // A read already due sooner stands; otherwise this one replaces it.
  if (view.fleetStopped || (view.fleetRefresh && view.fleetDueAt <= Date.now() + delayMs)) return;
  clearTimeout(view.fleetRefresh);
  view.fleetDueAt = Date.now() + delayMs;
  view.fleetRefresh = setTimeout(refreshFleet, delayMs);
}

async function refreshFleet() {
  view.fleetRefresh = null;
  try {
    const response = await fetch(FLEET_URL, { cache: "no-store" });
    if (response.ok) view.fleet = await response.json();
    else if (response.status === 404) {
      view.fleet = null; // this station keeps no fleet view: no panel, and no more asking
      view.fleetStopped = true;
    }
  } catch (error) {
    console.error("dock screen: fleet", error);
  }
  renderFleet();
  scheduleFleet(FLEET_REFRESH_MS);
}

// -- legend -----------------------------------------------------------------------------------------

function renderLegend() {
  const w = t();
  setText($("#legend h2"), w.legend);
  const list = $("#legend ul");
  if (!view.patterns) return;
  const shown = view.patterns.leds.filter((p) => p.led !== "OFF");
  if (list.children.length !== shown.length) {
    list.replaceChildren(...shown.map((pattern) => {
      const item = document.createElement("li");
      item.dataset.led = pattern.led;
      const dot = document.createElement("span");
      dot.className = "legend-led";
      const text = document.createElement("span");
      text.className = "legend-text";
      text.dataset.text = "";
      const look = document.createElement("span");
      look.className = "pattern";
      const meaning = document.createElement("span");
      meaning.className = "meaning";
      text.append(look, meaning);
      item.append(dot, text);
      return item;
    }));
    for (const item of list.children) {
      animateLed($(".legend-led", item), shown.find((p) => p.led === item.dataset.led));
    }
  }
  for (const item of list.children) {
    const pattern = shown.find((p) => p.led === item.dataset.led);
    const colour = w.colours[pattern.colour] ?? pattern.colour;
    const rhythm = w.rhythms[pattern.rhythm] ?? pattern.rhythm;
    setText($(".pattern", item), `${colour}·${rhythm} `);
    setText($(".meaning", item), w.leds[pattern.led] ?? pattern.led);
  }
}

// -- language ---------------------------------------------------------------------------------------

function renderAll() {
  const w = t();
  document.documentElement.lang = w.lang;
  setText($("#language"), w.switchTo);
  setText($("#banner"), w.disconnected);
  renderStation();
  renderNow();
  renderBays();
  renderFleet();
  renderGb28181();
  renderLegend();
}

function switchLanguage() {
  view.language = view.language === "zh" ? "en" : "zh";
  saveLanguage(view.language);
  renderAll();
}

// -- live data --------------------------------------------------------------------------------------

function setConnected(connected) {
  view.connected = connected;
  document.body.classList.toggle("disconnected", !connected);
  $("#banner").hidden = connected;
  document.body.dataset.connection = connected ? "live" : "lost";
}

function upsertBay(bay) {
  if (!view.status) return;
  const bays = view.status.bays ?? (view.status.bays = []);
  const index = bays.findIndex((b) => String(b.bay) === String(bay.bay));
  if (bay.state === "removed") {
    // A recorder in no known bay left: its tile goes.
    if (index >= 0) bays.splice(index, 1);
    renderBays();
    return;
  }
  if (index >= 0) bays[index] = bay;
  else bays.push(bay);
  if (index >= 0) renderBay(bay);
  else renderBays();
}

function connect() {
  const source = new EventSource(EVENTS_URL);
  view.source = source;
  source.addEventListener("snapshot", (event) => {
    view.status = JSON.parse(event.data);
    view.reconnectMs = RECONNECT_MIN_MS;
    setConnected(true);
    renderStation();
    renderBays();
    renderGb28181();
    scheduleGbRefresh();
  });
  source.addEventListener("bay", (event) => {
    upsertBay(JSON.parse(event.data));
    scheduleFleet(FLEET_AFTER_BAY_MS); // a recorder came, went or finished: the fleet follows
  });
  source.addEventListener("station", (event) => {
    if (!view.status) return;
    view.status.station = JSON.parse(event.data);
    renderStation();
  });
  source.addEventListener("error", () => {
    setConnected(false);
    if (source.readyState === EventSource.CLOSED) {
      // The browser gave up (an HTTP error, a wrong content type): try again ourselves, slower each time.
      source.close();
      setTimeout(connect, view.reconnectMs);
      view.reconnectMs = Math.min(view.reconnectMs * 2, RECONNECT_MAX_MS);
    }
  });
}

async function loadJson(url) {
  const response = await fetch(url, { cache: "no-store" });
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.json();
}

async function start() {
  $("#language").addEventListener("click", switchLanguage);
  setConnected(false);
  renderAll();
  setInterval(() => {
    renderNow();
    renderGb28181(); // keepalive ages count on between two reads of the status
  }, 1000);
  window.addEventListener("resize", () => layoutGrid(view.tiles.size));
  try {
    view.patterns = await loadJson(PATTERNS_URL);
  } catch (error) {
    console.error("dock screen: LED patterns", error);
  }
  try {
    view.status = await loadJson(STATUS_URL);
    if (view.status?.fleet) view.fleet = view.status.fleet;
  } catch (error) {
    console.error("dock screen: status", error);
  }
  renderAll();
  scheduleGbRefresh();
  refreshFleet();
  connect();
}

start();
