// recall console: a hash router and the pages (Model, User, new-user builder, Item, Live).
// Read-only: it calls only GET endpoints and the read-only POSTs /v1/recall and
// /v1/items/{id}/similar. Every API error shows the envelope's message in #error.

import { chart, fmt, svgEl } from "./charts.js";
import { bucketDelta, buckets, parseProm, quantile, statusClass, sumBy } from "./prom.js";

const view = document.getElementById("view");
const errorBox = document.getElementById("error");

/** An API failure: the envelope's code and message (or a network/HTTP description). */
class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** JSON from `path` (GET, or POST with `body`); throws ApiError with the envelope's message. */
async function api(path, body) {
  const init = body === undefined
    ? { headers: { Accept: "application/json" } }
    : { method: "POST", headers: { "Content-Type": "application/json", Accept: "application/json" }, body: JSON.stringify(body) };
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, "network", `network error calling ${path}: ${e.message}`);
  }
  const text = await res.text();
  let data = null;
  try {
    data = JSON.parse(text);
  } catch {
    /* not JSON: handled below */
  }
  if (!res.ok) {
    const message = data?.error?.message ?? `${res.status} ${res.statusText || "error"} from ${path}`;
    throw new ApiError(res.status, data?.error?.code ?? `http_${res.status}`, message);
  }
  if (data === null) throw new ApiError(res.status, "bad_response", `${path} answered no JSON`);
  return data;
}

/** Shows `err`'s message in #error, under any other message shown since the last clear. */
function showError(err) {
  const message = err instanceof Error ? err.message : String(err);
  const shown = [...errorBox.children].map((c) => c.textContent);
  if (!shown.includes(message)) {
    const line = document.createElement("div");
    line.textContent = message;
    line.title = err instanceof ApiError ? `HTTP ${err.status} ${err.code}` : "";
    errorBox.append(line);
  }
  errorBox.hidden = false;
}

function clearError() {
  errorBox.hidden = true;
  errorBox.replaceChildren();
}

