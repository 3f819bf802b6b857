// OpenAnomaly's web UI: the rules, one rule with a preview chart, and an editor that validates and previews.
// Plain browser JavaScript over the JSON API (/api/v1/); charts by uPlot. No build step.
"use strict";

const WRITABLE = document.body.dataset.writable === "true";
const RANGES = [["1h", 3600], ["6h", 6 * 3600], ["24h", 86400], ["3d", 3 * 86400], ["7d", 7 * 86400]];
const TEMPLATE = "anomaly: my_rule\nexpr: sum by (instance) (rate(http_requests_total[5m]))\nstep: 1m\npreset: default\n";
const page = document.getElementById("page");

const esc = (text) => String(text ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const labelText = (labels) => {
  const shown = Object.entries(labels).filter(([k]) => k !== "__name__" || Object.keys(labels).length === 1);
  return shown.map(([k, v]) => `${k}="${v}"`).join(", ") || "{}";
};
const number = (x, digits = 3) => (x === null || x === undefined ? "–" : Number(x).toPrecision(digits));
const ago = (t) => {
  if (!t) return "never";
  const s = Math.max(0, Date.now() / 1000 - t);
  return s < 90 ? `${Math.round(s)} s ago` : s < 5400 ? `${Math.round(s / 60)} min ago` : `${(s / 3600).toFixed(1)} h ago`;
};

async function api(method, path, body, headers = {}) {
  const response = await fetch(path, {
    method, headers: { "Content-Type": "application/json", ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try { data = await response.json(); } catch (e) { data = { error: `${response.status} ${response.statusText}` }; }
  return { status: response.status, ok: response.ok, etag: response.headers.get("ETag"), body: data };
}

function route() {
  const hash = decodeURIComponent(location.hash.slice(1) || "/");
  const [, kind, name] = hash.split("/");
  if (kind === "rule" && name) return rulePage(name);
  if (kind === "edit" && name) return editPage(name);
  if (kind === "new") return editPage(null);
  return rulesPage();
}

async function rulesPage() {
  const { body } = await api("GET", "/api/v1/rules");
  const rules = body.data.rules;
  const rows = rules.map((r) => `<tr>
      <td><a href="#/rule/${encodeURIComponent(r.name)}">${esc(r.name)}</a></td><td>${esc(r.group)}</td>
      <td><span class="state ${esc(r.state)}">${esc(r.state)}</span></td>
      <td class="num">${r.series.ready ?? 0}</td><td class="num">${r.series["not-ready"] ?? 0}</td>
      <td class="num">${r.series.failed ?? 0}</td>
      <td class="num ${r.anomalous ? "hot" : ""}">${r.anomalous ?? 0}</td>
      <td>${esc(ago(r.last_fit))}</td><td class="error">${esc(r.error || "")}</td></tr>`).join("");
  page.innerHTML = `<div class="toolbar"><h1>Rules</h1>
      ${WRITABLE ? '<a href="#/new"><button class="primary" id="new-rule">New rule</button></a>' : ""}</div>
    <table id="rules"><thead><tr><th>Rule</th><th>Group</th><th>State</th><th class="num">Ready</th>
      <th class="num">Not ready</th><th class="num">Failed</th><th class="num">Anomalous now</th><th>Last fit</th>
      <th>Error</th></tr></thead><tbody>${rows || '<tr><td colspan="9" class="muted">No rules loaded.</td></tr>'}
    </tbody></table>`;
}

async function rulePage(name) {
  const { status, body } = await api("GET", `/api/v1/rules/${encodeURIComponent(name)}`);
  if (status !== 200) { page.innerHTML = `<p class="error">${esc(body.error)}</p>`; return; }
  const rule = body.data, st = rule.status || {};
  const scores = rule.top_scores.map((s, i) => `<tr class="pick" data-row="${i}">
      <td>${esc(labelText(s.labels))}</td><td class="num ${s.score > 1 ? "hot" : ""}">${number(s.score)}</td>
      <td class="num">${number(s.y)}</td><td class="num">${number(s.yhat)}</td>
      <td class="num">${s.yhat_lower === null ? "–" : `${number(s.yhat_lower)} – ${number(s.yhat_upper)}`}</td>
      </tr>`).join("");
  const fits = rule.fit_history.slice().reverse().map((f) => `<tr><td>${esc(new Date(f.finished_at * 1000)
      .toLocaleString())}</td><td>${f.ok ? "ok" : "failed"}</td><td class="num">${f.series}</td>
      <td class="num">${(f.finished_at - f.started_at).toFixed(1)} s</td><td class="error">${esc(f.error)}</td></tr>`)
    .join("");
  page.innerHTML = `<div class="toolbar"><h1>${esc(name)}</h1>
      <span class="state ${esc(st.state)}">${esc(st.state || "not loaded")}</span>
      ${WRITABLE ? `<a href="#/edit/${encodeURIComponent(name)}"><button id="edit">Edit</button></a>` : ""}</div>
    ${st.error ? `<p class="error">${esc(st.error)}</p>` : ""}
    <div class="card"><div class="toolbar"><strong id="chart-title">Preview</strong>
      <select id="range">${RANGES.map(([t], i) => `<option value="${i}" ${i === 1 ? "selected" : ""}>last ${t}</option>`)
        .join("")}</select><span id="chart-note" class="muted"></span></div>
      <div id="chart" class="chart"></div></div>
    <div class="grid">
      <div><h2>Series by score (last cycle)</h2><table id="scores"><thead><tr><th>Series</th><th class="num">Score</th>
        <th class="num">y</th><th class="num">yhat</th><th class="num">Band</th></tr></thead>
        <tbody>${scores || '<tr><td colspan="5" class="muted">Not scored yet.</td></tr>'}</tbody></table>
        <h2>Fits</h2><table><thead><tr><th>Finished</th><th>Result</th><th class="num">Series</th>
        <th class="num">Took</th><th>Error</th></tr></thead>
        <tbody>${fits || '<tr><td colspan="5" class="muted">No fit by this process yet.</td></tr>'}</tbody></table></div>
      <div><h2>Definition (as in force)</h2><pre>${esc(JSON.stringify(rule.definition, null, 2))}</pre>
        <h2>Status</h2><dl class="kv"><dt>Group</dt><dd>${esc(rule.group)}</dd><dt>From</dt><dd>${esc(rule.origin)}</dd>
        <dt>Series</dt><dd>${esc(JSON.stringify(st.series || {}))}</dd><dt>Last fit</dt><dd>${esc(ago(st.last_fit))}</dd>
        <dt>Fits since start</dt><dd>${st.fits_since_start ?? 0}</dd></dl></div>
    </div>`;
  let picked = 0;
  const show = async () => {
    document.querySelectorAll("#scores tr.pick").forEach((tr) => tr.classList.toggle("picked", +tr.dataset.row === picked));
    const labels = rule.top_scores[picked]?.labels;
    const source = rule.source || rule.definition;
    await previewInto(source, RANGES[+document.getElementById("range").value][1], labels);
  };
  document.querySelectorAll("#scores tr.pick").forEach((tr) => tr.addEventListener("click", () => {
    picked = +tr.dataset.row; show();
  }));
  document.getElementById("range").addEventListener("change", show);
  show();
}

async function previewInto(rule, seconds, labels, limit = 1) {
  const note = document.getElementById("chart-note"), chart = document.getElementById("chart");
  note.textContent = "replaying…";
  const end = Math.floor(Date.now() / 1000);
  const request = { rule, start: end - seconds, end, limit };
  if (labels) request.labels = labels;
  const { ok, body } = await api("POST", "/api/v1/preview", request);
  if (!ok) { note.textContent = ""; chart.innerHTML = `<p class="error">${esc(body.error)}</p>`; return null; }
  const data = body.data;
  note.textContent = `${data.series_total} series, ${data.excursions.length} excursions would have paged, ` +
    `${data.fits} fits, ${data.seconds} s`;
  const pick = document.getElementById("series-pick");
  if (pick) {
    pick.innerHTML = data.series.map((s, i) => `<option value="${i}">${esc(labelText(s.labels))}</option>`).join("");
    pick.hidden = data.series.length < 2;
    pick.onchange = () => drawChart(chart, data, +pick.value);
  }
  drawChart(chart, data, 0);
  return data;
}

function drawChart(element, preview, index) {
  element.innerHTML = "";
  const series = preview.series[index];
  if (!series) { element.innerHTML = '<p class="muted">No series in this range.</p>'; return; }
  document.getElementById("chart-title").textContent = labelText(series.labels);
  const flagged = series.y.map((y, i) => (series.score[i] > 1 ? y : null));
  const data = [preview.timestamps, series.y, series.yhat, series.yhat_lower, series.yhat_upper, flagged];
  const opts = {
    width: Math.max(element.clientWidth, 400), height: 300,
    series: [{}, { label: "y", stroke: "#1d2330", width: 1.2 }, { label: "yhat", stroke: "#2f6fde", dash: [4, 3] },
      { label: "lower", stroke: "rgba(47,111,222,0.35)" }, { label: "upper", stroke: "rgba(47,111,222,0.35)" },
      { label: "flagged (score > 1)", stroke: "#c83232", width: 0, points: { show: true, size: 7, fill: "#c83232" },
        paths: () => null }],
    bands: [{ series: [4, 3], fill: "rgba(47,111,222,0.12)" }],
    axes: [{}, { size: 60 }],
  };
  new uPlot(opts, data, element);
}

async function editPage(name) {
  if (!WRITABLE) {
    page.innerHTML = '<p class="muted">The rules API is read-only: start the daemon with --web.enable-rules-api ' +
      "to edit rules here.</p>";
    return;
  }
  let etag = null, group = "default", text = TEMPLATE;
  if (name) {
    const { status, body } = await api("GET", `/api/v1/rules/${encodeURIComponent(name)}`);
    if (status !== 200) { page.innerHTML = `<p class="error">${esc(body.error)}</p>`; return; }
    etag = body.data.etag; group = body.data.group; text = body.data.source_yaml;
  }
  page.innerHTML = `<h1>${name ? `Edit ${esc(name)}` : "New rule"}</h1>
    <div class="grid"><div class="card">
      <div class="toolbar"><label>Group <input id="group" value="${esc(group)}"></label></div>
      <textarea id="yaml" spellcheck="false">${esc(text)}</textarea>
      <div id="validity" class="muted">checking…</div>
      <div class="toolbar"><select id="range">${RANGES.map(([t], i) =>
        `<option value="${i}" ${i === 2 ? "selected" : ""}>last ${t}</option>`).join("")}</select>
        <button id="preview">Preview</button><button id="save" class="primary">Save</button>
        <span id="saved" class="muted"></span></div></div>
      <div><div class="card"><div class="toolbar"><strong id="chart-title">Preview</strong>
        <select id="series-pick" hidden></select><span id="chart-note" class="muted"></span></div><div id="chart" class="chart"></div></div>
        <div id="excursions"></div></div></div>`;
  let parsed = null, timer = null;
  const validate = async () => {
    const { ok, body } = await api("POST", "/api/v1/validate",
      { group: document.getElementById("group").value || "default", rule_yaml: document.getElementById("yaml").value });
    const box = document.getElementById("validity");
    if (!ok) { parsed = null; box.innerHTML = `<span class="error">${esc(body.error)}</span>`; return; }
    parsed = body.data.valid ? body.data.rule : null;
    box.innerHTML = body.data.valid ? '<span class="valid">✓ valid</span>' :
      `<ul class="problems error">${body.data.problems.map((p) => `<li>${esc(p)}</li>`).join("")}</ul>`;
    document.getElementById("save").disabled = !parsed;
    document.getElementById("preview").disabled = !parsed;
  };
  const soon = () => { clearTimeout(timer); timer = setTimeout(validate, 300); };
  document.getElementById("yaml").addEventListener("input", soon);
  document.getElementById("group").addEventListener("input", soon);
  document.getElementById("preview").addEventListener("click", async () => {
    const data = await previewInto(parsed, RANGES[+document.getElementById("range").value][1], null, 10);
    const list = (data?.excursions || []).slice(-20).reverse().map((e) => `<tr><td>${esc(labelText(e.labels))}</td>
      <td>${esc(new Date(e.start * 1000).toLocaleString())}</td><td class="num">${e.points}</td>
      <td class="num hot">${number(e.peak_score)}</td></tr>`).join("");
    document.getElementById("excursions").innerHTML = data ? `<h2>Would have paged</h2><table id="paged"><thead><tr>
      <th>Series</th><th>From</th><th class="num">Points</th><th class="num">Peak</th></tr></thead>
      <tbody>${list || '<tr><td colspan="4" class="muted">Nothing in this range.</td></tr>'}</tbody></table>` : "";
  });
  document.getElementById("save").addEventListener("click", async () => {
    const target = parsed.anomaly;
    const headers = etag && target === name ? { "If-Match": etag } : {};
    const { ok, body } = await api("PUT", `/api/v1/rules/${encodeURIComponent(target)}`,
      { group: document.getElementById("group").value, rule: parsed }, headers);
    if (!ok) { document.getElementById("saved").innerHTML = `<span class="error">${esc(body.error)}</span>`; return; }
    location.hash = `#/rule/${encodeURIComponent(target)}`;
  });
  validate();
}

document.getElementById("mode").textContent = WRITABLE ? "rules API: read-write" : "rules API: read-only";
window.addEventListener("hashchange", route);
route();
