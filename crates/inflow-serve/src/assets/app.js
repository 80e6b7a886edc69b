"use strict";
// inflow serve: one page, routed by the URL hash, drawn from the JSON API. No external assets.

const main = document.getElementById("main");
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const fmt = (x) => x == null || Number.isNaN(x) ? "–" : (Math.abs(x) >= 1e4 || (Math.abs(x) < 1e-3 && x !== 0)) ? Number(x).toExponential(2) : Number(x).toFixed(4);
const cut = (s, n) => { s = String(s ?? ""); return s.length > n ? s.slice(0, n) + "…" : s; };

async function api(path, opts) {
  const r = await fetch(path, opts);
  const ct = r.headers.get("content-type") || "";
  const body = ct.includes("json") ? await r.json() : await r.text();
  if (!r.ok) throw new Error((body && body.error) || body || r.statusText);
  return body;
}

let OVERVIEW = null;
async function overview() { if (!OVERVIEW) OVERVIEW = await api("/api/overview"); return OVERVIEW; }

function bytes(n) {
  const u = ["B", "KiB", "MiB", "GiB", "TiB"]; let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
}

function textPair(prompt, response, n) {
  return `<div class="text"><span class="prompt">${esc(cut(prompt, n || 700))}</span> <span class="arrow">→</span> <mark class="resp" title="response">${esc(cut(response, n || 700))}</mark></div>`;
}

function taskTag(t) { return t ? `<span class="tag">${esc(t)}</span>` : ""; }

function done(page) { document.body.dataset.ready = page; }

function histogram(h, label) {
  if (!h || !h.counts || !h.counts.length) return `<p class="muted">No ${esc(label)} values.</p>`;
  const W = 420, H = 150, pad = 28, n = h.counts.length, max = Math.max(...h.counts);
  const bw = (W - 2 * pad) / n;
  let bars = "";
  h.counts.forEach((c, i) => {
    const bh = max ? (H - 2 * pad) * c / max : 0;
    bars += `<rect x="${pad + i * bw + 1}" y="${H - pad - bh}" width="${Math.max(bw - 2, 1)}" height="${bh}" fill="#2f5bd3" opacity="0.8"><title>${fmt(h.edges[i])} – ${fmt(h.edges[i + 1])}: ${c}</title></rect>`;
  });
  return `<svg width="${W}" height="${H}" role="img" aria-label="${esc(label)} histogram">
    ${bars}
    <line x1="${pad}" y1="${H - pad}" x2="${W - pad}" y2="${H - pad}" stroke="#999"/>
    <text x="${pad}" y="${H - pad + 14}">${fmt(h.edges[0])}</text>
    <text x="${W - pad}" y="${H - pad + 14}" text-anchor="end">${fmt(h.edges[h.edges.length - 1])}</text>
    <text x="${pad}" y="${pad - 10}">max ${max} per bin · n = ${h.n} · mean ${fmt(h.mean)}${h.non_finite ? ` · ${h.non_finite} non-finite left out` : ""}</text>
    <text x="${W / 2}" y="${H - 4}" text-anchor="middle">${esc(label)}</text>
  </svg>`;
}

function scatter(points, xl, yl) {
  const W = 380, H = 300, pad = 40;
  if (points.length < 1) return `<p class="muted">No training sample is in both top-k lists.</p>`;
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const sx = (x) => pad + (W - 2 * pad) * (x1 > x0 ? (x - x0) / (x1 - x0) : 0.5);
  const sy = (y) => H - pad - (H - 2 * pad) * (y1 > y0 ? (y - y0) / (y1 - y0) : 0.5);
  const dots = points.map((p) => `<circle cx="${sx(p[0])}" cy="${sy(p[1])}" r="4" fill="#2f5bd3" opacity="0.75"><title>${esc(p[2])}: ${fmt(p[0])}, ${fmt(p[1])}</title></circle>`).join("");
  return `<svg width="${W}" height="${H}" role="img" aria-label="scatter">
    <rect x="${pad}" y="${pad}" width="${W - 2 * pad}" height="${H - 2 * pad}" fill="none" stroke="#ddd"/>
    ${dots}
    <text x="${W / 2}" y="${H - 8}" text-anchor="middle">${esc(xl)} (${fmt(x0)} … ${fmt(x1)})</text>
    <text x="12" y="${H / 2}" transform="rotate(-90 12 ${H / 2})" text-anchor="middle">${esc(yl)} (${fmt(y0)} … ${fmt(y1)})</text>
  </svg>`;
}