/** An element `tag` with attributes (`class`, `data-*`, properties) and children. */
function h(tag, attrs = {}, ...children) {
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
const loading = () => h("p", { class: "muted" }, "loading…");
const num = (v, digits = 4) => (typeof v === "number" ? String(Number(v.toFixed(digits))) : v ?? "—");
const pct = (v) => (typeof v === "number" ? `${(v * 100).toFixed(1)}%` : "—");

/** "3 h 5 min ago" for seconds. */
function ago(seconds) {
  if (!Number.isFinite(seconds)) return "";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min ago`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h ago`;
}

/** A unix-seconds or ISO time as local "YYYY-MM-DD HH:MM:SS". */
function when(t) {
  const d = typeof t === "number" ? new Date(t * 1000) : new Date(t);
  if (Number.isNaN(d.getTime())) return String(t);
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

/** An id typed by a person: an integer when it looks like one, else the string. */
function parseId(text) {
  const t = text.trim();
  return /^-?\d{1,15}$/.test(t) ? Number(t) : t;
}

const idPath = (id) => encodeURIComponent(String(id));

/** An item's title (or its id) and its other attributes as short text. */
function itemTitle(id, attributes) {
  return attributes?.title ? String(attributes.title) : `item ${id}`;
}
function attrText(attributes) {
  if (!attributes) return "";
  return Object.entries(attributes)
    .filter(([k]) => k !== "title")
    .map(([k, v]) => `${k}: ${Array.isArray(v) ? v.join(", ") : v}`)
    .join(" · ");
}

function card(title, ...children) {
  return h("section", { class: "card" }, h("h2", {}, title), ...children);
}

function table(headers, rows, attrs = {}) {
  return h(
    "table",
    attrs,
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", { class: x.endsWith(" ") ? "num" : "" }, x.trim())))),
    h("tbody", {}, rows),
  );
}

// ---------------------------------------------------------------- Model page

async function modelPage() {
  view.replaceChildren(h("h1", {}, "Model"), h("p", { class: "muted" }, "loading…"));
  const [model, replica] = await Promise.all([
    api("/v1/model"),
    api("/v1/replica").catch((e) => e),
  ]);
  const created = new Date(model.created_at);
  const counts = model.counts ?? {};
  const summary = card(
    "Bundle",
    h(
      "div",
      { class: "stats" },
      h("div", { class: "stat" }, h("b", { class: "mono", "data-testid": "bundle-id" }, model.bundle_id), h("span", {}, "bundle id")),
      h("div", { class: "stat" }, h("b", {}, ago((Date.now() - created.getTime()) / 1000)), h("span", {}, `created ${when(model.created_at)}`)),
      ...Object.entries(counts).map(([k, v]) => h("div", { class: "stat" }, h("b", {}, Number(v).toLocaleString("en")), h("span", {}, k))),
      h("div", { class: "stat" }, h("b", {}, model.dim), h("span", {}, "dimensions")),
      model.item_attributes
        ? h("div", { class: "stat" }, h("b", {}, Object.keys(model.item_attributes).length), h("span", {}, "item attributes"))
        : null,
    ),
  );
  view.replaceChildren(
    h("h1", {}, "Model"),
    summary,
    h("div", { class: "grid" }, trainingCard(model.trainer_metrics ?? {}), qualityCard(model.trainer_metrics ?? {})),
    h("div", { class: "grid" }, indexCard(model.index ?? {}), tuningCard(model.index ?? {})),
    filteredCard(model.index ?? {}),
    replicaCard(replica),
  );
  if (replica instanceof Error) showError(replica);
}

/** Per-epoch records of the trainer's metrics: [{epoch, loss, hr}]. */
function epochs(metrics) {
  const rows = metrics.history ?? metrics.epochs ?? [];
  return rows.map((r) => ({
    epoch: r.epoch,
    loss: r.loss ?? r.train_loss,
    hr: r.val_hr_at_50 ?? r.valid_hr ?? r.val_hr,
  }));
}

function trainingCard(metrics) {
  const rows = epochs(metrics);
  if (rows.length === 0) return card("Training curve", h("p", { class: "muted" }, "The manifest records no per-epoch history."));
  const hrK = Object.keys(metrics).find((k) => /^valid_hr@\d+$/.test(k))?.split("@")[1] ?? "50";
  const svg = chart({
    testid: "training-curve",
    title: "loss and validation hit rate per epoch",
    width: 560,
    height: 270,
    x: { label: "epoch", integer: true },
    left: {
      label: "training loss (cross-entropy, nats)",
      series: [{ name: "loss", color: "#2563eb", points: rows.map((r) => [r.epoch, r.loss]) }],
    },
    right: {
      label: `validation HR@${hrK} (fraction)`,
      series: [{ name: `HR@${hrK}`, color: "#d97706", shape: "square", pointClass: "point-hr", points: rows.map((r) => [r.epoch, r.hr]) }],
    },
  });
  const best = metrics.best_epoch;
  return card(
    "Training curve",
    svg,
    h("p", { class: "muted" }, `${rows.length} epochs`, best ? `; best epoch ${best} (its weights are in the bundle)` : ""),
  );
}

function qualityCard(metrics) {
  // Offline quality: the trainer's validation hit rate against the popularity baseline
  // measured on the same users (metrics.popularity), then the other training numbers.
  const baseline = metrics.popularity && typeof metrics.popularity === "object" ? metrics.popularity : {};
  const compared = Object.keys(baseline).filter((k) => typeof metrics[k] === "number" && typeof baseline[k] === "number");
  const scalars = Object.entries(metrics).filter(
    ([k, v]) => (typeof v === "number" || typeof v === "string") && !compared.includes(k),
  );
  const users = metrics.validation_users ? `${Number(metrics.validation_users).toLocaleString("en")} validation users` : "validation users";
  const versus = compared.length
    ? h(
        "div",
        { "data-testid": "quality-vs-popularity" },
        bars(compared.flatMap((k) => [
          { label: `model ${k.replace("valid_hr", "HR")}`, value: metrics[k], color: "#2563eb" },
          { label: `popularity ${k.replace("valid_hr", "HR")}`, value: baseline[k], color: "#9ca3af" },
        ]), `hit rate (fraction of ${users})`),
        h("p", { class: "muted" }, "HR@K: the share of validation users whose held-out next item is in the top K; popularity recommends the most-interacted items."),
        table(
          ["metric", "model ", "popularity ", "model / popularity "],
          compared.map((k) =>
            h("tr", {}, h("td", {}, k), h("td", { class: "num" }, num(metrics[k])), h("td", { class: "num" }, num(baseline[k])),
              h("td", { class: "num" }, baseline[k] > 0 ? `${(metrics[k] / baseline[k]).toFixed(2)}×` : "—")),
          ),
        ),
      )
    : h("p", { class: "muted" }, "No popularity baseline in this bundle's manifest.");
  return card(
    "Offline quality",
    versus,
    h("h2", { style: "margin-top:.8rem" }, "training"),
    table(["metric", "value "], scalars.map(([k, v]) => h("tr", {}, h("td", {}, k), h("td", { class: "num" }, num(v))))),
  );
}

/** Horizontal bars of values in [0, 1] with their labels and an x axis labelled `xLabel`. */
function bars(items, xLabel) {
  const width = 520;
  const rowH = 22;
  const left = 150;
  const right = 50;
  const top = 6;
  const plotW = width - left - right;
  const height = top + items.length * rowH + 40;
  const max = Math.max(1e-9, ...items.map((i) => i.value));
  const scale = max <= 1 ? 1 : max;
  const svg = svgEl("svg", { viewBox: `0 0 ${width} ${height}`, width, height, class: "chart", role: "img", "aria-label": xLabel });
  const axisY = top + items.length * rowH + 4;
  for (const t of [0, 0.25, 0.5, 0.75, 1].map((f) => f * scale)) {
    const x = left + (t / scale) * plotW;
    svg.append(svgEl("line", { x1: x, x2: x, y1: top, y2: axisY, class: "gridline" }));
    svg.append(svgEl("text", { x, y: axisY + 14, class: "tick", "text-anchor": "middle" }, fmt(t)));
  }
  items.forEach((it, i) => {
    const y = top + i * rowH;
    svg.append(svgEl("text", { x: left - 8, y: y + 15, class: "tick", "text-anchor": "end" }, it.label));
    const bar = svgEl("rect", { x: left, y: y + 3, width: Math.max(1, (it.value / scale) * plotW), height: rowH - 8, fill: it.color, class: "bar" });
    bar.append(svgEl("title", {}, `${it.label}: ${num(it.value)}`));
    svg.append(bar);
    svg.append(svgEl("text", { x: left + (it.value / scale) * plotW + 5, y: y + 15, class: "tick" }, num(it.value, 3)));
  });
  svg.append(svgEl("line", { x1: left, x2: left + plotW, y1: axisY, y2: axisY, class: "axis" }));
  svg.append(svgEl("text", { x: left + plotW / 2, y: height - 4, class: "axis-label", "text-anchor": "middle" }, xLabel));
  return svg;
}

function indexCard(index) {
  const recall = index.recall ?? {};
  const lat = index.latency_ms ?? {};
  const params = { ...(index.build_params ?? {}), ...(index.search_params ?? {}) };
  const rows = [
    ["kind", index.kind],
    ["factory", index.factory],
    ["metric", index.metric],
    ["parameters", Object.entries(params).map(([k, v]) => `${k}=${v}`).join(", ") || "—"],
    ["recall@10 vs exact", num(recall.at_10)],
    [`recall@${recall.k ?? 100} vs exact`, num(recall[`at_${recall.k ?? 100}`] ?? recall.at_100)],
    ["recall target", recall.target !== undefined ? `${recall.target} (${recall.target_met ? "met" : "NOT met"})` : "—"],
    ["measured on", recall.queries ? `${recall.queries} held-out queries` : "—"],
    ["latency p50 / p99", lat.p50 !== undefined ? `${num(lat.p50, 3)} / ${num(lat.p99, 3)} ms (k=${lat.k}, ${lat.threads} thread)` : "—"],
    ["build time", index.build_seconds !== undefined ? `${index.build_seconds} s` : "—"],
    ["index size", index.index_bytes !== undefined ? `${(index.index_bytes / 2 ** 20).toFixed(1)} MiB` : "—"],
    ["faiss", index.faiss_version],
  ];
  return card("Index", table(["", ""], rows.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v ?? "—")))));
}

