// The spotcheck.html page's own code (no inline script: the pages are served with a CSP).
"use strict";
setupPage();
const form = document.getElementById("check");
const today = new Date();
form.to.value = new Date(today.getTime() + 86400000).toISOString().slice(0, 10);
form.from.value = new Date(today.getTime() - 183 * 86400000).toISOString().slice(0, 10);
// An empty seed is left out: the central draws one and prints it on the report.
form.addEventListener("submit", () => { form.seed.disabled = form.seed.value === ""; setTimeout(() => { form.seed.disabled = false; }); });