function factsTable(rows) {
  return `<table class="facts">${rows.filter((r) => r[1] !== undefined && r[1] !== null && r[1] !== "").map(([k, v]) => `<tr><td>${esc(k)}</td><td>${v}</td></tr>`).join("")}</table>`;
}

// ---------- pages ----------

async function pageOverview() {
  const o = await overview();
  const f = o.facts, model = f.model || {}, data = f.data || {}, run = f.run || {};
  const proj = `${esc(f.projection)}${f.n_layers ? ` over ${f.n_layers} Linear layers` : ""}`;
  const facts = factsTable([
    ["store", `<code>${esc(f.store)}</code>`],
    ["model", `<code>${esc(run.model_path || "")}</code>` + (model.n_params ? ` <span class="muted">(${(model.n_params / 1e6).toFixed(1)} M parameters, ${esc(model.kind || "")})</span>` : "")],
    ["data", `<code>${esc(run.data_path || "")}</code>` + (data.format ? ` <span class="muted">(${esc(data.format)}, template ${esc(data.template)}, ≤ ${esc(data.max_tokens)} tokens)</span>` : "")],
    ["projection", proj],
    ["dim × dtype", `${esc(f.dim)} × ${esc(f.dtype)}`],
    ["samples", `<span id="n-samples">${f.n_samples}</span> in ${f.n_shards} shards`],
    ["tasks", String((f.tasks || []).length || (f.data_found ? 0 : "unknown (data file not found)"))],
    ["bytes on disk", `${bytes(f.bytes)} (${bytes(f.bytes / Math.max(f.n_samples, 1))} per sample)`],
    ["compact", f.compact ? esc(`from ${f.compact.parent}`) : ""],
    ["queries", `${o.n_queries}${o.queries_have_text ? "" : ' <span class="muted">(ids only: give --queries FILE for their text)</span>'}`],
    ["live queries", o.live.enabled ? `on (${o.live.methods.map(esc).join(", ")})` : '<span class="muted">off (start with --model)</span>'],
  ]);
  const methods = o.methods.map((m) => `<tr data-method="${esc(m.name)}"><td><b>${esc(m.name)}</b></td><td>${esc(m.kind)}</td>
      <td class="num">${m.k ?? "–"}</td><td class="num">${m.n_queries ?? m.n_scored ?? "–"}</td>
      <td class="muted">${esc(m.sign_convention)}</td><td><code>${esc(m.file)}</code></td></tr>`).join("");
  const agree = o.agreement.length ? `<table><tr><th>methods</th><th>queries</th><th>mean top-k overlap</th><th>mean Spearman (common samples)</th></tr>
      ${o.agreement.map((a) => `<tr><td>${esc(a.a)} · ${esc(a.b)}</td><td class="num">${a.n_queries}</td><td class="num">${fmt(a.mean_overlap)}</td><td class="num">${fmt(a.mean_spearman)}</td></tr>`).join("")}</table>`
    : '<p class="muted">Load two top-k score files to compare methods.</p>';
  const frequent = o.methods.filter((m) => m.frequent).map((m) => `<div class="card"><h2>Most often in ${esc(m.name)}'s top-${m.k}</h2>
      <table><tr><th>times</th><th>sample</th><th>task</th><th>prompt</th></tr>${m.frequent.map((s) => `<tr><td class="num">${s.count}</td>
      <td><a href="#/sample/${s.index}">${esc(s.id)}</a></td><td>${taskTag(s.task)}</td><td class="text">${esc(s.prompt)}</td></tr>`).join("")}</table></div>`).join("");
  const tasks = (f.tasks || []).slice(0, 12).map((t) => `<tr><td>${taskTag(t.task)}</td><td class="num">${t.n}</td></tr>`).join("");
  main.innerHTML = `<h1>Overview</h1>
    <div class="grid">
      <div class="card"><h2>Store</h2>${facts}</div>
      <div class="card"><h2>Per-sample loss</h2>${histogram(o.loss_hist, "loss (mean over response tokens)")}
        <h2>Self-score</h2>${o.self_hist ? histogram(o.self_hist, o.self_score_what) : '<p class="muted">No norms in this store.</p>'}</div>
      ${tasks ? `<div class="card"><h2>Tasks (largest ${Math.min(12, f.tasks.length)} of ${f.tasks.length})</h2><table>${tasks}</table></div>` : ""}
    </div>
    <div class="card"><h2>Methods loaded</h2><table id="methods"><tr><th>method</th><th>kind</th><th>k</th><th>queries / scored</th><th>sign</th><th>file</th></tr>${methods}</table></div>
    <div class="card"><h2>Agreement between methods</h2>${agree}</div>
    <div class="grid">${frequent}</div>`;
  done("overview");
}