function tuningCard(index) {
  const trials = index.tuning ?? [];
  const recall = index.recall ?? {};
  const k = recall.k ?? 100;
  const queries = recall.tune_queries ?? recall.queries;
  // Each point annotated with the settings that differ between trials (e.g. nprobe=4).
  const varying = Object.keys(trials[0] ?? {}).filter(
    (key) => !key.startsWith("recall_at_") && key !== "batch_seconds" && new Set(trials.map((t) => JSON.stringify(t[key]))).size > 1,
  );
  const pts = trials
    .map((t) => {
      const r = t[`recall_at_${k}`] ?? Object.entries(t).find(([key]) => key.startsWith("recall_at_"))?.[1];
      const ms = queries ? (t.batch_seconds / queries) * 1000 : t.batch_seconds * 1000;
      const settings = Object.entries(t)
        .filter(([key]) => !key.startsWith("recall_at_") && key !== "batch_seconds")
        .map(([key, v]) => `${key}=${v}`)
        .join(", ");
      return { r, ms, settings, note: varying.map((key) => `${key}=${t[key]}`).join(", ") };
    })
    .filter((p) => Number.isFinite(p.r) && Number.isFinite(p.ms));
  if (pts.length === 0) return card("Recall vs latency while tuning", h("p", { class: "muted" }, "No tuning points recorded."));
  const svg = chart({
    testid: "tuning-chart",
    title: `settings the builder tried (${pts.length})`,
    width: 560,
    height: 270,
    x: { label: queries ? `batch time per query (ms, ${queries} queries)` : "batch time (ms)" },
    left: {
      label: `recall@${k} vs exact`,
      max: 1,
      series: [{
        name: "trial",
        color: "#7c3aed",
        line: false,
        annotate: pts.length > 1 ? pts.map((p) => p.note) : undefined,
        points: pts.map((p) => [p.ms, p.r]),
        labels: pts.map((p) => `${p.settings}: recall@${k} ${num(p.r)}, ${num(p.ms, 4)} ms/query`),
      }],
    },
  });
  return card(
    "Recall vs latency while tuning",
    svg,
    table(
      ["settings", `recall@${k} `, "ms/query "],
      pts.map((p) => h("tr", {}, h("td", { class: "mono" }, p.settings || "—"), h("td", { class: "num" }, num(p.r)), h("td", { class: "num" }, num(p.ms, 4)))),
    ),
  );
}

