// Small SVG charts for the console: line/scatter plots with labelled axes and units.
// No dependencies. Every chart is an <svg> built from numbers; nothing is fetched here.

const NS = "http://www.w3.org/2000/svg";

/** An SVG element `tag` with attributes `attrs` (and optional text). */
export function svgEl(tag, attrs = {}, text) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

/** About `count` round tick values covering [lo, hi]. */
function ticks(lo, hi, count = 5) {
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) return [];
  if (hi === lo) return [lo];
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) {
    out.push(Number(v.toPrecision(12)));
  }
  return out;
}

/** Short label for a tick value. */
export function fmt(v) {
  const a = Math.abs(v);
  if (a === 0) return "0";
  if (a >= 1e6) return `${(v / 1e6).toPrecision(3)}M`;
  if (a >= 1e4) return `${(v / 1e3).toPrecision(3)}k`;
  if (a >= 100) return v.toFixed(0);
  if (a >= 1) return String(Number(v.toPrecision(3)));
  return String(Number(v.toPrecision(2)));
}

/** [lo, hi] of the values, padded so points do not sit on the frame. */
function extent(values, { zero = false, pad = 0.06 } = {}) {
  const finite = values.filter(Number.isFinite);
  if (finite.length === 0) return [0, 1];
  let lo = Math.min(...finite);
  const hi = Math.max(...finite);
  if (zero) lo = Math.min(lo, 0);
  if (hi === lo) {
    const d = Math.abs(hi) * 0.1 || 1;
    return [lo - d, hi + d];
  }
  const d = (hi - lo) * pad;
  return [zero && lo === 0 ? 0 : lo - d, hi + d];
}

/**
 * A line/scatter chart.
 * opts: {
 *   title, xLabel, width=520, height=260, testid,
 *   x: {label, min?, max?, log?},
 *   left:  {label, series: [{name, points: [[x, y], ...], color, shape?: "circle"|"square",
 *                           pointClass?: string, line?: bool, labels?: string[] (tooltips),
 *                           annotate?: string[] (text beside each point)}], zero?, min?, max?},
 *   right: same as left, optional (a second y axis on the right)
 * }
 * Each point is drawn as a <circle> (or <rect>) with class `pointClass` (default "point")
 * and a <title> tooltip.
 */
