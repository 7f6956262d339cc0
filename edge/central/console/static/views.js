// Rendering. Every value from the central (device text included) goes in with textContent, never markup.
import { t, has } from "./i18n.js";

export function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    if (cell instanceof Node) td.append(cell);
    else td.textContent = cell === null || cell === undefined ? "" : String(cell);
    tr.append(td);
  }
  return tr;
}

export function localTime(utc) {
  if (!utc) return "";
  const moment = new Date(utc);
  if (Number.isNaN(moment.getTime())) return utc;
  return moment.toLocaleString(document.documentElement.lang, { hour12: false });
}

function itemLink(item) {
  const a = el("a", item.slice(0, 8), "item-link mono");
  a.href = `#/item/${encodeURIComponent(item)}`;
  a.title = item;
  return a;
}

export function renderResults(tbody, items, append) {
  if (!append) tbody.replaceChildren();
  for (const item of items) {
    const flags = [];
    if (item.important) flags.push(t("flag.important"));
    if (item.sensitive) flags.push(t("flag.sensitive"));
    tbody.append(row([localTime(item.acquired_utc), item.case_number, item.officer_no, item.device_serial,
                      item.station, item.unit, flags.join(" "), itemLink(item.item)]));
  }
}

function eventName(event) {
  const base = event.startsWith("read:") ? "read" : event;
  const name = has(`event.${base}`) ? t(`event.${base}`) : event;
  return event.startsWith("read:") ? `${name}（${event.slice(5)}）` : name;
}