async function pageQueries(params) {
  const q = params.get("q") || "";
  main.innerHTML = `<h1>Queries</h1>
    <div class="card"><input id="search" type="text" placeholder="search query text, task or id" value="${esc(q)}"> <span id="count" class="muted"></span></div>
    <div class="card"><table id="list"></table></div>`;
  const input = document.getElementById("search");
  const load = async () => {
    const r = await api(`/api/queries?limit=300&q=${encodeURIComponent(input.value)}`);
    document.getElementById("count").textContent = `${r.total} queries`;
    document.getElementById("list").innerHTML = `<tr><th>#</th><th>query</th><th>task</th><th>text</th></tr>` + r.queries.map((x) =>
      `<tr data-query="${x.index}"><td class="num">${x.index}</td><td><a href="#/query/${x.index}">${esc(x.id)}</a></td><td>${taskTag(x.task)}</td><td class="text">${esc(x.snippet || "")}</td></tr>`).join("");
    done("queries");
  };
  let t = null;
  input.addEventListener("input", () => { clearTimeout(t); t = setTimeout(load, 200); });
  await load();
}

function methodColumn(m, marked) {
  const rows = m.rows.map((r) => `<tr data-rank="${r.rank}" data-train-id="${esc(r.sample.id)}">
      <td class="num">${r.rank}</td><td class="num">${fmt(r.score)}</td>
      <td><a href="#/sample/${r.sample.index}" class="train-id">${esc(r.sample.id)}</a> ${taskTag(r.sample.task)}
        ${marked && marked.has(r.sample.id) ? '<span class="tag" title="also in the other methods\' lists">shared</span>' : ""}
        ${textPair(r.sample.prompt, r.sample.response, 360)}</td></tr>`).join("");
  return `<div class="card method" data-method="${esc(m.name)}"><h2>${esc(m.name)} <span class="muted">(${m.rows.length} rows)</span></h2>
    <p class="muted">${esc(m.sign_convention)}</p>
    <table><tr><th>rank</th><th>score</th><th>training sample: prompt → <mark class="resp">response</mark></th></tr>${rows}</table></div>`;
}

async function pageQuery(index) {
  const r = await api(`/api/query/${index}`);
  const q = r.query;
  const ids = r.methods.map((m) => new Set(m.rows.map((x) => x.sample.id)));
  const shared = new Set([...(ids[0] || [])].filter((id) => ids.length > 1 && ids.slice(1).every((s) => s.has(id))));
  const names = r.methods.map((m) => m.name);
  const agree = r.agreement.length ? `<table id="agreement"><tr><th>methods</th><th>in both lists</th><th>top-k overlap</th><th>Spearman (common samples)</th></tr>
      ${r.agreement.map((a) => `<tr><td>${esc(a.a)} · ${esc(a.b)}</td><td class="num">${a.n_common}</td><td class="num">${fmt(a.overlap)}</td><td class="num">${fmt(a.spearman)}</td></tr>`).join("")}</table>`
    : '<p class="muted">One method loaded: nothing to compare.</p>';
  const opts = (sel) => names.map((n, i) => `<option value="${i}" ${i === sel ? "selected" : ""}>${esc(n)}</option>`).join("");
  main.innerHTML = `<h1>Query <span id="query-id">${esc(q.id)}</span> ${taskTag(q.task)}</h1>
    <div class="card">${q.prompt != null ? textPair(q.prompt, q.response, 4000) : '<p class="muted">Text not loaded (give serve --queries FILE).</p>'}</div>
    <div class="grid">
      <div class="card"><h2>Agreement</h2>${agree}</div>
      ${names.length > 1 ? `<div class="card"><h2>Scores of two methods</h2>
        <select id="sa">${opts(0)}</select> vs <select id="sb">${opts(1)}</select><div id="scatter"></div></div>` : ""}
    </div>
    <div class="methods" id="methods">${r.methods.map((m) => methodColumn(m, shared)).join("")}</div>`;
  const draw = () => {
    const a = +document.getElementById("sa").value, b = +document.getElementById("sb").value;
    const inB = new Map(r.methods[b].rows.map((x) => [x.sample.id, x.score]));
    const pts = r.methods[a].rows.filter((x) => inB.has(x.sample.id)).map((x) => [x.score, inB.get(x.sample.id), x.sample.id]);
    document.getElementById("scatter").innerHTML = scatter(pts, names[a], names[b]);
  };
  if (names.length > 1) {
    document.getElementById("sa").onchange = draw;
    document.getElementById("sb").onchange = draw;
    draw();
  }
  done("query");
}

