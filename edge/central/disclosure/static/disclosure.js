// The disclosure.html page's own code (no inline script: the pages are served with a CSP).
"use strict";
setupPage();
const form = document.getElementById("case");
form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const error = document.getElementById("error");
  const out = document.getElementById("items");
  const link = document.getElementById("download");
  error.replaceChildren(); out.replaceChildren(); link.hidden = true;
  const params = new URLSearchParams({ case: form.case.value });
  try {
    const doc = await getJson(`/v1/disclosure?${params}`);
    table(out, ["item", "station", "bytes", "SHA-256"], doc.items.map((i) => [i.item, i.station, i.size, i.sha256])).id = "case-items";
    link.href = `/v1/disclosure/package?${params}`;
    link.hidden = false;
  } catch (e) { showError(error, e); }
});