function filteredCard(index) {
  const rows = index.filtered ?? [];
  if (!Array.isArray(rows) || rows.length === 0) return card("Filtered recall", h("p", { class: "muted" }, "No filtered-recall measurements in this bundle."));
  const kKey = Object.keys(rows[0]).find((k) => k.startsWith("recall_at_") && k !== "recall_at_10") ?? "recall_at_100";
  return card(
    "Filtered recall (exact filtered top-k as truth)",
    table(
      ["target share", "allowed items ", "filter", "recall@10 ", `recall@${kKey.slice(10)} `, "p50 ms ", "strategy"],
      rows.map((r) =>
        h(
          "tr",
          {},
          h("td", {}, `${pct(r.selectivity)} (actual ${pct(r.share)})`),
          h("td", { class: "num" }, r.allowed_items?.toLocaleString("en")),
          h("td", { class: "mono" }, typeof r.filter === "string" ? r.filter : JSON.stringify(r.filter)),
          h("td", { class: "num" }, num(r.recall_at_10)),
          h("td", { class: "num" }, num(r[kKey])),
          h("td", { class: "num" }, num(r.p50_ms, 3)),
          h("td", {}, r.strategy ?? ""),
        ),
      ),
    ),
  );
}

function replicaCard(replica) {
  if (replica instanceof Error) return card("This replica", h("p", { class: "muted" }, `unavailable: ${replica.message}`));
  const reloads = [...(replica.reloads ?? [])].reverse();
  return card(
    "This replica",
    h("p", {}, `started ${when(replica.started_at)} (${ago(Date.now() / 1000 - replica.started_at)}), serving `, h("code", {}, replica.bundle_id ?? "—")),
    reloads.length
      ? table(
          ["time", "result", "bundle", "reason"],
          reloads.map((r) => h("tr", {}, h("td", {}, when(r.at)), h("td", {}, r.result), h("td", { class: "mono" }, r.bundle_id ?? "—"), h("td", {}, r.reason ?? ""))),
          { "data-testid": "reloads" },
        )
      : h("p", { class: "muted" }, "No reload attempts yet."),
  );
}

// ---------------------------------------------------------------- User pages

/** Recall options shared by the User page and the builder (kept across navigation). */
const options = { k: 20, exclude_seen: true, exclude_shown: false, filterText: "" };

let attributesText = null; // the bundle's item attributes as "name (kind), ...", once per page load

/** The served bundle's item attributes for the filter box's hint ("" when unknown). */
function attributeNames() {
  attributesText ??= api("/v1/model").then(
    (m) => (m.item_attributes?.length ? `attributes: ${m.item_attributes.map((a) => `${a.name} (${a.kind})`).join(", ")}` : "this bundle has no item attributes"),
    () => "",
  );
  return attributesText;
}