export function chart(opts) {
  const width = opts.width ?? 520;
  const height = opts.height ?? 260;
  const m = { top: 28, right: opts.right ? 64 : 18, bottom: 46, left: 64 };
  const w = width - m.left - m.right;
  const h = height - m.top - m.bottom;
  const svg = svgEl("svg", {
    viewBox: `0 0 ${width} ${height}`,
    width,
    height,
    class: "chart",
    role: "img",
    "aria-label": opts.title ?? "",
  });
  if (opts.testid) svg.setAttribute("data-testid", opts.testid);
  if (opts.title) svg.append(svgEl("text", { x: m.left, y: 16, class: "chart-title" }, opts.title));

  const sides = [opts.left, opts.right].filter(Boolean);
  const allX = sides.flatMap((s) => s.series.flatMap((se) => se.points.map((p) => p[0])));
  const log = Boolean(opts.x.log);
  const tx = (v) => (log ? Math.log10(v) : v);
  let [x0, x1] = extent(allX.map(tx), { pad: 0.04 });
  if (opts.x.min !== undefined) x0 = tx(opts.x.min);
  if (opts.x.max !== undefined) x1 = tx(opts.x.max);
  const sx = (v) => m.left + ((tx(v) - x0) / (x1 - x0 || 1)) * w;

  const g = svgEl("g", { class: "axes" });
  svg.append(g);
  // x axis
  g.append(svgEl("line", { x1: m.left, x2: m.left + w, y1: m.top + h, y2: m.top + h, class: "axis" }));
  const xt = log ? ticks(x0, x1, 5).filter((t) => Number.isInteger(t)).map((t) => 10 ** t) : ticks(x0, x1, 6);
  for (const t of opts.x.integer ? xt.filter(Number.isInteger) : xt) {
    const x = sx(t);
    g.append(svgEl("line", { x1: x, x2: x, y1: m.top, y2: m.top + h, class: "gridline" }));
    g.append(svgEl("text", { x, y: m.top + h + 16, class: "tick", "text-anchor": "middle" }, fmt(t)));
  }
  g.append(
    svgEl("text", { x: m.left + w / 2, y: height - 8, class: "axis-label", "text-anchor": "middle" }, opts.x.label),
  );

  const drawSide = (side, right) => {
    const ys = side.series.flatMap((se) => se.points.map((p) => p[1]));
    let [y0, y1] = extent(ys, { zero: side.zero });
    if (side.min !== undefined) y0 = side.min;
    if (side.max !== undefined) y1 = side.max;
    const sy = (v) => m.top + h - ((v - y0) / (y1 - y0 || 1)) * h;
    const ax = right ? m.left + w : m.left;
    g.append(svgEl("line", { x1: ax, x2: ax, y1: m.top, y2: m.top + h, class: "axis" }));
    for (const t of ticks(y0, y1, 5)) {
      const y = sy(t);
      if (!right) g.append(svgEl("line", { x1: m.left, x2: m.left + w, y1: y, y2: y, class: "gridline" }));
      g.append(
        svgEl(
          "text",
          { x: right ? ax + 6 : ax - 6, y: y + 4, class: "tick", "text-anchor": right ? "start" : "end" },
          fmt(t),
        ),
      );
    }
    const lx = right ? width - 12 : 14;
    const ly = m.top + h / 2;
    const label = svgEl(
      "text",
      { x: lx, y: ly, class: "axis-label", "text-anchor": "middle", transform: `rotate(${right ? 90 : -90} ${lx} ${ly})` },
      side.label,
    );
    if (side.series.length === 1 && side.series[0].color) label.setAttribute("fill", side.series[0].color);
    g.append(label);

    for (const se of side.series) {
      const color = se.color ?? "#2563eb";
      const pts = se.points.filter((p) => Number.isFinite(p[0]) && Number.isFinite(p[1]));
      if (se.line !== false && pts.length > 1) {
        const d = pts.map((p, i) => `${i ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join("");
        svg.append(svgEl("path", { d, class: "series", stroke: color }));
      }
      pts.forEach((p, i) => {
        const cls = se.pointClass ?? "point";
        const x = sx(p[0]);
        const y = sy(p[1]);
        const mark =
          se.shape === "square"
            ? svgEl("rect", { x: x - 3.5, y: y - 3.5, width: 7, height: 7, class: cls, fill: color })
            : svgEl("circle", { cx: x, cy: y, r: 3.5, class: cls, fill: color });
        const tip = se.labels?.[i] ?? `${se.name}: ${fmt(p[1])} at ${opts.x.label} ${fmt(p[0])}`;
        mark.append(svgEl("title", {}, tip));
        svg.append(mark);
        if (se.annotate?.[i]) {
          const left = x > m.left + w * 0.7; // near the right edge: write it to the left
          svg.append(
            svgEl(
              "text",
              { x: left ? x - 6 : x + 6, y: y - 5, class: "annotation", "text-anchor": left ? "end" : "start" },
              se.annotate[i],
            ),
          );
        }
      });
    }
  };
  if (opts.left) drawSide(opts.left, false);
  if (opts.right) drawSide(opts.right, true);

  // legend
  const names = sides.flatMap((s) => s.series).filter((se) => se.name);
  if (names.length > 1) {
    let lx = m.left + w;
    for (const se of [...names].reverse()) {
      const t = svgEl("text", { x: lx, y: 16, class: "legend", "text-anchor": "end", fill: se.color ?? "#2563eb" }, `${se.shape === "square" ? "■" : "●"} ${se.name}`);
      svg.append(t);
      lx -= se.name.length * 7 + 24;
    }
  }
  return svg;
}
