// The dock screen's check-out page (领用): an officer types 警号 and PIN on the pad and is issued a recorder, or
// told why not. It exists only on a station whose desk answers (GET /api/v1/checkout/outcomes; 404 without
// [equipment] enabled) and takes 警号 + PIN from this screen (its "pin_checkout"; off with [equipment]
// screen_checkout = false): then a button opens it over the bays.
//
// POST /api/v1/checkout {officer_no, pin} (JSON, from this page's own origin: the API's CSRF guard) answers
// with the outcome: an assignment (the bay to take it from) or a refusal with its screen text. The desk's
// other outcomes (cards at the reader) are read every OUTCOMES_MS and the newest not yet shown appears at
// the foot of the screen for a while. The PIN field is cleared after every attempt and whenever the page
// closes; nothing typed is kept anywhere. Text from the station is set with textContent, never as HTML.
// The language follows the main page's switch (the document's lang attribute).

const CHECKOUT_URL = "/api/v1/checkout";
const OUTCOMES_URL = "/api/v1/checkout/outcomes";
const OUTCOMES_MS = 2000;
const FRESH_S = 30; // an outcome older than this when first seen is not shown (the page was just opened)
const SHOWN_MS = 20000; // how long an outcome stays on the screen
const IDLE_CLOSE_MS = 60000; // the page closes (and forgets what was typed) after this long untouched
const OFFICER_NO_MAX = 6;
const PIN_MAX = 12;

const WORDS = {
  zh: {
    open: "领用记录仪",
    title: "领用执法记录仪",
    officerNo: "警号",
    pin: "密码",
    clear: "清除",
    back: "删除",
    submit: "确认领用",
    close: "关闭",
    working: "正在办理，请稍候…",
    needBoth: "请输入警号和密码",
    failed: "无法连接采集站，请稍后再试",
    card: "刷卡领用",
    switchTo: "English",
  },
  en: {
    open: "Check out",
    title: "Check out a recorder",
    officerNo: "Officer no.",
    pin: "PIN",
    clear: "Clear",
    back: "Delete",
    submit: "Check out",
    close: "Close",
    working: "Working, please wait…",
    needBoth: "Enter your officer number and PIN",
    failed: "The station cannot be reached: try again shortly",
    card: "Card",
    switchTo: "中文",
  },
};

const $ = (selector, root = document) => root.querySelector(selector);

const state = {
  field: "officer", // which field the pad types into
  busy: false,
  lastShown: 0, // the number of the newest outcome shown
  idleTimer: null,
  toastTimer: null,
  result: null, // the outcome shown on the page: {outcome, screen_text} or {message}
};

function language() {
  return (document.documentElement.lang || "zh").startsWith("zh") ? "zh" : "en";
}

function w() {
  return WORDS[language()];
}

// The station's texts are "中文 · English": the part in the screen's language.
function localText(text) {
  const parts = String(text ?? "").split(" · ");
  if (parts.length < 2) return parts[0];
  return language() === "zh" ? parts[0] : parts.slice(1).join(" · ");
}

function setText(element, text) {
  const value = text == null ? "" : String(text);
  if (element.textContent !== value) element.textContent = value;
}

function render() {
  const words = w();
  setText($("#checkout-open"), words.open);
  setText($("#checkout-title"), words.title);
  setText($("#checkout-officer-label"), words.officerNo);
  setText($("#checkout-pin-label"), words.pin);
  setText($("#checkout-clear"), words.clear);
  setText($("#checkout-back"), words.back);
  setText($("#checkout-submit"), words.submit);
  setText($("#checkout-close"), words.close);
  setText($("#checkout-language"), words.switchTo);
  const result = $("#checkout-result");
  const shown = state.result;
  result.hidden = shown == null;
  if (shown) {
    result.dataset.outcome = shown.outcome ?? "message";
    setText(result, shown.message ?? localText(shown.screen_text));
  }
  for (const name of ["officer", "pin"]) {
    $(`#checkout-${name}`).closest(".checkout-field").classList.toggle("active", state.field === name);
  }
  $("#checkout-submit").disabled = state.busy;
}

function typed(name) {
  return $(`#checkout-${name}`);
}

function forget() {
  typed("officer").value = "";
  typed("pin").value = "";
  state.field = "officer";
}

function touch() {
  clearTimeout(state.idleTimer);
  state.idleTimer = setTimeout(close, IDLE_CLOSE_MS);
}

function open() {
  forget();
  state.result = null;
  $("#checkout").hidden = false;
  document.body.classList.add("checkout-open");
  touch();
  render();
}

