// The auditor pages' shared code: language switch (Chinese by default), fetching JSON, and filling tables.
// Everything that came from a station or a device is put into the page with textContent, never as HTML.
"use strict";

const TEXT = {
  zh: {
    nav_stats: "统计分析", nav_spot: "案卷抽查", nav_disclosure: "证据披露包", lang: "English",
    from: "开始日期", to: "结束日期", show: "查询", items: "证据数", hours: "录像时长（小时）",
    with_case: "有案件编号", important: "重点证据", by_unit: "按单位", by_officer: "按执法人员", by_day: "按日期",
    unit: "单位", unit_code: "单位代码", officer: "执法人员", officer_no: "警号", day: "日期",
    to_docking: "录制到入站", to_receipt: "入站到回执", median: "中位数", p90: "90% 分位", count: "计数",
    missing: "无法计算", item: "证据", case: "案件编号", acquired: "采集时间", important_list: "重点证据列表",
    size: "抽样数量", fraction: "抽样比例", seed: "随机种子（可选）", run: "开始抽查", report: "可打印报告",
    case_number: "案件编号", list: "查看证据", download: "下载披露包", station: "采集站", bytes: "字节",
    failed: "请求失败", seconds: "秒",
  },
  en: {
    nav_stats: "Statistics", nav_spot: "Spot checks", nav_disclosure: "Disclosure package", lang: "中文",
    from: "From", to: "To", show: "Show", items: "Items", hours: "Recorded hours",
    with_case: "With a case number", important: "Important", by_unit: "By unit", by_officer: "By officer",
    by_day: "By day", unit: "Unit", unit_code: "Unit code", officer: "Officer", officer_no: "Badge no.",
    day: "Day", to_docking: "Recording to docking", to_receipt: "Docking to receipt", median: "Median",
    p90: "90th percentile", count: "Count", missing: "Not computable", item: "Item", case: "Case number",
    acquired: "Acquired", important_list: "Important items", size: "Sample size", fraction: "Sample fraction",
    seed: "Seed (optional)", run: "Run the check", report: "Printable report", case_number: "Case number",
    list: "List items", download: "Download package", station: "Station", bytes: "Bytes",
    failed: "The request failed", seconds: "s",
  },
};

let lang = localStorage.getItem("audit-lang") === "en" ? "en" : "zh";
const t = (key) => TEXT[lang][key] || key;

function applyLanguage() {
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
  for (const el of document.querySelectorAll("[data-t]")) el.textContent = t(el.dataset.t);
}

function setupPage(onLanguage) {
  const switcher = document.getElementById("lang");
  switcher.addEventListener("click", () => {
    lang = lang === "zh" ? "en" : "zh";
    localStorage.setItem("audit-lang", lang);
    applyLanguage();
    if (onLanguage) onLanguage();
  });
  applyLanguage();
}

async function getJson(url) {
  const response = await fetch(url, { credentials: "same-origin" });
  const doc = await response.json();
  if (!response.ok) throw new Error(`${response.status} ${doc.detail || doc.error || ""}`);
  return doc;
}

// A duration in words: "3 天 4 小时" / "3 d 4 h", down to seconds for short ones.
function span(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const units = lang === "zh" ? [["天", 86400], ["小时", 3600], ["分", 60], ["秒", 1]]
                              : [["d", 86400], ["h", 3600], ["min", 60], ["s", 1]];
  let rest = Math.round(seconds);
  const parts = [];
  for (const [name, size] of units) {
    if (rest >= size || (size === 1 && parts.length === 0)) {
      parts.push(`${Math.floor(rest / size)} ${name}`);
      rest %= size;
    }
    if (parts.length === 2) break;
  }
  return parts.join(" ");
}

function cell(row, value, numeric) {
  const td = document.createElement("td");
  td.textContent = value === null || value === undefined ? "—" : String(value);
  if (numeric) td.className = "num";
  row.appendChild(td);
  return td;
}

function table(container, headers, rows) {
  const el = document.createElement("table");
  const head = el.insertRow();
  for (const key of headers) {
    const th = document.createElement("th");
    th.textContent = t(key);
    head.appendChild(th);
  }
  for (const values of rows) {
    const row = el.insertRow();
    for (const value of values) cell(row, value, typeof value === "number");
  }
  container.appendChild(el);
  return el;
}

function showError(el, error) {
  el.textContent = `${t("failed")}: ${error.message}`;
  el.className = "error";
}
