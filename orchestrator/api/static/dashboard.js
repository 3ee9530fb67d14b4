// Plexus dashboard: render the page's data, then poll /ui/api/... every 2 s and re-render.
// No framework, no build step; charts are SVG drawn below (docs/dashboard.md says why).
"use strict";
(function () {
  const POLL_MS = 2000;
  const body = document.body;
  const page = body.dataset.page;
  const item = body.dataset.item;
  const SVG = "http://www.w3.org/2000/svg";

  function esc(v) {
    return String(v == null ? "" : v).replace(/[&<>"']/g, (c) =>
      ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  }
  function num(v, digits) { return v == null ? "–" : Number(v).toFixed(digits); }
  function pct(v) { return v == null ? "–" : (100 * v).toFixed(1) + " %"; }
  function ago(now, t) {
    if (t == null) return "–";
    const s = Math.max(0, now - t);
    return s < 90 ? s.toFixed(0) + " s ago" : (s / 60).toFixed(0) + " min ago";
  }
  function clock(t) { return t == null ? "–" : new Date(t * 1000).toLocaleTimeString(); }
  function bytes(b) { return b == null ? "–" : (b / 2 ** 30).toFixed(1) + " GiB"; }
  function rows(id, html) {
    const tb = document.querySelector("#" + id + " tbody");
    if (tb) tb.innerHTML = html.join("") ||
      '<tr><td class="muted" colspan="20">nothing yet</td></tr>';
  }
  function state(s) { return '<span class="state ' + esc(s) + '">' + esc(s) + "</span>"; }

  // -- a line chart in SVG: series of [x, y] points, optional horizontal reference line ----
  function chart(id, series, opt) {
    const el = document.getElementById(id);
    if (!el) return;
    opt = opt || {};
    const W = 360, H = 180, L = 44, R = 10, T = 10, B = 26;
    const pts = series.flatMap((s) => s.points);
    const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
    if (opt.hline != null) ys.push(opt.hline);
    let x0 = Math.min(...xs, 0), x1 = Math.max(...xs, 1);
    let y0 = opt.ymin != null ? opt.ymin : Math.min(...ys, 0);
    let y1 = opt.ymax != null ? opt.ymax : Math.max(...ys, 1e-9) * 1.1;
    if (x1 === x0) x1 = x0 + 1;
    if (y1 === y0) y1 = y0 + 1;
    const sx = (x) => L + (x - x0) / (x1 - x0) * (W - L - R);
    const sy = (y) => H - B - (y - y0) / (y1 - y0) * (H - T - B);
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    const add = (tag, attrs, text) => {
      const e = document.createElementNS(SVG, tag);
      for (const k in attrs) e.setAttribute(k, attrs[k]);
      if (text != null) e.textContent = text;
      svg.appendChild(e);
      return e;
    };
    add("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" });
    add("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" });
    for (const y of [y0, (y0 + y1) / 2, y1]) {
      add("text", { x: L - 4, y: sy(y) + 4, class: "tick", "text-anchor": "end" },
        Math.abs(y1 - y0) < 5 ? y.toFixed(2) : y.toFixed(0));
    }
    add("text", { x: L, y: H - 8, class: "tick" }, x0.toFixed(0));
    add("text", { x: W - R, y: H - 8, class: "tick", "text-anchor": "end" },
      x1.toFixed(0) + (opt.xlabel ? " " + opt.xlabel : ""));
    if (opt.hline != null) {
      add("line", { x1: L, x2: W - R, y1: sy(opt.hline), y2: sy(opt.hline), class: "ref" });
      add("text", { x: W - R, y: sy(opt.hline) - 3, class: "tick", "text-anchor": "end" },
        opt.hlabel || "");
    }
    let count = 0;
    series.forEach((s, i) => {
      if (!s.points.length) return;
      add("polyline", { points: s.points.map((p) => sx(p[0]) + "," + sy(p[1])).join(" "),
        class: "line s" + i });
      for (const p of s.points) {
        add("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 3, class: "pt s" + i }).appendChild(
          document.createElementNS(SVG, "title")).textContent = `${p[0]}: ${p[1]}`;
        count++;
      }
    });
    if (!count) add("text", { x: W / 2, y: H / 2, class: "tick", "text-anchor": "middle" },
      "no rounds yet");
    el.replaceChildren(svg);
    el.dataset.points = String(count);
  }

  // -- a bar chart in SVG: [label, value] pairs, one bar each ------------------------------
  function bars(id, pairs, opt) {
    const el = document.getElementById(id);
    if (!el) return;
    opt = opt || {};
    const W = 360, H = 180, L = 44, R = 10, T = 10, B = 26;
    const top = Math.max(1, ...pairs.map((p) => p[1]));
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    const add = (tag, attrs, text) => {
      const e = document.createElementNS(SVG, tag);
      for (const k in attrs) e.setAttribute(k, attrs[k]);
      if (text != null) e.textContent = text;
      svg.appendChild(e);
      return e;
    };
    add("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" });
    add("text", { x: L - 4, y: T + 4, class: "tick", "text-anchor": "end" }, String(top));
    add("text", { x: L - 4, y: H - B, class: "tick", "text-anchor": "end" }, "0");
    const slot = (W - L - R) / Math.max(pairs.length, 1);
    pairs.forEach(([label, value], i) => {
      const h = value / top * (H - T - B);
      add("rect", { x: L + i * slot + slot * 0.15, y: H - B - h, width: slot * 0.7, height: h,
        class: "bar " + (opt.classes ? opt.classes[i] || "" : "s0") }).appendChild(
        document.createElementNS(SVG, "title")).textContent = `${label}: ${value}`;
      add("text", { x: L + (i + 0.5) * slot, y: H - 8, class: "tick", "text-anchor": "middle" },
        String(label));
    });
    if (!pairs.length) add("text", { x: W / 2, y: H / 2, class: "tick", "text-anchor": "middle" },
      opt.empty || "nothing yet");
    el.replaceChildren(svg);
    el.dataset.bars = String(pairs.length);
  }

  // -- pages -------------------------------------------------------------------------------
  function renderOverview(d) {
    rows("tasks", d.tasks.map((t) => `<tr><td>${t.id}</td>
      <td><a href="/ui/tasks/${t.id}">${esc(t.name)}</a></td><td>${esc(t.mode)}</td>
      <td>${state(t.state)}</td><td>${t.rounds_done}${t.rounds ? " / " + t.rounds : ""}</td>
      <td>${esc(t.allocator)}</td><td>${esc(t.reason)}</td></tr>`));
    rows("jobs", d.jobs.map((j) => `<tr><td>${j.id}</td>
      <td><a href="/ui/jobs/${j.id}">${esc(j.name)}</a></td><td>${state(j.state)}</td>
      <td>${esc(j.allocator)}</td><td>${j.task_ids.map((t) =>
        `<a href="/ui/tasks/${t}">${t}</a>`).join(", ")}</td><td>${j.rounds_done}</td>
      <td>${esc(j.reason)}</td></tr>`));
  }

  function renderFleet(d) {
    rows("fleet", d.learners.map((l) => {
      const f = l.facts || {};
      const temp = f.temperature_c != null ? num(f.temperature_c, 1) + " °C" : "–";
      const thr = f.throttled == null ? "–" : f.throttled
        ? `<span class="state bad">yes</span> ${esc((f.throttle_reasons || []).join(", "))}`
        : "no";
      const models = (f.model_factories || []).map((m) =>
        `${esc(m.name)} <span class="muted">${esc(m.distribution)} ${esc(m.version)}</span>`)
        .join("<br>") || "built-in only";
      const cur = l.current_task ? `<a href="/ui/tasks/${l.current_task.id}">${
        esc(l.current_task.name)}</a>` : "–";
      return `<tr data-learner="${esc(l.name)}"><td>${esc(l.name)}</td>
        <td class="online-state">${l.alive ? '<span class="state ok">online</span>'
          : '<span class="state bad">offline</span>'}</td>
        <td>${ago(d.now, l.last_seen)}</td><td>${esc(l.via)}</td><td>${esc(f.cores)}</td>
        <td>${bytes(f.memory_bytes)}</td><td>${num(f.load_1m, 2)}</td><td>${temp}</td>
        <td>${thr}</td><td>${esc(f.platform)} ${esc(f.machine)}</td>
        <td class="models">${models}</td><td>${cur}</td>
        <td class="bench">${(l.benchmarks || []).slice(-3).reverse().map((b) =>
          `task ${b.task}: ${num(b.b_k / 1e6, 1)} MB/s · ${num(b.c_k, 0)} samples/s`)
          .join("<br>") || "–"}</td></tr>`;
    }));
  }

  function leftOut(names, lo) {
    return Object.entries(lo || {}).map(([k, why]) =>
      `<span class="why">${esc(names[k] || k)}: ${esc(why)}</span>`).join("<br>");
  }

  // A learner's time in a round: actual, and the eq. 3.4 prediction with its error in %.
  function timing(t) {
    if (!t) return "";
    let out = " · " + num(t.actual_s, 2);
    if (t.predicted_s != null && t.actual_s) {
      out += ` (${num(t.predicted_s, 2)}, <span class="err">${
        pct((t.predicted_s - t.actual_s) / t.actual_s)}</span>)`;
    }
    return out;
  }

  function renderTask(d) {
    const t = d.task, names = d.names, rs = d.rounds;
    document.getElementById("task-state").textContent = t.state;
    document.getElementById("task-state").className = "state " + t.state;
    document.getElementById("task-reason").textContent = t.reason || "";
    document.getElementById("task-progress").textContent = (t.rounds
      ? `${t.rounds_done} of ${t.rounds} rounds` : `model version ${t.model_version}`) +
      (d.waiting ? " · " + d.waiting : "");
    chart("chart-accuracy", [{ points: rs.filter((r) => r.accuracy != null)
      .map((r) => [r.index, r.accuracy]) }], { ymin: 0, ymax: 1, xlabel: "round" });
    chart("chart-loss", [{ points: rs.filter((r) => r.loss != null)
      .map((r) => [r.index, r.loss]) }], { xlabel: "round" });
    chart("chart-time", [{ points: rs.map((r) => [r.index, r.round_time_s]) }],
      { hline: d.deadline_s, hlabel: "deadline", xlabel: "round" });
    rows("rounds", rs.slice().reverse().map((r) => `<tr><td>${r.index}</td>
      <td>${clock(r.started_at)}</td><td>${num(r.plan_s, 2)}</td>
      <td>${num(r.round_time_s, 2)}</td><td>${num(d.deadline_s, 1)}</td>
      <td class="${r.truancy > 0 ? "bad" : "ok"}">${r.truancy == null ? "–"
        : (r.truancy > 0 ? "+" : "") + pct(r.truancy)}</td><td>${pct(r.accuracy)}</td>
      <td>${num(r.loss, 3)}</td><td>${leftOut(names, r.left_out)}</td></tr>`));
    const ids = [...new Set(rs.flatMap((r) => Object.keys(r.allocation || {})))]
      .sort((a, b) => String(names[a] || a).localeCompare(String(names[b] || b)));
    document.querySelector("#allocation thead").innerHTML = "<tr><th>round</th>" +
      ids.map((k) => `<th>${esc(names[k] || k)}<br><small>shards · samples · time s
        (predicted, error)</small></th>`)
        .join("") + "</tr>";
    rows("allocation", rs.slice().reverse().map((r) => "<tr><td>" + r.index + "</td>" +
      ids.map((k) => `<td>${r.allocation[k] ?? 0} · ${(r.samples || {})[k] ?? "–"}${
        timing((r.times || {})[k])}</td>`).join("") + "</tr>"));
    renderAsync(d);
  }

  function renderAsync(d) {
    const box = document.getElementById("async-box");
    const a = d.async;
    if (d.task.mode !== "async") return;
    box.hidden = false;
    const t0 = d.task.started_at || d.task.created_at;
    chart("chart-version", [{ points: d.rounds.map((r) => [r.started_at - t0, r.model_version]) }],
      { xlabel: "s" });
    document.getElementById("async-counters").innerHTML = a
      ? `version <b>${a.version}</b> · buffer ${a.queued} · pulls ${a.pulls} · accepted
         <b class="ok">${a.accepted}</b> · refused <b class="bad">${a.rejected}</b>`
      : "not running: counters are kept only while the task runs";
    const v = d.async_view;
    if (!v) return;
    bars("chart-staleness", v.staleness, { empty: "no aggregation yet" });
    bars("chart-updates", [["accepted", v.accepted], ["refused", v.refused]],
      { classes: ["ok", "bad"] });
    const meter = document.getElementById("buffer-fill");
    meter.max = v.buffer.k || 1;
    meter.value = v.buffer.queued || 0;
    document.getElementById("buffer-text").textContent = v.buffer.queued == null
      ? "(only while the task runs)" : `${v.buffer.queued} of K = ${v.buffer.k} updates`;
    document.getElementById("refused-reasons").textContent = Object.keys(
      v.refused_by_reason).length ? "refused: " + Object.entries(v.refused_by_reason).map(
      ([k, n]) => `${k} ${n}`).join(", ") : "";
  }

  function renderJob(d) {
    const j = d.job, names = d.names;
    document.getElementById("job-state").textContent = j.state;
    document.getElementById("job-state").className = "state " + j.state;
    document.getElementById("job-reason").textContent = j.reason || "";
    rows("job-tasks", j.tasks.map((t) => `<tr><td>${t.id}</td>
      <td><a href="/ui/tasks/${t.id}">${esc(t.name)}</a></td><td>${state(t.state)}</td>
      <td>${t.rounds_done}${t.rounds ? " / " + t.rounds : ""}</td><td>${esc(t.reason)}</td></tr>`));
    const m = j.metrics;
    const keys = ["average_training_time_s", "satisfaction_ratio", "average_task_fulfillment",
      "data_drop_rate", "occupancy"];
    document.querySelector("#job-metrics thead").innerHTML = "<tr><th></th>" +
      keys.map((k) => `<th>${esc(k.replace(/_/g, " "))}</th>`).join("") + "</tr>";
    const line = (name, v) => `<tr><td>${esc(name)}</td>` +
      keys.map((k) => `<td>${num(v[k], 3)}</td>`).join("") + "</tr>";
    rows("job-metrics", m ? [line("all tasks", m),
      ...Object.entries(m.per_task || {}).map(([n, v]) => line(n, v))] : []);
    rows("job-rounds", j.records.slice().reverse().map((r) => {
      const p = r.expected_delay_s, a = r.duration_s;
      const err = p != null && a ? pct((p - a) / a) : "–";
      return `<tr><td>${r.round}</td><td>${esc(r.task)}</td><td>${Object.entries(
        r.allocation || {}).map(([k, n]) => esc(names[k] || k) + ": " + n).join(", ")}</td>
        <td>${num(r.deadline_s, 1)}</td><td>${num(p, 2)}</td><td>${num(a, 2)}</td>
        <td>${err}</td><td>${pct(r.fulfillment)}</td>
        <td>${esc((r.solver || {}).method)} ${esc((r.solver || {}).status)}</td>
        <td>${leftOut(names, r.left_out)}</td></tr>`;
    }));
  }

  const RENDER = { overview: renderOverview, fleet: renderFleet, task: renderTask, job: renderJob };
  const API = { overview: "/ui/api/tasks", fleet: "/ui/api/fleet",
    task: "/ui/api/tasks/" + item, job: "/ui/api/jobs/" + item };
  const render = RENDER[page];
  if (!render) return;
  const live = document.getElementById("live");
  render(JSON.parse(document.getElementById("initial").textContent));

  async function poll() {
    try {
      const res = await fetch(API[page], { credentials: "same-origin", cache: "no-store" });
      if (res.status === 401) { location.href = "/ui/login?next=" + location.pathname; return; }
      if (!res.ok) throw new Error(res.status + " " + res.statusText);
      render(await res.json());
      live.textContent = "live · " + new Date().toLocaleTimeString();
      live.className = "ok";
    } catch (e) {
      live.textContent = "orchestrator unreachable (" + e.message + "), retrying";
      live.className = "bad";
    }
    setTimeout(poll, POLL_MS);
  }
  setTimeout(poll, POLL_MS);
})();
