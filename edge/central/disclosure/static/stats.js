// The stats.html page's own code (no inline script: the pages are served with a CSP).
"use strict";
let last = null;
function render(doc) {
  const out = document.getElementById("result");
  out.replaceChildren();
  const figures = document.createElement("div");
  figures.className = "figures";
  const share = doc.with_case_number_share === null ? "—" : `${(doc.with_case_number_share * 100).toFixed(1)}%`;
  for (const [key, value, id] of [["items", doc.items, "total-items"], ["hours", doc.hours, "total-hours"],
                                  ["with_case", share, "case-share"], ["important", doc.important, "important-count"]]) {
    const box = document.createElement("div");
    box.className = "figure";
    box.id = id;
    box.textContent = String(value);
    const label = document.createElement("small");
    label.textContent = t(key);
    box.appendChild(label);
    figures.appendChild(box);
  }
  out.appendChild(figures);
  const heading = (key) => { const h = document.createElement("h2"); h.textContent = t(key); out.appendChild(h); };
  heading("by_unit");
  table(out, ["unit_code", "unit", "items", "hours"], doc.by_unit.map((u) => [u.unit_code, u.unit_name, u.items, u.hours])).id = "by-unit";
  heading("by_officer");
  table(out, ["officer_no", "officer", "unit_code", "items", "hours"],
        doc.by_officer.map((o) => [o.officer_no, o.officer_name, o.unit_code, o.items, o.hours])).id = "by-officer";
  heading("by_day");
  table(out, ["day", "items", "hours"], doc.by_day.map((d) => [d.day, d.items, d.hours])).id = "by-day";
  heading("to_docking");
  const times = (m) => [m.count, m.missing, span(m.median_s), span(m.p90_s)];
  table(out, ["", "count", "missing", "median", "p90"], [
    [t("to_docking"), ...times(doc.recording_to_docking)], [t("to_receipt"), ...times(doc.docking_to_receipt)]]).id = "times";
  heading("important_list");
  table(out, ["item", "case", "officer_no", "unit_code", "acquired"],
        doc.important_items.map((i) => [i.item, i.case_number, i.officer_no, i.unit_code, i.acquired_utc])).id = "important";
}
async function load(form) {
  const error = document.getElementById("error");
  error.replaceChildren();
  const params = new URLSearchParams({ from: form.from.value, to: form.to.value });
  try { last = await getJson(`/v1/stats?${params}`); render(last); } catch (e) { showError(error, e); }
}
setupPage(() => { if (last) render(last); });
const form = document.getElementById("period");
const today = new Date();
form.to.value = new Date(today.getTime() + 86400000).toISOString().slice(0, 10);
form.from.value = new Date(today.getTime() - 30 * 86400000).toISOString().slice(0, 10);
form.addEventListener("submit", (event) => { event.preventDefault(); load(form); });
