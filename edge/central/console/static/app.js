// The auditor console: sign-in, search, an item with its player and custody timeline, the access log.
import { api, query, setCsrf, ApiError } from "./api.js";
import { applyI18n, t, toggleLang } from "./i18n.js";
import { el, renderFleet, renderItem, renderLog, renderResults } from "./views.js";

const VIEWS = ["signin-view", "search-view", "item-view", "log-view", "fleet-view"];
let session = null;
let searchNext = null;
let lastSearch = {};
let logBefore = null;
let lastLog = {};
let lastFleet = {};
const fleetStations = new Set();

function show(view) {
  for (const id of VIEWS) document.getElementById(id).hidden = id !== view;
  document.getElementById("nav").hidden = session === null;
  document.getElementById("signout").hidden = session === null;
  document.body.dataset.view = view;
}

function showError(error) {
  const box = document.getElementById("error");
  if (!error) {
    box.hidden = true;
    box.textContent = "";
    return;
  }
  const code = error instanceof ApiError ? error.code : null;
  const known = code && ["unauthenticated", "rate_limited", "forbidden", "not_found"].includes(code);
  box.textContent = known ? t(`error.${code}`) : `${t("error.other")}${error.message}`;
  box.hidden = false;
}

function setSession(doc) {
  session = doc;
  setCsrf(doc ? doc.csrf : null);
  const who = document.getElementById("who");
  who.textContent = doc ? `${doc.reader} · ${t(`role.${doc.role}`)}${doc.units.length ? ` · ${doc.units.join(" ")}` : ""}` : "";
}

function nextDay(date) {
  const moment = new Date(`${date}T00:00:00Z`);
  moment.setUTCDate(moment.getUTCDate() + 1);
  return moment.toISOString().slice(0, 10);
}

function formValues(form) {
  const values = {};
  for (const [name, value] of new FormData(form).entries()) values[name] = String(value).trim();
  if (values.to) values.to = nextDay(values.to);  // the day given is included
  return values;
}

async function runSearch(values, append) {
  const params = { ...values };
  if (append && searchNext) params.after = searchNext;
  const doc = await api(`/console/api/items${query(params)}`);
  searchNext = doc.next;
  renderResults(document.querySelector("#results tbody"), doc.items, append);
  document.getElementById("results-empty").hidden = append || doc.items.length > 0;
  document.getElementById("results-more").hidden = !doc.next;
  document.getElementById("results").dataset.loaded = String(Date.now());
}

async function runLog(values, append) {
  const params = { ...values };
  if (append && logBefore) params.before = logBefore;
  const doc = await api(`/console/api/access-log${query(params)}`);
  logBefore = doc.before;
  renderLog(document.querySelector("#log tbody"), doc.rows, append);
  document.getElementById("log-more").hidden = !doc.before;
  document.getElementById("log").dataset.loaded = String(Date.now());
}

async function runFleet(values) {
  const doc = await api(`/console/api/fleet${query(values)}`);
  const select = document.getElementById("fleet-station");
  for (const row of doc.stations) {
    if (fleetStations.has(row.station)) continue;
    fleetStations.add(row.station);
    const option = el("option", row.station);
    option.value = row.station;
    select.append(option);
  }
  renderFleet(document.querySelector("#fleet tbody"), doc);
  document.getElementById("fleet-summary").textContent = t("fleet.summary")
    .replace("{n}", String(doc.recorders.length)).replace("{overdue}", String(doc.recorders.filter((r) => r.overdue).length));
  document.getElementById("fleet-empty").hidden = doc.recorders.length > 0;
  document.getElementById("fleet").dataset.loaded = String(Date.now());
}

async function openItem(id) {
  const doc = await api(`/console/api/items/${encodeURIComponent(id)}`);
  // One playback id per opening of the page: its range requests are one line of the access log.
  const playback = crypto.randomUUID();
  renderItem(doc, `/console/api/items/${encodeURIComponent(doc.item)}/media?playback=${playback}`);
  document.getElementById("item-view").dataset.item = doc.item;
}