/** The controls form; `run` is called with the request's options when they change. */
function controls(run, { shown = true } = {}) {
  const hint = h("div", { class: "hint", "data-testid": "filter-error" });
  const area = h("textarea", {
    rows: 2,
    cols: 42,
    placeholder: 'none; e.g. {"<attribute>": {"any": ["<value>"]}}',
    value: options.filterText,
    "data-testid": "filter-input",
  });
  const kInput = h("input", { type: "number", min: 1, max: 1000, value: options.k, style: "width:5.5em", "data-testid": "k-input" });
  const seen = h("input", { type: "checkbox", checked: options.exclude_seen, "data-testid": "exclude-seen" });
  const shownBox = h("input", { type: "checkbox", checked: options.exclude_shown, "data-testid": "exclude-shown" });
  const submit = () => {
    options.k = Number(kInput.value);
    options.exclude_seen = seen.checked;
    options.exclude_shown = shownBox.checked;
    options.filterText = area.value;
    let filter;
    hint.textContent = "";
    area.classList.remove("bad");
    if (area.value.trim()) {
      try {
        filter = JSON.parse(area.value);
      } catch (e) {
        hint.textContent = `filter is not valid JSON: ${e.message}`;
        area.classList.add("bad");
        return;
      }
    }
    run({ k: options.k, exclude_seen: options.exclude_seen, exclude_shown: options.exclude_shown, filter });
  };
  const known = h("div", { class: "attrs" });
  attributeNames().then((text) => { known.textContent = text; });
  const form = h(
    "form",
    { class: "controls", onsubmit: (e) => { e.preventDefault(); submit(); } },
    h("label", {}, "k", kInput),
    h("label", { class: "check" }, seen, "exclude seen"),
    shown ? h("label", { class: "check" }, shownBox, "exclude shown") : null,
    h("label", {}, "filter (JSON, on item attributes)", area, known, hint),
    h("button", { type: "submit", "data-testid": "recall-button" }, "Recall"),
  );
  for (const el of [kInput, seen, shownBox]) el.addEventListener("change", submit);
  return { form, submit };
}

function userIdForm(current) {
  const input = h("input", { type: "text", value: current ?? "", placeholder: "user id, e.g. 196", size: 16, "data-testid": "user-id-input", autocomplete: "off" });
  return h(
    "form",
    {
      class: "controls",
      onsubmit: (e) => {
        e.preventDefault();
        const v = input.value.trim();
        if (v) location.hash = `#/user/${encodeURIComponent(v)}`;
      },
    },
    h("label", {}, "user id", input),
    h("button", { type: "submit", "data-testid": "user-go" }, "Show"),
  );
}

/** Rows of recalled items in rank order, each linking to its similar items. */
function itemRows(items) {
  return items.map((it, i) =>
    h(
      "tr",
      { "data-item-id": String(it.item_id) },
      h("td", { class: "num" }, i + 1),
      h("td", {}, h("a", { href: `#/item/${idPath(it.item_id)}`, "data-testid": "similar-link", title: "similar items" }, itemTitle(it.item_id, it.attributes)),
        h("div", { class: "attrs" }, `id ${it.item_id}`, it.attributes ? ` · ${attrText(it.attributes)}` : "")),
      h("td", { class: "num" }, num(it.score, 4)),
    ),
  );
}

function recalledTable(answer) {
  return h(
    "div",
    {},
    h("p", { class: "muted" }, `source: ${answer.source}`, answer.fresh_events ? `, ${answer.fresh_events} fresh events` : "", `, ${answer.items.length} items, bundle ${answer.bundle_id}`),
    table(["#", "item", "score "], itemRows(answer.items), { "data-testid": "recalled-items" }),
  );
}

function historyTable(hist) {
  const rows = [
    ...(hist.fresh_events ?? []).map((e) => ({ ...e, fresh: true })),
    ...(hist.history ?? []).map((e) => ({ ...e, fresh: false })),
  ];
  return table(
    ["time", "item"],
    rows.map((e) =>
      h(
        "tr",
        { "data-item-id": String(e.item_id), class: e.fresh ? "fresh" : "" },
        h("td", { class: "time" }, when(e.timestamp), e.fresh ? h("span", { class: "badge", "data-testid": "fresh-badge" }, "fresh") : null),
        h("td", {}, h("a", { href: `#/item/${idPath(e.item_id)}`, "data-testid": "similar-link" }, itemTitle(e.item_id, e.attributes)),
          h("div", { class: "attrs" }, `id ${e.item_id}`, e.attributes ? ` · ${attrText(e.attributes)}` : "")),
      ),
    ),
    { "data-testid": "user-history" },
  );
}

