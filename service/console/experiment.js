// Experiment page (#/experiment): polls GET /v1/experiment and shows the arms (share,
// bundles, live events, HR@10/50/100 with 95% intervals), each arm's difference from
// control, and the cumulative live HR@K of each arm over time (K picked on the page).
// With no experiment running it shows control's live hit rate alone.

import { api, poll } from "./api.js";
import { chart } from "./charts.js";
import { ago, card, h, pct, table, when } from "./dom.js";

const view = document.getElementById("view");

const POLL_MS = 5000;
const DEFAULT_K = "50";
/** One colour per arm, in the answer's order (control first). */
const COLORS = ["#2563eb", "#d97706", "#047857", "#7c3aed", "#db2777", "#0891b2", "#4b5563"];

export async function experimentPage(signal) {
  const summaryBox = h("div", { "data-testid": "experiment-summary" });
  const armsBox = h("div", {});
  const diffBox = h("div", {});
  const chartBox = h("div", {});
  const stamp = h("p", { class: "muted" }, "");
  let k = DEFAULT_K;
  let last = null;
  const picker = h("select", {
    "data-testid": "experiment-k",
    onchange: (e) => {
      k = e.target.value;
      if (last) chartBox.replaceChildren(curves(last, k));
    },
  });
  const diffCard = card("Difference from control", diffBox);
  view.replaceChildren(
    h("h1", {}, "Experiment"),
    stamp,
    card("Experiment", summaryBox),
    card("Arms and their live hit rate", armsBox),
    diffCard,
    card("Live HR@K over time (cumulative)", h("form", { class: "controls", onsubmit: (e) => e.preventDefault() }, h("label", {}, "K", picker)), chartBox),
  );
  await poll(signal, POLL_MS, () => api("/v1/experiment"), (data) => {
    last = data;
    const ks = data.ks.map(String);
    if (picker.options.length !== ks.length) {
      if (!ks.includes(k)) k = ks[Math.min(1, ks.length - 1)];
      picker.replaceChildren(...ks.map((x) => h("option", { value: x, selected: x === k }, `HR@${x}`)));
    }
    summaryBox.replaceChildren(...summary(data));
    armsBox.replaceChildren(armsTable(data));
    diffCard.hidden = data.experiment === null;
    diffBox.replaceChildren(differencesTable(data));
    chartBox.replaceChildren(curves(data, k));
    stamp.textContent = `polling /v1/experiment every ${POLL_MS / 1000} s; last ${when(Date.now() / 1000)}`;
  });
}

const totalEvents = (data) => data.arms.reduce((s, a) => s + a.events, 0);

function summary(data) {
  const e = data.experiment;
  const out = [];
  if (e === null) {
    out.push(
      h("p", { "data-testid": "experiment-none" }, "No experiment is running: every user is in control, and the numbers below are control's live hit rate alone."),
      h("p", { class: "muted" }, "Start one with ", h("code", {}, "recall experiment start ROOT --arm NAME=BUNDLE_ID --share 0.1"), "."),
    );
  } else {
    out.push(
      h(
        "div",
        { class: "stats" },
        h("div", { class: "stat" }, h("b", { class: "mono", "data-testid": "experiment-id" }, e.id), h("span", {}, "experiment id")),
        h("div", { class: "stat" }, h("b", {}, ago(Date.now() / 1000 - e.started_at)), h("span", {}, `started ${when(e.started_at)}`)),
        h("div", { class: "stat" }, h("b", {}, data.arms.length), h("span", {}, "arms, control included")),
        h("div", { class: "stat" }, h("b", {}, totalEvents(data).toLocaleString("en")), h("span", {}, "live events")),
      ),
    );
  }
  if (totalEvents(data) === 0) {
    out.push(
      h(
        "p",
        { class: "muted", "data-testid": "experiment-no-events" },
        "No live events yet. An event is counted when a user recalled by id (POST /v1/recall with user_id) then posts an interaction (POST /v1/events).",
      ),
    );
  }
  return out;
}