async function pageSamples(params) {
  main.innerHTML = `<h1>Training samples</h1>
    <div class="card"><input id="search" type="text" placeholder="search text, task or id" value="${esc(params.get("q") || "")}"> <span id="count" class="muted"></span></div>
    <div class="card"><table id="list"></table></div>`;
  const input = document.getElementById("search");
  const load = async () => {
    const r = await api(`/api/samples?limit=200&q=${encodeURIComponent(input.value)}`);
    document.getElementById("count").textContent = `${r.total} samples`;
    document.getElementById("list").innerHTML = `<tr><th>#</th><th>sample</th><th>task</th><th>loss</th><th>prompt</th></tr>` + r.samples.map((s) =>
      `<tr><td class="num">${s.index}</td><td><a href="#/sample/${s.index}">${esc(s.id)}</a></td><td>${taskTag(s.task)}</td><td class="num">${fmt(s.loss)}</td><td class="text">${esc(s.snippet)}</td></tr>`).join("");
    done("samples");
  };
  let t = null;
  input.addEventListener("input", () => { clearTimeout(t); t = setTimeout(load, 200); });
  await load();
}

async function pageSample(index) {
  const r = await api(`/api/sample/${index}`);
  const s = r.sample;
  const blocks = r.methods.map((m) => {
    if (m.kind === "per-sample") {
      return `<div class="card method" data-method="${esc(m.name)}"><h2>${esc(m.name)}</h2>
        <p>score <b>${fmt(m.score)}</b>, rank <b>${m.rank ?? "–"}</b> of ${m.n} <span class="muted">(${esc(m.what)})</span></p></div>`;
    }
    const rows = m.pulls.map((p) => `<tr data-query="${p.query.index}"><td class="num">${p.rank}</td><td class="num">${fmt(p.score)}</td>
        <td><a href="#/query/${p.query.index}">${esc(p.query.id)}</a> ${taskTag(p.query.task)}
        ${p.query.prompt != null ? textPair(p.query.prompt, p.query.response, 240) : ""}</td></tr>`).join("");
    return `<div class="card method" data-method="${esc(m.name)}"><h2>${esc(m.name)}: in the top-${m.k} of <span class="n-pulls">${m.pulls.length}</span> queries</h2>
      ${m.pulls.length ? `<table><tr><th>rank</th><th>score</th><th>query</th></tr>${rows}</table>` : '<p class="muted">In no query\'s top-k.</p>'}</div>`;
  }).join("");
  main.innerHTML = `<h1>Training sample <span id="sample-id">${esc(s.id)}</span> ${taskTag(s.task)}</h1>
    <div class="card">${factsTable([
      ["row in the data file", String(s.row)],
      ["loss", fmt(s.loss)],
      ["tokens", `${s.n_tokens} (${s.n_loss_tokens} with loss)${s.truncated ? " · truncated" : ""}`],
      ["self-score ‖g‖²", s.self_score != null ? fmt(s.self_score) : ""],
    ])}${textPair(s.prompt, s.response, 8000)}
    <p><button class="secondary" id="tick">Add to selection</button></p></div>
    <h2>What this sample influenced</h2><div class="methods">${blocks}</div>`;
  document.getElementById("tick").onclick = () => { ticked().add(s.index); saveTicked(); document.getElementById("tick").textContent = "Added"; };
  done("sample");
}

