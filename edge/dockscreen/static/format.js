// Numbers for people: sizes, speeds, percentages. Pure functions, no DOM.

const UNITS = ["B", "KB", "MB", "GB", "TB"];

export function bytes(n) {
  if (typeof n !== "number" || !Number.isFinite(n) || n < 0) return "–";
  let value = n;
  let unit = 0;
  while (value >= 1000 && unit < UNITS.length - 1) {
    value /= 1000;
    unit += 1;
  }
  const digits = unit === 0 || value >= 100 ? 0 : 1;
  return `${value.toFixed(digits)} ${UNITS[unit]}`;
}

export function speed(bytesPerSecond) {
  if (typeof bytesPerSecond !== "number" || !(bytesPerSecond > 0)) return "–";
  return `${bytes(bytesPerSecond)}/s`;
}

export function percent(part, whole) {
  if (typeof part !== "number" || typeof whole !== "number" || !(whole > 0)) return null;
  return Math.max(0, Math.min(100, Math.floor((part * 100) / whole)));
}

export function count(n) {
  return typeof n === "number" && Number.isFinite(n) ? String(n) : "–";
}

export function seconds(value) {
  return typeof value === "number" && Number.isFinite(value) && value >= 0 ? Math.round(value) : null;
}

/** Whole seconds from an ISO 8601 UTC time (the status model's, microseconds allowed) to `nowMs`. */
export function ageSeconds(isoText, nowMs) {
  if (typeof isoText !== "string") return null;
  // Milliseconds at most: what every browser's Date parser takes.
  const parsed = Date.parse(isoText.replace(/(\.\d{3})\d+/, "$1"));
  if (!Number.isFinite(parsed)) return null;
  return Math.max(0, Math.round((nowMs - parsed) / 1000));
}

/** A clock offset in seconds with its sign ("+0.3"); null when unknown. */
export function offset(value) {
  if (typeof value !== "number" || !Number.isFinite(value)) return null;
  return `${value >= 0 ? "+" : "−"}${Math.abs(value).toFixed(1)}`;
}