/** "25.3% (18.1–33.0%)" for an interval {value, low, high}; "—" when it is null. */
export function interval(x) {
  if (x?.value === null || x?.value === undefined) return "—";
  return `${pct(x.value)} (${pct(x.low)}–${pct(x.high)})`;
}

function armsTable(data) {
  const ks = data.ks.map(String);
  const rows = data.arms.map((arm) =>
    h(
      "tr",
      { "data-arm": arm.name },
      h("td", {}, arm.name),
      h("td", { class: "num" }, pct(arm.share)),
      h("td", { class: "mono" }, arm.bundle_ids.length ? arm.bundle_ids.join(", ") : "—"),
      h("td", { class: "num", "data-testid": "arm-events" }, arm.events.toLocaleString("en")),
      ...ks.map((k) => h("td", { class: "num", "data-k": k }, interval(arm.hr[k]))),
    ),
  );
  return table(["arm", "share ", "bundles", "events ", ...ks.map((k) => `HR@${k} (95% interval) `)], rows, { "data-testid": "experiment-arms" });
}

/** "+5.0 pp" for a difference of two rates. */
const points = (v) => `${v >= 0 ? "+" : "−"}${Math.abs(v * 100).toFixed(1)} pp`;

/** What a difference's interval says: "better" or "worse" when it excludes zero. */
export function verdict(d) {
  if (d.value === null || d.low === null || d.high === null) return "no events yet";
  if (d.low > 0) return "better";
  if (d.high < 0) return "worse";
  return "not clear yet (the interval holds 0)";
}

function differencesTable(data) {
  const rows = data.differences.map((d) =>
    h(
      "tr",
      { "data-arm": d.arm, "data-k": d.k },
      h("td", {}, d.arm),
      h("td", {}, d.vs),
      h("td", {}, `HR@${d.k}`),
      h("td", { class: "num" }, d.value === null ? "—" : points(d.value)),
      h("td", { class: "num" }, d.low === null ? "—" : `${points(d.low)} to ${points(d.high)}`),
      h("td", { "data-testid": "verdict" }, verdict(d)),
    ),
  );
  return h(
    "div",
    {},
    table(["arm", "vs", "K", "difference ", "95% interval ", ""], rows, { "data-testid": "experiment-differences" }),
    h("p", { class: "muted" }, "Wilson intervals per arm, Newcombe's hybrid score interval for a difference; they treat events as independent, which repeated events of one user bend (the intervals are then somewhat too narrow)."),
  );
}

/**
 * Each arm's cumulative HR@k over the series' buckets, in time order:
 * [{arm, points: [[t, hr, events], ...]}] (t: bucket start, unix s; buckets before an
 * arm's first event are left out).
 */
export function cumulative(series, arms, k) {
  return arms.map((arm) => {
    let events = 0;
    let hits = 0;
    const pts = [];
    for (const b of series.filter((s) => s.arm === arm).sort((x, y) => x.t - y.t)) {
      events += b.events;
      hits += b.hits[k] ?? 0;
      if (events > 0) pts.push([b.t, hits / events, events]);
    }
    return { arm, points: pts };
  });
}

function curves(data, k) {
  const names = data.arms.map((a) => a.name);
  const lines = cumulative(data.series, names, k).filter((l) => l.points.length);
  if (lines.length === 0) return h("p", { class: "muted", "data-testid": "experiment-chart-empty" }, "No live events yet: the curves start with the first counted event.");
  const t0 = Math.min(...lines.map((l) => l.points[0][0]));
  return chart({
    testid: "experiment-chart",
    width: 760,
    height: 300,
    x: { label: `minutes since ${when(t0)}` },
    left: {
      label: `live HR@${k} (%)`,
      zero: true,
      series: lines.map((l) => ({
        name: l.arm,
        color: COLORS[names.indexOf(l.arm) % COLORS.length],
        pointClass: `point arm-${l.arm}`,
        points: l.points.map(([t, hr]) => [(t - t0) / 60, hr * 100]),
        labels: l.points.map(([t, hr, n]) => `${l.arm}: HR@${k} ${pct(hr)} over ${n} events, to the bucket of ${when(t)}`),
      })),
    },
  });
}