async function pageLive(params) {
  const o = await overview();
  if (!o.live.enabled) {
    main.innerHTML = `<h1>Live query</h1><div class="card"><p>Live queries need the model: restart with <code>inflow serve --model M …</code>.</p></div>`;
    return done("live");
  }
  main.innerHTML = `<h1>Live query</h1>
    <div class="card">
      <p class="muted">Featurized with the store's own settings and weights, then scored against every training sample. Up to ${o.live.max_chars} characters.</p>
      <p><label>method <select id="method">${o.live.methods.map((m) => `<option>${esc(m)}</option>`).join("")}</select></label>
         <label>top-k <input id="k" type="number" min="1" max="100" value="10" style="width:70px"></label></p>
      <p><textarea id="prompt" placeholder="prompt"></textarea></p>
      <p><textarea id="response" placeholder="response"></textarea></p>
      <p class="muted">…or paste one JSONL record (alpaca, chat, prompt/completion):</p>
      <p><textarea id="record" placeholder='{"instruction": "…", "output": "…"}'></textarea></p>
      <p><button id="go">Score</button></p>
      <div id="status"></div>
    </div>
    <div id="result"></div>`;
  // A link can carry the query (#/live?prompt=…&response=…&method=…&k=…) or a job to show.
  for (const f of ["prompt", "response", "method", "k"]) if (params.get(f)) document.getElementById(f).value = params.get(f);
  document.getElementById("go").onclick = () => runLive(null);
  if (params.get("job")) return runLive(+params.get("job"));
  done("live");
}

async function runLive(given) {
  const status = document.getElementById("status"), result = document.getElementById("result");
  const body = {
    method: document.getElementById("method").value,
    top_k: +document.getElementById("k").value,
    prompt: document.getElementById("prompt").value,
    response: document.getElementById("response").value,
    record: document.getElementById("record").value || null,
  };
  result.innerHTML = "";
  document.body.dataset.ready = "live-running";
  try {
    const job = given ?? (await api("/api/live", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) })).job;
    for (;;) {
      const j = await api(`/api/live/${job}`);
      if (j.state === "queued") status.innerHTML = `<p>Waiting: ${j.ahead} queries ahead.</p>`;
      if (j.state === "running") {
        const pct = j.total ? Math.round(100 * j.done / j.total) : 0;
        status.innerHTML = `<p>${esc(j.stage)}: ${j.done} / ${j.total}</p><div class="bar"><div style="width:${pct}%"></div></div>`;
      }
      if (j.state === "failed") throw new Error(j.error);
      if (j.state === "done") {
        status.innerHTML = `<p class="muted">job ${job} · ${esc(j.method)} · ${esc(j.sign_convention)}</p><div class="text">${esc(j.query_text)}</div>`;
        result.innerHTML = methodColumn({ name: j.method, sign_convention: j.sign_convention, rows: j.rows.filter((x) => x.sample) });
        done("live-done");
        return;
      }
      await new Promise((res) => setTimeout(res, 300));
    }
  } catch (e) {
    status.innerHTML = `<p class="error">${esc(e.message)}</p>`;
    done("live-failed");
  }
}

function ticked() {
  if (!window.TICKED) window.TICKED = new Set(JSON.parse(sessionStorage.getItem("inflow-ticked") || "[]"));
  return window.TICKED;
}
function saveTicked() { sessionStorage.setItem("inflow-ticked", JSON.stringify([...ticked()])); }

async function download(body) {
  const r = await fetch("/api/selection", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  if (!r.ok) { const e = await r.json(); throw new Error(e.error); }
  const blob = await r.blob();
  const name = (r.headers.get("content-disposition") || "").match(/filename="([^"]+)"/);
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob); a.download = name ? name[1] : "selection.jsonl"; a.click();
  return r.headers.get("x-inflow-selected");
}

