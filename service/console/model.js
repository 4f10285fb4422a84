// Model page (#/model): the served bundle, training curve, offline quality, index,
// tuning points, filtered recall and this replica's reloads.

import { api, showError } from "./api.js";
import { chart, fmt, svgEl } from "./charts.js";
import { ago, card, h, loading, num, pct, table, when } from "./dom.js";

const view = document.getElementById("view");

export async function modelPage() {
  view.replaceChildren(h("h1", {}, "Model"), loading());
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
    model.source
      ? sourceCard(model)
      : h("div", { class: "grid" }, trainingCard(model.trainer_metrics ?? {}), qualityCard(model.trainer_metrics ?? {})),
    h("div", { class: "grid" }, indexCard(model.index ?? {}), tuningCard(model.index ?? {})),
    filteredCard(model.index ?? {}),
    replicaCard(replica),
  );
  if (replica instanceof Error) showError(replica);
}

/** Where an imported bundle's vectors came from: the command, its input files, the rule. */
function sourceCard(model) {
  const source = model.source;
  const rule = model.history_rule;
  const facts = [
    ["made by", source.model ?? "not named (recall import --model)"],
    ["metric", model.metric === "cosine" ? "cosine (vectors normalized at import)" : "inner product"],
    ["history rule", rule ? `mean of the last ${rule.history_length} items' vectors${model.metric === "cosine" ? ", normalized" : ""}` : "user tower"],
  ];
  const inputs = Object.entries(source.inputs ?? {});
  return card(
    "Imported vectors",
    h("p", { class: "mono", "data-testid": "import-command" }, source.command),
    table(["", ""], facts.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v)))),
    table(
      ["input", "file", "rows ", "columns", "sha256"],
      inputs.map(([role, f]) =>
        h("tr", { "data-testid": `import-input-${role}` }, h("td", {}, role), h("td", { class: "mono" }, f.path), h("td", { class: "num" }, Number(f.rows).toLocaleString("en")),
          h("td", {}, (f.columns ?? []).join(", ")), h("td", { class: "mono", title: f.sha256 }, String(f.sha256).slice(0, 12))),
      ),
    ),
  );
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

