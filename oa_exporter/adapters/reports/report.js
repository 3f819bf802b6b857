// Draws the backtest's charts (uPlot) from the JSON in #oa-data, each when it scrolls into view.
"use strict";
const DATA = JSON.parse(document.getElementById("oa-data").textContent);
const PREFIXES = [[1e12, "T"], [1e9, "G"], [1e6, "M"], [1e3, "k"], [1, ""], [1e-3, "m"], [1e-6, "µ"], [1e-9, "n"]];

function si(value, unit) {
  if (value == null || !isFinite(value)) return "-";
  unit = unit || "";
  if (unit === "%") return +value.toPrecision(3) + " %";
  const prefixes = ["", "/s", "s/s"].includes(unit) ? PREFIXES.slice(0, 5) : PREFIXES;
  const magnitude = Math.abs(value);
  const [scale, prefix] = magnitude ? (prefixes.find(([s]) => magnitude >= s) || [1, ""]) : [1, ""];
  const text = String(+(value / scale).toPrecision(3));
  return prefix || unit ? (text + " " + prefix + unit).trimEnd() : text;
}

function shadeWarmup(warmup) {
  return u => {
    if (!warmup) return;
    const x0 = u.valToPos(warmup[0], "x", true), x1 = u.valToPos(warmup[1], "x", true);
    const { top, height } = u.bbox;
    u.ctx.save();
    u.ctx.fillStyle = "rgba(0, 0, 0, 0.09)";
    u.ctx.fillRect(x0, top, Math.max(x1 - x0, 1), height);
    u.ctx.restore();
  };
}

const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
const pad = n => String(n).padStart(2, "0");

function day(t) {
  const d = new Date(t * 1e3);
  return MONTHS[d.getUTCMonth()] + " " + d.getUTCDate();
}

function clock(t) {
  const d = new Date(t * 1e3);
  return pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes());
}

// time ticks in UTC: a date at midnight (and on the first tick), the time of day between
const timeAxis = { values: (u, ticks) => ticks.map((t, i) => (i === 0 || t % 86400 === 0) ? day(t) : clock(t)) };
const timeSeries = { label: "time (UTC)", value: (u, t) => t == null ? "--" : day(t) + " " + clock(t) };

function addWarmupKey(chart, reason) {
  const legend = chart.root.querySelector(".u-legend");
  if (!legend) return;
  const row = document.createElement("tr");
  row.className = "u-series oa-warmup-key";
  const cell = document.createElement("th");
  const key = document.createElement("span");
  key.className = "key-warmup";
  cell.append(key, " warm-up (not scored" + (reason ? ": " + reason : "") + ")");
  row.appendChild(cell);
  (legend.querySelector("tbody") || legend).appendChild(row);
}

function draw(element) {
  const s = DATA[+element.dataset.index];
  const width = Math.max(Math.min(element.clientWidth || 1100, 1400), 400);
  const sync = { key: "oa-" + element.dataset.index };
  const unitLabel = s.unit ? "value (" + s.unit + ")" : "value";
  const values = {
    title: s.title, width, height: 280, cursor: { sync },
    series: [
      timeSeries,
      { label: "band " + s.level + " % (lower)", stroke: "#9ecae1", value: (u, v) => si(v, s.unit) },
      { label: "band " + s.level + " % (upper)", stroke: "#9ecae1", value: (u, v) => si(v, s.unit) },
      { label: "forecast (yhat)", stroke: "#2b7bba", width: 1.2, dash: [4, 2], value: (u, v) => si(v, s.unit) },
      { label: "y", stroke: "#222", width: 1.2, value: (u, v) => si(v, s.unit) },
      { label: "anomaly (score > 1)", stroke: "#d62728", paths: () => null,
        points: { show: true, size: 7, fill: "#d62728" }, value: (u, v) => si(v, s.unit) },
    ],
    bands: [{ series: [2, 1], fill: "rgba(158, 202, 225, 0.55)" }],  // drawn first: y and yhat stay on top
    axes: [timeAxis, { label: unitLabel, size: 70, values: (u, ticks) => ticks.map(v => si(v, s.unit)) }],
    hooks: { drawClear: [shadeWarmup(s.warmup)] },
  };
  const top = Math.min(Math.max(s.score_max || 2, 2), 10) * 1.05;
  const scores = {
    width, height: 170, cursor: { sync },
    scales: { y: { range: [0, top] } },
    series: [
      timeSeries,
      { label: "anomaly score", stroke: "#6a3d9a", width: 1.2 },
      { label: "threshold 1", stroke: "#d62728", dash: [6, 3] },
    ],
    axes: [timeAxis, { label: "anomaly score", size: 70, splits: () => [0, 1, ...[2, 5, 10].filter(v => v <= top && v >= top / 2.5)] }],
    hooks: { drawClear: [shadeWarmup(s.warmup)] },
  };
  addWarmupKey(new uPlot(values, [s.t, s.lower, s.upper, s.yhat, s.y, s.flagged], element.querySelector(".values")), s.warmup_reason);
  new uPlot(scores, [s.t, s.score, s.t.map(() => 1)], element.querySelector(".scores"));
}

const observer = new IntersectionObserver(entries => {
  for (const entry of entries) {
    if (entry.isIntersecting) {
      observer.unobserve(entry.target);
      draw(entry.target);
    }
  }
}, { rootMargin: "600px" });
document.querySelectorAll(".chart").forEach(element => observer.observe(element));