async function userPage(rawId) {
  const id = parseId(rawId);
  const histBox = h("div", {}, h("p", { class: "muted" }, "loading…"));
  const recBox = h("div", {}, h("p", { class: "muted" }, "loading…"));
  let asked = 0;
  const run = async (opts) => {
    clearError();
    recBox.replaceChildren(loading());
    const body = { user_id: id, k: opts.k, exclude_seen: opts.exclude_seen, exclude_shown: opts.exclude_shown, with_attributes: true };
    if (opts.filter !== undefined) body.filter = opts.filter;
    const mine = ++asked; // controls changed quickly: only the newest answer is shown
    try {
      const answer = await api("/v1/recall", body);
      if (mine === asked) recBox.replaceChildren(recalledTable(answer));
    } catch (e) {
      if (mine !== asked) return;
      recBox.replaceChildren(h("p", { class: "muted" }, "no answer"));
      showError(e);
    }
  };
  const { form, submit } = controls(run);
  view.replaceChildren(
    h("h1", {}, "User ", h("code", {}, String(id))),
    userIdForm(String(id)),
    h("div", { class: "split" }, card("History (newest first)", histBox), card("Recalled items", form, recBox)),
  );
  const hist = api(`/v1/users/${idPath(id)}/history?limit=50`).then(
    (data) => {
      const note = [];
      if (!data.known) note.push("not in the bundle: known from events only");
      if (data.fresh === false) note.push("the state store could not be read: fresh events missing");
      histBox.replaceChildren(
        h("p", { class: "muted" }, `${data.history.length} training items, ${data.fresh_events.length} fresh events`, note.length ? ` (${note.join("; ")})` : ""),
        historyTable(data),
      );
    },
    (e) => {
      histBox.replaceChildren(h("p", { class: "muted" }, "no history"));
      throw e;
    },
  );
  submit();
  await hist;
}

async function builderPage() {
  const picked = new Map(); // item id -> attributes
  const pickedBox = h("div", { class: "chips", "data-testid": "picked-items" });
  const results = h("div", {});
  const recBox = h("div", {}, h("p", { class: "muted" }, "Pick a few items to see what a user with that history gets."));
  let asked = 0;
  const run = async (opts) => {
    clearError();
    recBox.replaceChildren(loading());
    if (picked.size === 0) {
      asked += 1; // an answer still on its way is not shown
      recBox.replaceChildren(h("p", { class: "muted" }, "Pick a few items to see what a user with that history gets."));
      return;
    }
    const body = { history: [...picked.keys()], k: opts.k, exclude_seen: opts.exclude_seen, with_attributes: true };
    if (opts.filter !== undefined) body.filter = opts.filter;
    const mine = ++asked; // controls changed quickly: only the newest answer is shown
    try {
      const answer = await api("/v1/recall", body);
      if (mine === asked) recBox.replaceChildren(recalledTable(answer));
    } catch (e) {
      if (mine !== asked) return;
      recBox.replaceChildren(h("p", { class: "muted" }, "no answer"));
      showError(e);
    }
  };
  const { form, submit } = controls(run, { shown: false });
  const renderPicked = () => {
    pickedBox.replaceChildren(
      ...(picked.size === 0 ? [h("span", { class: "muted" }, "nothing picked yet")] : []),
      ...[...picked.entries()].map(([id, attrs]) =>
        h("span", { class: "chip", "data-item-id": String(id) }, itemTitle(id, attrs),
          h("button", { type: "button", title: "remove", onclick: () => { picked.delete(id); renderPicked(); submit(); } }, "×")),
      ),
    );
  };
  let timer;
  let seq = 0;
  const search = h("input", {
    type: "search",
    placeholder: "search items by title",
    size: 32,
    "data-testid": "item-search",
    autocomplete: "off",
    oninput: () => {
      clearTimeout(timer);
      timer = setTimeout(doSearch, 200);
    },
  });
  const doSearch = async () => {
    const q = search.value.trim();
    const mine = ++seq;
    if (!q) {
      results.replaceChildren();
      return;
    }
    try {
      const data = await api(`/v1/items/search?q=${encodeURIComponent(q)}&limit=20`);
      if (mine !== seq) return;
      clearError();
      results.replaceChildren(
        data.items.length === 0
          ? h("p", { class: "muted" }, `no item matches "${q}"`)
          : table(
              ["item", ""],
              data.items.map((it) =>
                h("tr", { "data-item-id": String(it.item_id), class: "pickable", title: "add to the history",
                  onclick: () => { picked.set(it.item_id, it.attributes); renderPicked(); submit(); } },
                  h("td", {}, itemTitle(it.item_id, it.attributes), h("div", { class: "attrs" }, `id ${it.item_id} · ${attrText(it.attributes)}`)),
                  h("td", {}, h("button", { type: "button", class: "plain", "data-testid": "pick-item" }, "add")),
                ),
              ),
              { "data-testid": "search-results" },
            ),
      );
    } catch (e) {
      if (mine === seq) showError(e);
    }
  };
  renderPicked();
  view.replaceChildren(
    h("h1", {}, "User"),
    userIdForm(""),
    h(
      "div",
      { class: "split" },
      card("New user: pick a history", h("form", { class: "controls", onsubmit: (e) => { e.preventDefault(); doSearch(); } }, search), results, h("h2", { style: "margin-top:.8rem" }, "Picked (oldest first)"), pickedBox),
      card("What this history recalls", form, recBox),
    ),
  );
}