async function route() {
  showError(null);
  if (session === null) {
    show("signin-view");
    return;
  }
  const hash = location.hash || "#/search";
  try {
    if (hash.startsWith("#/item/")) {
      show("item-view");
      await openItem(decodeURIComponent(hash.slice("#/item/".length)));
    } else if (hash.startsWith("#/fleet")) {
      show("fleet-view");
      await runFleet(lastFleet);
    } else if (hash.startsWith("#/log")) {
      show("log-view");
      await runLog(lastLog, false);
    } else {
      show("search-view");
    }
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      setSession(null);
      show("signin-view");
    }
    showError(error);
  }
}

async function signedIn(doc) {
  setSession(doc);
  document.getElementById("signin-password").value = "";
  document.getElementById("signin-totp").value = "";
  if (!location.hash || location.hash === "#/signin") location.hash = "#/search";
  await route();
}

function bind() {
  document.getElementById("lang").addEventListener("click", () => {
    toggleLang();
    setSession(session);
  });
  document.getElementById("signin-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    showError(null);
    const body = {
      name: document.getElementById("signin-name").value.trim(),
      password: document.getElementById("signin-password").value,
    };
    const code = document.getElementById("signin-totp").value.trim();
    if (code) body.totp = code;
    try {
      await signedIn(await api("/console/api/sign-in", { method: "POST", body }));
    } catch (error) {
      showError(error);
    }
  });
  document.getElementById("signin-cert").addEventListener("click", async () => {
    showError(null);
    try {
      await signedIn(await api("/console/api/sign-in/certificate", { method: "POST" }));
    } catch (error) {
      showError(error);
    }
  });
  document.getElementById("signout").addEventListener("click", async () => {
    try {
      await api("/console/api/sign-out", { method: "POST" });
    } catch (error) {
      showError(error);
    }
    setSession(null);
    show("signin-view");
  });
  document.getElementById("search-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    showError(null);
    lastSearch = formValues(event.target);
    try {
      await runSearch(lastSearch, false);
    } catch (error) {
      showError(error);
    }
  });
  document.getElementById("results-more").addEventListener("click", () => runSearch(lastSearch, true).catch(showError));
  document.getElementById("log-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    showError(null);
    lastLog = formValues(event.target);
    try {
      await runLog(lastLog, false);
    } catch (error) {
      showError(error);
    }
  });
  document.getElementById("fleet-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    showError(null);
    lastFleet = formValues(event.target);
    try {
      await runFleet(lastFleet);
    } catch (error) {
      showError(error);
    }
  });
  document.getElementById("log-more").addEventListener("click", () => runLog(lastLog, true).catch(showError));
  document.getElementById("sensitive-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const item = document.getElementById("item-view").dataset.item;
    const readers = document.getElementById("sensitive-readers").value.split(/\s+/).filter(Boolean);
    const reason = document.getElementById("sensitive-reason").value.trim();
    try {
      await api(`/console/api/items/${encodeURIComponent(item)}/sensitive`, { method: "POST", body: { readers, reason } });
      await route();
    } catch (error) {
      showError(error);
    }
  });
  document.getElementById("sensitive-unmark").addEventListener("click", async () => {
    const item = document.getElementById("item-view").dataset.item;
    const reason = document.getElementById("sensitive-reason").value.trim();
    try {
      await api(`/console/api/items/${encodeURIComponent(item)}/sensitive`, { method: "DELETE", body: { reason } });
      await route();
    } catch (error) {
      showError(error);
    }
  });
  window.addEventListener("hashchange", route);
}

async function start() {
  applyI18n(document);
  bind();
  try {
    setSession(await api("/console/api/session"));
  } catch {
    setSession(null);
  }
  await route();
  document.body.dataset.ready = "true";
}

start();
