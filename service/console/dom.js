// DOM helpers and formatting shared by the console pages.

/** An element `tag` with attributes (`class`, `data-*`, properties) and children. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k in el && !k.includes("-")) el[k] = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** A "loading…" placeholder (replacing an old answer at once, so nobody reads it as new). */
export const loading = () => h("p", { class: "muted" }, "loading…");
export const num = (v, digits = 4) => (typeof v === "number" ? String(Number(v.toFixed(digits))) : v ?? "—");
export const pct = (v) => (typeof v === "number" ? `${(v * 100).toFixed(1)}%` : "—");

/** "3 h 5 min ago" for seconds. */
export function ago(seconds) {
  if (!Number.isFinite(seconds)) return "";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min ago`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h ago`;
}

/** A unix-seconds or ISO time as local "YYYY-MM-DD HH:MM:SS". */
export function when(t) {
  const d = typeof t === "number" ? new Date(t * 1000) : new Date(t);
  if (Number.isNaN(d.getTime())) return String(t);
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

/** An id typed by a person: an integer when it looks like one, else the string. */
export function parseId(text) {
  const t = text.trim();
  return /^-?\d{1,15}$/.test(t) ? Number(t) : t;
}

export const idPath = (id) => encodeURIComponent(String(id));

/** An item's title (or its id) and its other attributes as short text. */
export function itemTitle(id, attributes) {
  return attributes?.title ? String(attributes.title) : `item ${id}`;
}
export function attrText(attributes) {
  if (!attributes) return "";
  return Object.entries(attributes)
    .filter(([k]) => k !== "title")
    .map(([k, v]) => `${k}: ${Array.isArray(v) ? v.join(", ") : v}`)
    .join(" · ");
}

export function card(title, ...children) {
  return h("section", { class: "card" }, h("h2", {}, title), ...children);
}

export function table(headers, rows, attrs = {}) {
  return h(
    "table",
    attrs,
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", { class: x.endsWith(" ") ? "num" : "" }, x.trim())))),
    h("tbody", {}, rows),
  );
}

