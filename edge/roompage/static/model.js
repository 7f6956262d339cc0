// What the page makes of the room status and of the operator's input. Pure functions, no DOM.

/** Milliseconds since the epoch from an ISO 8601 UTC time (microseconds allowed), or null. */
export function parseTime(isoText) {
  if (typeof isoText !== "string") return null;
  const parsed = Date.parse(isoText.replace(/(\.\d{3})\d+/, "$1"));
  return Number.isFinite(parsed) ? parsed : null;
}

/** Whole seconds from `isoText` to `nowMs` (never negative), or null. */
export function secondsSince(isoText, nowMs) {
  const then = parseTime(isoText);
  return then == null ? null : Math.max(0, Math.floor((nowMs - then) / 1000));
}

/** The local date and time of an ISO time, "YYYY-MM-DD HH:MM:SS" (the PC's clock is the station's). */
export function localTime(isoText) {
  const then = parseTime(isoText);
  if (then == null) return "–";
  const d = new Date(then);
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

/**
 * A source's state: "gap" (an open interruption: since and reason), "recording" (its ffmpeg runs and has
 * closed a segment), or "starting" (not yet: ffmpeg starting, probing, or waiting for its first segment).
 */
export function sourceState(source) {
  if (source && source.gap) return "gap";
  if (source && source.recording && source.last_segment_end_utc) return "recording";
  return "starting";
}

/**
 * The persons of the start form: one per line (or separated by ";"/"；"), each "name:role" (either
 * colon). Returns {persons} or {bad: the first line that is not one}.
 */
export function parsePersons(text) {
  const persons = [];
  for (const raw of String(text ?? "").split(/[\n;；]/)) {
    const line = raw.trim();
    if (!line) continue;
    const match = /^([^:：]+)[:：](.+)$/.exec(line);
    if (!match || !match[1].trim() || !match[2].trim()) return { bad: line };
    persons.push({ name: match[1].trim(), role: match[2].trim() });
  }
  return { persons };
}

/** The body of a start request from the form's fields (empty optional fields left out). */
export function startBody(fields, persons) {
  const body = {
    case_number: fields.case_number.trim(),
    subject: fields.subject.trim(),
    collector: fields.collector.trim(),
    persons,
  };
  if (fields.collector_no.trim()) body.collector_no = fields.collector_no.trim();
  return body;
}