function close() {
  clearTimeout(state.idleTimer);
  forget();
  state.result = null;
  $("#checkout").hidden = true;
  document.body.classList.remove("checkout-open");
  render();
}

function press(key) {
  touch();
  const input = typed(state.field);
  const max = state.field === "officer" ? OFFICER_NO_MAX : PIN_MAX;
  if (key === "clear") input.value = "";
  else if (key === "back") input.value = input.value.slice(0, -1);
  else if (/^[0-9]$/.test(key) && input.value.length < max) input.value += key;
  // A full 警号 moves on to the PIN, as the officer expects.
  if (state.field === "officer" && input.value.length === OFFICER_NO_MAX && /^[0-9]$/.test(key)) state.field = "pin";
  render();
}

async function submit() {
  touch();
  const officerNo = typed("officer").value;
  const pin = typed("pin").value;
  if (!officerNo || !pin) {
    state.result = { message: w().needBoth };
    render();
    return;
  }
  state.busy = true;
  state.result = { message: w().working };
  render();
  try {
    const response = await fetch(CHECKOUT_URL, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ officer_no: officerNo, pin }),
      cache: "no-store",
    });
    const answer = await response.json().catch(() => null);
    if (answer && typeof answer.screen_text === "string") {
      state.result = answer;
      if (typeof answer.number === "number") state.lastShown = Math.max(state.lastShown, answer.number);
    } else {
      state.result = { message: w().failed };
    }
  } catch (error) {
    console.error("check-out", error);
    state.result = { message: w().failed };
  } finally {
    state.busy = false;
    typed("pin").value = "";
    state.field = state.result?.outcome === "refused" ? "pin" : "officer";
    if (state.result?.outcome === "assigned") typed("officer").value = "";
    render();
  }
}

// -- the desk's other outcomes (the card reader) ---------------------------------------------------------

function showToast(outcome) {
  const toast = $("#checkout-toast");
  toast.dataset.outcome = outcome.outcome;
  toast.dataset.text = outcome.screen_text;
  setText(toast, localText(outcome.screen_text));
  toast.hidden = false;
  clearTimeout(state.toastTimer);
  state.toastTimer = setTimeout(() => { toast.hidden = true; }, SHOWN_MS);
}

// The desk's answer ({pin_checkout, outcomes}), or its HTTP status when it has none (404: no desk here).
async function readOutcomes() {
  let answer;
  try {
    const response = await fetch(OUTCOMES_URL, { cache: "no-store" });
    if (!response.ok) return response.status;
    answer = await response.json();
  } catch {
    return 0;
  }
  const newest = (answer.outcomes ?? [])[0];
  if (newest && newest.number > state.lastShown) {
    state.lastShown = newest.number;
    if (newest.age_s < FRESH_S) showToast(newest);
  }
  return answer;
}

function buildPad() {
  const pad = $("#checkout-pad");
  for (const key of ["1", "2", "3", "4", "5", "6", "7", "8", "9", "clear", "0", "back"]) {
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.key = key;
    button.id = key === "clear" || key === "back" ? `checkout-${key}` : `checkout-key-${key}`;
    if (/^[0-9]$/.test(key)) button.textContent = key;
    button.addEventListener("click", () => press(key));
    pad.append(button);
  }
}

async function start() {
  buildPad();
  $("#checkout-open").addEventListener("click", open);
  $("#checkout-close").addEventListener("click", close);
  $("#checkout-submit").addEventListener("click", submit);
  // The page covers the header: its own switch works the main page's (which keeps the choice).
  $("#checkout-language").addEventListener("click", () => {
    touch();
    $("#language").click();
  });
  for (const name of ["officer", "pin"]) {
    $(`#checkout-${name}`).closest(".checkout-field").addEventListener("click", () => {
      state.field = name;
      touch();
      render();
    });
  }
  new MutationObserver(() => {
    render();
    const toast = $("#checkout-toast");
    if (toast.dataset.text) setText(toast, localText(toast.dataset.text));
  }).observe(document.documentElement, { attributes: true, attributeFilter: ["lang"] });
  render();
  // A desk that takes 警号 + PIN from this screen shows the button; a desk without (screen_checkout off) still
  // shows its card outcomes; a station without a desk (404) neither.
  const answer = await readOutcomes();
  const pin = typeof answer === "object" && answer.pin_checkout === true;
  $("#checkout-open").hidden = !pin;
  document.body.dataset.checkout = pin ? "ready" : "off";
  if (answer === 404) return;
  setInterval(readOutcomes, OUTCOMES_MS);
}

start();