async function itemPage(rawId) {
  const id = parseId(rawId);
  const recBox = h("div", {}, h("p", { class: "muted" }, "loading…"));
  const about = h("p", { class: "muted" }, "");
  let asked = 0;
  const run = async (opts) => {
    clearError();
    recBox.replaceChildren(loading());
    const body = { k: opts.k, with_attributes: true };
    if (opts.filter !== undefined) body.filter = opts.filter;
    const mine = ++asked; // controls changed quickly: only the newest answer is shown
    try {
      const answer = await api(`/v1/items/${idPath(id)}/similar`, body);
      if (mine === asked) recBox.replaceChildren(recalledTable(answer));
    } catch (e) {
      if (mine !== asked) return;
      recBox.replaceChildren(h("p", { class: "muted" }, "no answer"));
      showError(e);
    }
  };
  const { form, submit } = controls(run, { shown: false });
  form.querySelector("[data-testid=exclude-seen]").closest("label").remove();
  view.replaceChildren(h("h1", {}, "Similar items to ", h("code", {}, String(id))), about, h("div", { style: "max-width: 900px" }, card("Nearest items by item vector (POST /v1/items/{id}/similar)", form, recBox)));
  api(`/v1/items/${idPath(id)}`).then(
    (item) => about.replaceChildren(h("b", {}, itemTitle(item.id, item.attributes)), ` · ${attrText(item.attributes)}`),
    () => {},
  );
  submit();
}

// ---------------------------------------------------------------- Live page

const POLL_MS = 2500;
const KEEP = 72; // points on the rolling chart (3 min at 2.5 s)

async function livePage(signal) {
  const rpsBox = h("div", { "data-testid": "live-rps" }, h("p", { class: "muted" }, "waiting for two scrapes…"));
  const reloadBox = h("div", {});
  const chartBox = h("div", {});
  const stamp = h("p", { class: "muted" }, "");
  view.replaceChildren(
    h("h1", {}, "Live"),
    stamp,
    h("div", { class: "grid" }, card("Requests by route (over the last poll)", rpsBox), card("Request rate and p95 latency", chartBox)),
    card("Reloads and state store", reloadBox),
  );
  const history = [];
  let prev = null;
  const t0 = Date.now();
  const poll = async () => {
    let text;
    try {
      const res = await fetch("/metrics", { headers: { Accept: "text/plain" } });
      text = await res.text();
      if (!res.ok) throw new ApiError(res.status, "http", `/metrics answered ${res.status}`);
    } catch (e) {
      showError(e instanceof ApiError ? e : new ApiError(0, "network", `network error calling /metrics: ${e.message}`));
      return;
    }
    clearError();
    const now = { t: Date.now() / 1000, samples: parseProm(text) };
    if (prev) {
      const stats = liveStats(prev, now);
      history.push({ t: (Date.now() - t0) / 1000, rps: stats.total.rps, p95: stats.total.p95 });
      if (history.length > KEEP) history.shift();
      rpsBox.replaceChildren(liveTable(stats));
      chartBox.replaceChildren(liveChart(history));
    }
    reloadBox.replaceChildren(reloadTable(now.samples));
    stamp.textContent = `polling /metrics every ${POLL_MS / 1000} s; last ${when(now.t)}; this page's own /metrics polls are counted too`;
    prev = now;
  };
  await poll();
  const timer = setInterval(() => {
    if (signal.aborted) clearInterval(timer);
    else poll();
  }, POLL_MS);
  signal.addEventListener("abort", () => clearInterval(timer));
}

const REQUESTS = "recall_http_requests_total";
const LATENCY = "recall_http_request_duration_seconds";

/** Per-route request rate, status-class rates and latency quantiles between two scrapes. */
function liveStats(before, now) {
  const dt = Math.max(now.t - before.t, 1e-3);
  const routes = new Set();
  const count = (samples) => {
    const out = {};
    for (const s of samples) {
      if (s.name !== REQUESTS) continue;
      const r = s.labels.route ?? "";
      routes.add(r);
      const o = (out[r] ??= { all: 0 });
      o.all += s.value;
      const c = statusClass(s.labels.status);
      o[c] = (o[c] ?? 0) + s.value;
    }
    return out;
  };
  const a = count(before.samples);
  const b = count(now.samples);
  const row = (route) => {
    const x = b[route] ?? {};
    const y = a[route] ?? {};
    const d = (key) => Math.max(0, (x[key] ?? 0) - (y[key] ?? 0)) / dt;
    const bk = bucketDelta(buckets(now.samples, LATENCY, route), buckets(before.samples, LATENCY, route));
    return { route, rps: d("all"), e4: d("4xx"), e5: d("5xx"), total: x.all ?? 0, p50: quantile(0.5, bk), p95: quantile(0.95, bk), p99: quantile(0.99, bk) };
  };
  const rows = [...routes].sort().map(row);
  const all = bucketDelta(buckets(now.samples, LATENCY), buckets(before.samples, LATENCY));
  const sum = (k) => rows.reduce((s, r) => s + r[k], 0);
  const total = { route: "all routes", rps: sum("rps"), e4: sum("e4"), e5: sum("e5"), total: sum("total"), p50: quantile(0.5, all), p95: quantile(0.95, all), p99: quantile(0.99, all) };
  return { rows, total, dt };
}

