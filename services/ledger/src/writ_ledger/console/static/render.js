// DOM building without innerHTML: every value from the server is set as text, never parsed as markup.

const SVG = "http://www.w3.org/2000/svg";

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function facts(pairs) {
  return el("dl", { class: "facts" }, pairs.filter(([, v]) => v !== undefined).map(([k, v]) => [el("dt", {}, k), el("dd", {}, v ?? "—")]));
}

export function badge(text) {
  return el("span", { class: `badge ${text || ""}` }, text || "—");
}

const FOLD_CHARS = 400;

/** Arguments pretty-printed; long values folded behind a <details> each. */
export function prettyValue(value) {
  const text = JSON.stringify(value, null, 2) ?? "null";
  if (text.length <= FOLD_CHARS) return el("pre", { class: "value" }, text);
  return el("details", {}, el("summary", {}, `${text.length} characters (show)`), el("pre", { class: "value" }, text));
}

export function prettyArguments(args) {
  if (typeof args === "string") return el("pre", { class: "value withheld" }, args);
  const entries = Object.entries(args || {});
  if (!entries.length) return el("p", { class: "muted" }, "no arguments");
  return el("dl", { class: "facts args" }, entries.map(([k, v]) => [el("dt", { class: "mono" }, k), el("dd", {}, prettyValue(v))]));
}

export function countdown(iso) {
  if (!iso) return "—";
  const ms = Date.parse(iso) - Date.now();
  if (Number.isNaN(ms)) return iso;
  if (ms <= 0) return "passed";
  const s = Math.floor(ms / 1000);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  return `${h ? h + "h " : ""}${h || m ? m + "m " : ""}${r}s left`;
}

/** Horizontal bars: one group per row, one bar per series. */
export function barChart(title, rows, series, { unit = "" } = {}) {
  const max = Math.max(1, ...rows.flatMap((r) => series.map((s) => Number(r[s.key]) || 0)));
  const labelW = 160, barH = 12, gap = 8, width = 640;
  const groupH = series.length * barH + gap;
  const height = rows.length * groupH + 30;
  const fmt = (v) => (Number.isInteger(v) ? String(v) : v.toFixed(1));
  const parts = [svg("title", {}, title)];
  rows.forEach((row, i) => {
    const y0 = 20 + i * groupH;
    parts.push(svg("text", { x: 0, y: y0 + barH }, String(row.key).slice(0, 24)));
    series.forEach((s, j) => {
      const v = Number(row[s.key]) || 0;
      const w = Math.max(row[s.key] == null ? 0 : 1, ((width - labelW - 90) * v) / max);
      const y = y0 + j * barH;
      parts.push(svg("rect", { x: labelW, y, width: w, height: barH - 2, class: `c${j % 5}` }, svg("title", {}, `${s.label}: ${fmt(v)}${unit}`)));
      parts.push(svg("text", { x: labelW + w + 4, y: y + barH - 3 }, row[s.key] == null ? "—" : `${fmt(v)}${unit}`));
    });
  });
  const legend = series.map((s, j) => svg("text", { x: labelW + j * 90, y: 12, class: `c${j % 5}` }, `■ ${s.label}`));
  return el("figure", { class: "chart" },
    el("figcaption", {}, title),
    svg("svg", { viewBox: `0 0 ${width} ${height}`, width: "100%", role: "img", "aria-label": title }, ...legend, ...parts));
}

const STAGES = [
  ["submitted_at", "authenticated_at", "authenticate"],
  ["authenticated_at", "planned_at", "plan"],
  ["planned_at", "approval_requested_at", "authorize"],
  ["approval_requested_at", "decided_at", "approval"],
  ["planned_at", "decided_at", "authorize"],
  ["decided_at", "started_at", "dispatch"],
  ["started_at", "ended_at", "execute"],
];

/** The stages as a waterfall: each hop from one recorded time to the next, offset from submission. */
export function waterfall(intent) {
  const t0 = Date.parse(intent.submitted_at);
  const times = Object.fromEntries(Object.entries(intent).filter(([k, v]) => k.endsWith("_at") && v).map(([k, v]) => [k, Date.parse(v)]));
  const hops = [];
  for (const [from, to, name] of STAGES) {
    if (!(from in times) || !(to in times)) continue;
    if (name === "authorize" && from === "planned_at" && "approval_requested_at" in times) continue;
    hops.push({ name, start: times[from] - t0, end: times[to] - t0 });
  }
  if ("ended_at" in times && !("started_at" in times)) {
    const last = Math.max(...hops.map((h) => h.end), 0);
    if (times.ended_at - t0 > last) hops.push({ name: "end", start: last, end: times.ended_at - t0 });
  }
  if (!hops.length) return el("p", { class: "muted" }, "no stage times recorded yet");
  const total = Math.max(1, ...hops.map((h) => h.end));
  const labelW = 110, width = 640, rowH = 18;
  const scale = (width - labelW - 90) / total;
  const parts = hops.map((h, i) => {
    const y = 4 + i * rowH;
    const w = Math.max(1, (h.end - h.start) * scale);
    return [
      svg("text", { x: 0, y: y + 12 }, h.name),
      svg("rect", { x: labelW + h.start * scale, y, width: w, height: rowH - 4, class: "c0" }),
      svg("text", { x: labelW + h.start * scale + w + 4, y: y + 12 }, `${(h.end - h.start).toFixed(1)} ms`),
    ];
  });
  return el("figure", { class: "chart waterfall" },
    el("figcaption", {}, `Timeline (${total.toFixed(1)} ms from submission)`),
    svg("svg", { viewBox: `0 0 ${width} ${hops.length * rowH + 8}`, width: "100%", role: "img", "aria-label": "stage timeline" }, ...parts.flat()));
}

export function table(headers, rows) {
  return el("div", { class: "scroll" }, el("table", {},
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((r) => el("tr", {}, r.map((c) => el("td", {}, c)))))));
}
