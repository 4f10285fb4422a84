// Live page (#/live): polls this replica's /metrics and shows request rates, latency
// quantiles, error rates and reloads between the last two scrapes.

import { apiText, poll } from "./api.js";
import { chart } from "./charts.js";
import { card, h, table, when } from "./dom.js";
import { bucketDelta, buckets, parseProm, quantile, statusClass, sumBy } from "./prom.js";

const view = document.getElementById("view");

const POLL_MS = 2500;
const KEEP = 72; // points on the rolling chart (3 min at 2.5 s)

export async function livePage(signal) {
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
  await poll(signal, POLL_MS, () => apiText("/metrics"), (text) => {
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
  });
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