const ms = (s) => (s === null ? "—" : (s * 1000).toFixed(s < 0.01 ? 2 : 1));

function liveTable(stats) {
  const line = (r, cls) =>
    h("tr", { "data-route": r.route, class: cls ?? "" },
      h("td", { class: "mono" }, r.route),
      h("td", { class: "num", "data-testid": cls ? "live-rps-total" : null }, r.rps.toFixed(2)),
      h("td", { class: "num" }, ms(r.p50)), h("td", { class: "num" }, ms(r.p95)), h("td", { class: "num" }, ms(r.p99)),
      h("td", { class: "num" }, r.e4.toFixed(2)), h("td", { class: "num" }, r.e5.toFixed(2)),
      h("td", { class: "num" }, Math.round(r.total).toLocaleString("en")));
  return table(
    ["route", "req/s ", "p50 ms ", "p95 ms ", "p99 ms ", "4xx/s ", "5xx/s ", "total "],
    [line(stats.total, "total"), ...stats.rows.map((r) => line(r))],
  );
}

function liveChart(history) {
  return chart({
    testid: "live-chart",
    width: 560,
    height: 250,
    x: { label: "time since the page opened (s)" },
    left: { label: "requests/s (all routes)", zero: true, series: [{ name: "req/s", color: "#2563eb", points: history.map((p) => [p.t, p.rps]) }] },
    right: {
      label: "p95 latency (ms)",
      zero: true,
      series: [{ name: "p95 ms", color: "#d97706", shape: "square", pointClass: "point-p95", points: history.filter((p) => p.p95 !== null).map((p) => [p.t, p.p95 * 1000]) }],
    },
  });
}

function reloadTable(samples) {
  const reloads = sumBy(samples, "recall_reloads_total", "result");
  const state = sumBy(samples, "recall_state_errors_total", "op");
  const events = sumBy(samples, "recall_events_total", "result");
  const bundles = samples.filter((s) => s.name === "recall_bundle_info" && s.value > 0).map((s) => s.labels.bundle_id);
  const kv = (obj) => Object.entries(obj).map(([k, v]) => `${k} ${Math.round(v)}`).join(", ") || "—";
  return table(["", "counts since start"], [
    h("tr", {}, h("th", {}, "bundle loads"), h("td", { "data-testid": "live-reloads" }, kv(reloads))),
    h("tr", {}, h("th", {}, "serving"), h("td", { class: "mono" }, bundles.join(", ") || "—")),
    h("tr", {}, h("th", {}, "state store errors"), h("td", {}, kv(state))),
    h("tr", {}, h("th", {}, "events"), h("td", {}, kv(events))),
  ]);
}

// ---------------------------------------------------------------- router

let current = null; // AbortController of the page on screen

async function route() {
  current?.abort();
  current = new AbortController();
  clearError();
  const hash = location.hash || "#/model";
  const parts = hash.slice(2).split("/");
  const page = parts[0];
  const arg = parts.slice(1).join("/");
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.nav === (page === "item" ? "user" : page));
  try {
    if (page === "model" || page === "") await modelPage();
    else if (page === "user" && arg) await userPage(decodeURIComponent(arg));
    else if (page === "user") await builderPage();
    else if (page === "item" && arg) await itemPage(decodeURIComponent(arg));
    else if (page === "live") await livePage(current.signal);
    else {
      view.replaceChildren(h("h1", {}, "Not found"), h("p", {}, "No such page: ", h("code", {}, hash), ". Try ", h("a", { href: "#/model" }, "Model"), "."));
    }
  } catch (e) {
    if (view.querySelector("p.muted")?.textContent === "loading…") view.querySelector("p.muted").textContent = "could not load this page";
    showError(e);
  }
}

window.addEventListener("hashchange", route);
window.addEventListener("unhandledrejection", (e) => showError(e.reason));
route();