function detailText(detail) {
  return Object.entries(detail || {}).map(([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`).join(" ");
}

export function renderItem(doc, playbackUrl) {
  document.getElementById("item-id").textContent = doc.item;
  const meta = document.querySelector("#item-meta tbody");
  meta.replaceChildren();
  const manifest = doc.manifest || {};
  const source = manifest.source || {};
  const original = manifest.original || {};
  const case_ = doc.case || {};
  const time = manifest.time || {};
  const pairs = [
    ["field.case", case_.case_number], ["field.officer", doc.officer_no], ["field.officer_name", source.officer_name],
    ["field.device", doc.device_serial], ["field.station", doc.station], ["field.unit", doc.unit],
    ["field.acquired", localTime(doc.acquired_utc)], ["field.recorded", time.recorded_start],
    ["field.accepted", localTime(doc.accepted_utc)], ["field.location", case_.location],
    ["field.collector", case_.collector], ["field.subject", case_.subject],
    ["field.important", case_.important === null || case_.important === undefined ? "" : t(case_.important ? "yes" : "no")],
    ["field.category", case_.category], ["field.retention", case_.retention],
    ["field.original", original.name], ["field.size", doc.size], ["field.sha256", doc.sha256],
  ];
  for (const [key, value] of pairs) {
    const tr = row([t(key), value]);
    tr.firstChild.className = "key";
    meta.append(tr);
  }

  const media = document.getElementById("item-media");
  media.replaceChildren();
  if (doc.media.kind === "video" || doc.media.kind === "audio") {
    const player = document.createElement(doc.media.kind);
    player.id = "player";
    player.controls = true;
    player.preload = "metadata";
    player.src = playbackUrl;
    media.append(player);
  } else if (doc.media.kind === "image") {
    const image = document.createElement("img");
    image.id = "player";
    image.alt = original.name || doc.item;
    image.src = playbackUrl;
    media.append(image);
  } else {
    media.append(el("p", t("item.nomedia")));
  }

  const receipt = doc.receipt;
  const status = document.getElementById("receipt-status");
  status.textContent = receipt.verified ? t("receipt.ok") : t("receipt.failed");
  status.className = `status ${receipt.verified ? "ok" : "bad"}`;
  status.dataset.verified = String(receipt.verified);
  const checks = document.getElementById("receipt-checks");
  checks.replaceChildren();
  for (const check of receipt.checks) {
    const li = el("li", null, check.ok ? "ok" : "bad");
    li.append(el("strong", `${check.ok ? "✓" : "✗"} ${has(`check.${check.check}`) ? t(`check.${check.check}`) : check.check}`));
    li.append(el("span", ` ${check.detail}`, "detail"));
    checks.append(li);
  }

  const sensitive = document.getElementById("sensitive-status");
  sensitive.textContent = doc.sensitive
    ? `${t("sensitive.marked")}: ${doc.sensitive.readers.join(" ")}（${doc.sensitive.reason}）`
    : t("sensitive.none");
  document.getElementById("sensitive-form").hidden = !doc.may_mark;
  document.getElementById("sensitive-unmark").hidden = !doc.sensitive;

  const timeline = document.querySelector("#timeline tbody");
  timeline.replaceChildren();
  for (const entry of doc.timeline) {
    const tr = row([localTime(entry.time), eventName(entry.event), entry.station, entry.who, detailText(entry.detail)]);
    tr.dataset.event = entry.event;
    timeline.append(tr);
  }
  const history = document.querySelector("#history tbody");
  history.replaceChildren();
  for (const change of doc.history) {
    history.append(row([change.time, change.source, change.by, detailText(change.changes)]));
  }
}

export function renderLog(tbody, rows, append) {
  if (!append) tbody.replaceChildren();
  for (const entry of rows) {
    const tr = row([localTime(entry.time), entry.reader, entry.what, entry.item ? itemLink(entry.item) : "",
                    entry.query, entry.bytes_served ?? "", entry.remote]);
    tr.dataset.what = entry.what;
    if (entry.item) tr.dataset.item = entry.item;
    tbody.append(tr);
  }
}

function bytesText(bytes) {
  if (bytes === null || bytes === undefined) return "";
  const gib = bytes / 1024 ** 3;
  return gib >= 1 ? `${gib.toFixed(1)} GiB` : `${Math.round(bytes / 1024 ** 2)} MiB`;
}

function durationText(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const hours = Math.floor(seconds / 3600);
  const minutes = Math.floor((seconds % 3600) / 60);
  return hours ? `${hours} ${t("unit.hours")} ${minutes} ${t("unit.minutes")}` : `${minutes} ${t("unit.minutes")}`;
}

function stateText(state) {
  return has(`state.${state}`) ? t(`state.${state}`) : state;
}

// The agency's recorders (GET /console/api/fleet), overdue first as the central sorts them.
export function renderFleet(tbody, doc) {
  tbody.replaceChildren();
  for (const r of doc.recorders) {
    const holder = r.officer_no ? `${r.officer_no} ${r.officer_name || ""}`.trim() : "";
    const held = r.state === "out" || r.state === "overdue";
    const storage = r.storage_total_bytes ? `${bytesText(r.storage_free_bytes)} / ${bytesText(r.storage_total_bytes)}` : "";
    const docking = r.last_docking
      ? `${localTime(r.last_docking.started_at)} ${r.last_docking.outcome ?? t("outcome.under_way")}`
      : "";
    const others = r.other_stations ? ` +${r.other_stations} ${t("fleet.other_stations")}` : "";
    const flag = r.at_stations ? `${t("fleet.two_stations")}: ${r.at_stations.join(" ")}${others}` : "";
    const tr = row([
      el("span", r.device_serial, "mono"), r.station, el("strong", stateText(r.shown_state), r.overdue ? "bad" : ""),
      holder, held ? localTime(r.since) : "", localTime(r.due_at), durationText(r.overdue_by_s),
      r.battery_percent === null || r.battery_percent === undefined ? "" : `${r.battery_percent}%`,
      storage, r.firmware ?? "", docking, el("span", flag, flag ? "bad" : ""),
    ]);
    tr.dataset.serial = r.device_serial;
    tr.dataset.station = r.station;
    tr.dataset.state = r.shown_state;
    if (r.at_stations) tr.dataset.flag = "two-stations";
    tbody.append(tr);
  }
}
