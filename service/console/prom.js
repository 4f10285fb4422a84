// Prometheus text format (0.0.4) parsing and the Live page's arithmetic: rates between two
// scrapes and latency quantiles interpolated in histogram buckets (like histogram_quantile).

/**
 * Samples of a Prometheus text exposition: [{name, labels: {k: v}, value}].
 * Comments (# HELP / # TYPE) and blank lines are skipped; values parse as floats (+Inf, NaN).
 */
export function parseProm(text) {
  const out = [];
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line || line.startsWith("#")) continue;
    let name;
    const labels = {};
    let rest;
    const brace = line.indexOf("{");
    const space = line.indexOf(" ");
    if (brace !== -1 && (space === -1 || brace < space)) {
      name = line.slice(0, brace);
      const end = parseLabels(line, brace + 1, labels);
      rest = line.slice(end + 1).trim();
    } else {
      name = line.slice(0, space);
      rest = line.slice(space + 1).trim();
    }
    const value = parseValue(rest.split(/\s+/)[0]);
    out.push({ name, labels, value });
  }
  return out;
}

/** Reads `k="v",...` from position `i` into `labels`; returns the index of the closing brace. */
function parseLabels(line, i, labels) {
  while (i < line.length) {
    while (line[i] === " " || line[i] === ",") i++;
    if (line[i] === "}") return i;
    const eq = line.indexOf("=", i);
    const key = line.slice(i, eq).trim();
    i = eq + 2; // past ="
    let v = "";
    while (i < line.length && line[i] !== '"') {
      if (line[i] === "\\") {
        const c = line[i + 1];
        v += c === "n" ? "\n" : c;
        i += 2;
      } else {
        v += line[i++];
      }
    }
    labels[key] = v;
    i++; // past closing quote
  }
  return i;
}

function parseValue(s) {
  if (s === "+Inf" || s === "Inf") return Infinity;
  if (s === "-Inf") return -Infinity;
  return Number.parseFloat(s);
}

/** Sum of `name`'s samples grouped by the label `by` (or "" for all): {group: total}. */
export function sumBy(samples, name, by) {
  const out = {};
  for (const s of samples) {
    if (s.name !== name) continue;
    const key = by ? (s.labels[by] ?? "") : "";
    out[key] = (out[key] ?? 0) + s.value;
  }
  return out;
}

/**
 * Cumulative histogram buckets of `name`_bucket, optionally for one `route`:
 * [[le, count], ...] sorted by le, summed over the other labels.
 */
export function buckets(samples, name, route) {
  const byLe = new Map();
  for (const s of samples) {
    if (s.name !== `${name}_bucket`) continue;
    if (route !== undefined && s.labels.route !== route) continue;
    const le = parseValue(s.labels.le);
    byLe.set(le, (byLe.get(le) ?? 0) + s.value);
  }
  return [...byLe.entries()].sort((a, b) => a[0] - b[0]);
}

/** Bucket counts of `now` minus `before` (the window between two scrapes). */
export function bucketDelta(now, before) {
  const prev = new Map(before);
  return now.map(([le, c]) => [le, Math.max(0, c - (prev.get(le) ?? 0))]);
}

/**
 * The q-quantile (0..1) of cumulative buckets [[le, count], ...], interpolated linearly
 * within the bucket it falls in (the lowest bucket from 0); null when there are no
 * observations. Falling in the +Inf bucket gives the highest finite bound.
 */
export function quantile(q, cumulative) {
  if (cumulative.length === 0) return null;
  const total = cumulative[cumulative.length - 1][1];
  if (!(total > 0)) return null;
  const rank = q * total;
  let prevLe = 0;
  let prevCount = 0;
  for (const [le, count] of cumulative) {
    if (count >= rank) {
      if (le === Infinity) return prevLe;
      if (count === prevCount) return le;
      return prevLe + ((le - prevLe) * (rank - prevCount)) / (count - prevCount);
    }
    prevLe = le;
    prevCount = count;
  }
  return prevLe;
}

/** Status class of an HTTP status label: "2xx", "4xx", ... */
export function statusClass(status) {
  return `${String(status)[0]}xx`;
}