async function pageSelect(params) {
  const o = await overview();
  if (!o.selection.enabled) {
    main.innerHTML = `<h1>Selection</h1><div class="card"><p>The training data file named in the store's run.json is not there, so no selection can be cut from it.</p></div>`;
    return done("select");
  }
  main.innerHTML = `<h1>Selection</h1>
    <div class="card"><h2>A method's top percent</h2>
      <p class="muted">Per-sample files rank by their score; top-k files by the best score a sample reaches in any query's list. Written in the training file's own format by the same writer as <code>inflow select</code>.</p>
      <p><select id="m">${o.methods.map((m) => `<option>${esc(m.name)}</option>`).join("")}</select>
      top <input id="p" type="number" min="0.1" max="100" step="0.1" value="5" style="width:80px">%
      <button id="dl-top">Download</button> <span id="top-msg" class="muted"></span></p></div>
    <div class="card"><h2>Ticked samples: <span id="n-ticked">0</span></h2>
      <p><input id="search" type="text" placeholder="search text, task or id" value="${esc(params.get("q") || "")}">
      <button id="dl-ticked">Download ticked</button> <button class="secondary" id="clear">Clear</button> <span id="tick-msg" class="muted"></span></p>
      <table id="list"></table></div>`;
  const count = () => { document.getElementById("n-ticked").textContent = ticked().size; };
  const input = document.getElementById("search");
  const load = async () => {
    const r = await api(`/api/samples?limit=200&q=${encodeURIComponent(input.value)}`);
    document.getElementById("list").innerHTML = `<tr><th></th><th>sample</th><th>task</th><th>prompt</th></tr>` + r.samples.map((s) =>
      `<tr><td><input type="checkbox" data-row="${s.index}" ${ticked().has(s.index) ? "checked" : ""}></td><td><a href="#/sample/${s.index}">${esc(s.id)}</a></td><td>${taskTag(s.task)}</td><td class="text">${esc(s.snippet)}</td></tr>`).join("");
    document.querySelectorAll("#list input[type=checkbox]").forEach((c) => c.onchange = () => {
      const row = +c.dataset.row; c.checked ? ticked().add(row) : ticked().delete(row); saveTicked(); count();
    });
    done("select");
  };
  let t = null;
  input.addEventListener("input", () => { clearTimeout(t); t = setTimeout(load, 200); });
  document.getElementById("dl-top").onclick = async () => {
    const msg = document.getElementById("top-msg");
    try { const n = await download({ method: document.getElementById("m").value, percent: +document.getElementById("p").value }); msg.textContent = `${n} samples downloaded`; }
    catch (e) { msg.textContent = e.message; }
  };
  document.getElementById("dl-ticked").onclick = async () => {
    const msg = document.getElementById("tick-msg");
    try { const n = await download({ rows: [...ticked()] }); msg.textContent = `${n} samples downloaded`; }
    catch (e) { msg.textContent = e.message; }
  };
  document.getElementById("clear").onclick = () => { ticked().clear(); saveTicked(); count(); load(); };
  count();
  await load();
}

// ---------- routing ----------

async function route() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, qs] = hash.split("?");
  const params = new URLSearchParams(qs || "");
  const parts = path.split("/").filter(Boolean);
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.nav === (parts[0] === "query" ? "queries" : parts[0] === "sample" ? "samples" : parts[0] || "overview")));
  delete document.body.dataset.ready;
  try {
    const o = await overview();
    document.getElementById("store-name").textContent = `${o.facts.store} · ${o.facts.n_samples} samples · ${o.methods.length} score files`;
    if (!parts.length) await pageOverview();
    else if (parts[0] === "queries") await pageQueries(params);
    else if (parts[0] === "query" && /^\d+$/.test(parts[1] || "")) await pageQuery(+parts[1]);
    else if (parts[0] === "samples") await pageSamples(params);
    else if (parts[0] === "sample" && /^\d+$/.test(parts[1] || "")) await pageSample(+parts[1]);
    else if (parts[0] === "live") await pageLive(params);
    else if (parts[0] === "select") await pageSelect(params);
    else { main.innerHTML = `<p class="error">No page ${esc(path)}.</p>`; done("missing"); }
  } catch (e) {
    main.innerHTML = `<p class="error">${esc(e.message)}</p>`;
    done("error");
  }
  window.scrollTo(0, 0);
}

window.addEventListener("hashchange", route);
route();
