/* metasched dashboard (issue 19): plain JavaScript, no library, no build step.
 *
 * Everything shown comes from the service's JSON API, same origin (the session cookie, or the SSO of the nginx
 * site); requests that change something carry the session's CSRF token. The view is chosen by the part of the
 * URL after '#': #/ overview, #/jobs, #/jobs/<id>, #/submit, #/admin, #/login. Text is always put in with
 * textContent (never innerHTML): job names, reasons and output are whatever users wrote.
 */
"use strict";

const STATES = ["TO_BE_QUEUED", "HELD", "DISPATCHING", "QUEUED", "RUNNING", "COMPLETED", "ERROR", "CANCELLED"];
const FINAL = new Set(["COMPLETED", "ERROR", "CANCELLED"]);
const WAITING = new Set(["TO_BE_QUEUED", "HELD", "DISPATCHING", "QUEUED"]);
const SYMBOL = {TO_BE_QUEUED: "…", HELD: "‖", DISPATCHING: "→", QUEUED: "⋯", RUNNING: "▶", COMPLETED: "✓",
                ERROR: "✗", CANCELLED: "⊘"};
const OUTPUT_TAIL = 16384;        // bytes of stdout/stderr shown (the end of the file)

const app = {me: null, csrf: null, stream: null, subscribers: new Set(), leave: [], queues: null};

// -- the API ------------------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    const text = body && typeof body === "object" ? (body.description || body.title) : String(body || "");
    super(text || `HTTP ${status}`);
    this.status = status;
    this.body = body && typeof body === "object" ? body : {};
  }
}

async function api(method, path, body) {
  const headers = {"Accept": "application/json"};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && app.csrf) headers["X-CSRF-Token"] = app.csrf;
  const resp = await fetch(path, {method, headers, credentials: "same-origin", cache: "no-store",
                                  body: body === undefined ? undefined : JSON.stringify(body)});
  const type = resp.headers.get("Content-Type") || "";
  const data = type.startsWith("application/json") ? await resp.json() : await resp.text();
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

const get = (path) => api("GET", path);

function qs(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, v);
  const s = q.toString();
  return s ? "?" + s : "";
}

// -- DOM helpers ----------------------------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function svgEl(tag, attrs) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  return el;
}

function stateBadge(state) {
  return h("span", {class: `state ${state}`}, `${SYMBOL[state] || ""} ${state}`);
}

function upBadge(up, what) {
  if (up === null || up === undefined) return h("span", {class: "state"}, "? not seen yet");
  return h("span", {class: `state ${up ? "up" : "down"}`}, up ? `✓ ${what || "reachable"}` : "✗ unreachable");
}

function message(kind, text) {
  return h("div", {class: `message ${kind}`, role: kind === "error" ? "alert" : "status"}, text);
}

function announce(text) {
  document.getElementById("announce").textContent = text;
}

function table(columns, rows, opts) {
  // columns: [{label, cell(row) -> node|string}]; one card per row on narrow screens (data-label)
  const head = h("tr", {}, columns.map((c) => h("th", {scope: "col"}, c.header || c.label)));
  const body = h("tbody", {});
  for (const r of rows) {
    const tr = h("tr", {class: opts && opts.rowClass ? opts.rowClass(r) : null});
    for (const c of columns) {
      const v = c.cell(r);
      const empty = v === null || v === undefined || v === "";
      tr.append(h("td", {"data-label": c.label, class: empty ? "empty" : null}, empty ? "" : h("span", {}, v)));
    }
    body.append(tr);
    if (opts && opts.after) append(body, [opts.after(r, columns.length)]);
  }
  return h("div", {class: "table-wrap"}, h("table", {class: "cards"}, h("thead", {}, head), body));
}

// -- formatting --------------------------------------------------------------------------------------------

function when(t) {
  if (!t) return null;
  const d = new Date(t);
  if (isNaN(d)) return t;
  return h("time", {datetime: t, title: t}, d.toISOString().replace("T", " ").slice(0, 19) + " UTC");
}

function duration(seconds) {
  if (seconds === null || seconds === undefined || isNaN(seconds)) return null;
  seconds = Math.max(0, Math.round(seconds));
  const d = Math.floor(seconds / 86400), hh = Math.floor(seconds % 86400 / 3600);
  const mm = Math.floor(seconds % 3600 / 60), ss = seconds % 60;
  const pad = (n) => String(n).padStart(2, "0");
  return (d ? `${d}-` : "") + `${pad(hh)}:${pad(mm)}:${pad(ss)}`;
}

function elapsed(job) {
  if (!job.started_at) return null;
  const end = job.finished_at ? new Date(job.finished_at) : new Date();
  return duration((end - new Date(job.started_at)) / 1000);
}

function bytes(n) {
  if (n === null || n === undefined) return null;
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function resources(r) {
  if (!r) return null;
  const parts = [];
  if (r.nodes) parts.push(`${r.nodes} node${r.nodes > 1 ? "s" : ""}`);
  if (r.tasks) parts.push(`${r.tasks} task${r.tasks > 1 ? "s" : ""}`);
  if (r.cores_per_task) parts.push(`${r.cores_per_task} core${r.cores_per_task > 1 ? "s" : ""}/task`);
  if (r.memory) parts.push(`${bytes(r.memory)}/node`);
  if (r.gpus_per_node) parts.push(`${r.gpus_per_node} GPU/node`);
  if (r.walltime) parts.push(`walltime ${duration(r.walltime)}`);
  if (r.native_queue) parts.push(`queue ${r.native_queue}`);
  if (r.account) parts.push(`account ${r.account}`);
  return parts.length ? parts.join(" · ") : "defaults";
}

function pct(v) { return v === null || v === undefined ? "–" : `${Math.round(v * 10) / 10}%`; }

function bar(value, max, label, cls) {
  const w = max > 0 && value !== null && value !== undefined ? Math.max(0, Math.min(100, 100 * value / max)) : 0;
  const fill = h("div", {class: `fill ${cls || ""}`});
  fill.style.width = `${w}%`;
  return h("div", {class: "bar"}, h("span", {class: "sr-only"}, label || ""),
           h("div", {class: "track", "aria-hidden": "true"}, fill), h("span", {class: "num"}, label || ""));
}

const DASHES = [["", "solid"], ["6 3", "dashed"], ["2 3", "dotted"], ["10 3 2 3", "dash-dot"]];

function chart(series, opts) {
  // series: [{name, points: [[x (ms), y]], scale?}]; each line has its own dash pattern, named in the legend
  // (never told apart by colour alone). y runs 0..opts.max (or the series' own largest value when scale is set).
  const W = 600, H = 140, P = 24;
  const all = series.flatMap((s) => s.points);
  if (!all.length) return h("p", {class: "muted"}, opts.empty || "No samples yet.");
  const svg = svgEl("svg", {class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": opts.label});
  const xs = all.map((p) => p[0]);
  const x0 = opts.from || Math.min(...xs), x1 = Math.max(opts.to || 0, ...xs, x0 + 1);
  series.forEach((s, i) => {
    if (!s.points.length) return;
    const ymax = s.scale ? Math.max(...s.points.map((p) => p[1]), 1) : (opts.max || Math.max(...all.map((p) => p[1]), 1));
    const xy = s.points.map((p) => [P + (W - 2 * P) * (p[0] - x0) / (x1 - x0), H - P + (2 * P - H) * Math.min(p[1], ymax) / ymax]);
    const d = xy.map(([x, y], j) => `${j ? "L" : "M"}${x.toFixed(1)},${y.toFixed(1)}`).join(" ");
    const [dash] = DASHES[i % DASHES.length];
    svg.append(svgEl("path", Object.assign({d, class: `line l${i % 4}`}, dash ? {"stroke-dasharray": dash} : {})));
    if (xy.length < 40) xy.forEach(([x, y]) => svg.append(svgEl("circle", {cx: x.toFixed(1), cy: y.toFixed(1), r: "2.5", class: `dot l${i % 4}`})));
  });
  const t = svgEl("text", {x: 4, y: 12}); t.textContent = opts.top || ""; svg.append(t);
  const b = svgEl("text", {x: 4, y: H - 6}); b.textContent = opts.bottom || "0"; svg.append(b);
  const legend = h("p", {class: "legend"}, series.map((s, i) => `${DASHES[i % DASHES.length][1]}: ${s.name}`).join("; "));
  return h("figure", {class: "chart"}, svg, legend);
}

function queueName(id) {
  const q = (app.queues || []).find((x) => x.id === id);
  return q ? q.name : String(id);
}

async function loadQueues() {
  if (!app.queues) app.queues = (await get("/queues")).items;
  return app.queues;
}

// -- the event stream ------------------------------------------------------------------------------------------

function startStream() {
  if (app.stream || !window.EventSource) return;
  const es = new EventSource("/events/stream");
  const deliver = (kind) => (e) => {
    let ev;
    try { ev = JSON.parse(e.data); } catch (_) { return; }
    for (const fn of Array.from(app.subscribers)) fn(kind, ev);
  };
  es.addEventListener("job", deliver("job"));
  es.addEventListener("cluster", deliver("cluster"));
  app.stream = es;
}

function streaming() {
  return app.stream !== null && app.stream.readyState === EventSource.OPEN;
}

function stopStream() {
  if (app.stream) app.stream.close();
  app.stream = null;
}

function subscribe(fn) {
  app.subscribers.add(fn);
  app.leave.push(() => app.subscribers.delete(fn));
}

function every(ms, fn) {
  const t = setInterval(fn, ms);
  app.leave.push(() => clearInterval(t));
}

function debounce(ms, fn) {
  let t = null;
  const run = () => { clearTimeout(t); t = setTimeout(fn, ms); };
  app.leave.push(() => clearTimeout(t));
  return run;
}

// -- session -----------------------------------------------------------------------------------------------------

async function loadSession() {
  const s = await get("/ui/session");
  setSession(s);
}

function setSession(s) {
  app.me = s;
  app.csrf = s.csrf;
  const who = document.getElementById("who");
  who.replaceChildren();
  document.getElementById("nav").hidden = !s.authenticated;
  document.getElementById("nav-admin").hidden = !s.admin;
  if (!s.authenticated) { stopStream(); return; }
  who.append(h("span", {}, `${s.user}${s.admin ? " (admin)" : ""}`));
  if (s.authenticated_by === "session") {
    who.append(h("button", {type: "button", id: "logout", onclick: logout}, "Log out"));
  } else {
    who.append(h("span", {class: "muted"}, s.authenticated_by === "proxy" ? "signed in by the site" : `via ${s.authenticated_by}`));
  }
  startStream();
}

async function logout() {
  try { await api("POST", "/ui/logout"); } finally {
    setSession({authenticated: false, user: null, admin: false, authenticated_by: "anonymous", csrf: null});
    app.queues = null;
    location.hash = "#/login";
  }
}

// -- views -------------------------------------------------------------------------------------------------------

function field(label, input, hint) {
  const id = input.id || `f-${input.name.replace(/\W/g, "-")}`;
  input.id = id;
  const hintEl = hint ? h("span", {class: "hint", id: `${id}-hint`}, hint) : null;
  if (hintEl) input.setAttribute("aria-describedby", hintEl.id);
  return h("div", {}, h("label", {for: id}, label), input, hintEl);
}

async function loginView(view, params) {
  document.title = "Log in · metasched";
  const token = h("input", {type: "password", name: "token", autocomplete: "off", required: true, spellcheck: "false"});
  const out = h("div", {});
  const form = h("form", {class: "stack", id: "login-form", novalidate: true},
    field("API token", token, "Create one with `metasched token create` (or POST /tokens); it is sent once and " +
          "exchanged for a session cookie, never kept in the page or a URL."),
    h("div", {class: "actions"}, h("button", {type: "submit", class: "primary"}, "Log in")), out);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    out.replaceChildren();
    token.removeAttribute("aria-invalid");
    try {
      const s = await api("POST", "/ui/login", {token: token.value.trim()});
      token.value = "";
      setSession(s);
      location.hash = params.next || "#/";
    } catch (err) {
      token.setAttribute("aria-invalid", "true");
      out.append(message("error", err.message));
      token.focus();
    }
  });
  view.append(h("h1", {}, "Log in"), form);
  token.focus();
}

function clusterDetail(d) {
  // a mode change says what changed ({changed, previous}); anything else is shown as it came
  if (d && d.changed && typeof d.changed === "object") {
    const prev = d.previous || {};
    return Object.entries(d.changed).map(([k, v]) => `${k}: ${JSON.stringify(prev[k])} → ${JSON.stringify(v)}`).join("; ");
  }
  return h("code", {}, JSON.stringify(d));
}

async function overviewView(view) {
  document.title = "Overview · metasched";
  const hourAgo = new Date(Date.now() - 3600e3).toISOString();
  const [mode, queues, nodes, usage, first] = await Promise.all([
    get("/cluster/mode"), get("/queues"), get("/cluster/nodes"), get("/usage" + qs({since: hourAgo})),
    get("/events?limit=1")]);
  app.queues = queues.items;
  const eventsList = h("ul", {class: "events", id: "recent-events"});
  const addEvent = (ev, top) => {
    const li = h("li", {}, when(ev.at), " ",
      ev.type === "job"
        ? [h("a", {href: `#/jobs/${ev.job.id}`}, `job ${ev.job.id}`), ` ${ev.job.name} (${ev.job.owner}): `,
           ev.old_status ? `${ev.old_status} → ` : "", stateBadge(ev.new_status), ev.reason ? ` — ${ev.reason}` : ""]
        : [h("strong", {}, ev.kind), " ", ev.actor ? `by ${ev.actor} ` : "", clusterDetail(ev.detail)]);
    if (top) eventsList.prepend(li); else eventsList.append(li);
    while (eventsList.children.length > 25) eventsList.lastChild.remove();
  };
  const recent = await get("/events" + qs({after: Math.max(0, first.last_id - 25), limit: 100}));
  recent.items.slice().reverse().forEach((ev) => addEvent(ev, false));
  if (!recent.items.length) eventsList.append(h("li", {class: "muted"}, "No events yet."));

  const modePanel = h("section", {class: "panel", id: "mode"}, h("h2", {}, "Policy"),
    h("dl", {class: "facts"},
      h("dt", {}, "Mode"), h("dd", {id: "policy"}, mode.policy),
      h("dt", {}, "High priority"), h("dd", {}, mode.high_priority ? mode.high_priority.name : "none"),
      h("dt", {}, "Changed"), h("dd", {}, mode.updated_at ? [when(mode.updated_at), ` by ${mode.updated_by || "?"}`] : "never")),
    table([{label: "Scheduler", cell: (s) => s.name}, {label: "Type", cell: (s) => s.type},
           {label: "Weight", cell: (s) => bar(s.weight, 100, String(s.weight))}], mode.schedulers));

  const queuePanel = h("section", {class: "panel"}, h("h2", {}, "Queues"),
    table([{label: "Queue", cell: (q) => q.name}, {label: "Reachable", cell: (q) => upBadge(q.reachable)},
           ...STATES.map((s) => ({label: s.replace(/_/g, " ").toLowerCase(),
                                  header: h("span", {title: s}, SYMBOL[s] + " " + s.replace(/_/g, " ").toLowerCase()),
                                  cell: (q) => String(q.jobs[s] || 0)})),
           {label: "Foreign", cell: (q) => Object.entries(q.foreign_jobs || {}).map(([k, v]) => `${k} ${v}`).join(", ") || "0"}],
          queues.items));

  const nodePanel = h("section", {class: "panel"}, h("h2", {}, "Nodes"),
    table([{label: "Node", cell: (n) => `${n.ip}:${n.port}${n.master ? " (master)" : ""}`},
           {label: "State", cell: (n) => upBadge(n.reachable)},
           {label: "Load", cell: (n) => n.load ? n.load.map((x) => x.toFixed(2)).join(" ") : null},
           {label: "CPU", cell: (n) => n.metrics ? pct(n.metrics.cpu_percent) : null},
           {label: "Memory", cell: (n) => n.metrics ? pct(n.metrics.memory_percent) : null},
           {label: "Last seen", cell: (n) => when(n.last_seen)},
           {label: "Last error", cell: (n) => n.last_error}], nodes.items));

  const shares = h("section", {class: "panel", id: "shares"}, h("h2", {}, "CPU share per node and scheduler, last hour"),
    usage.shares.length
      ? table([{label: "Node", cell: (s) => s.node}, {label: "Scheduler", cell: (s) => s.queue},
               {label: "Target", cell: (s) => bar(s.target_share, 100, `target ${pct(s.target_share)}`, "target")},
               {label: "Measured", cell: (s) => bar(s.measured_share, 100, `measured ${pct(s.measured_share)}`)}],
              usage.shares)
      : h("p", {class: "muted"}, "Nothing measured in the last hour."));

  // each scheduler's measured CPU share per node over the last hour: the usage report of each 5-minute window
  const STEP = 300e3, now = Date.now();
  const windows = Array.from({length: 12}, (_, i) => [now - 3600e3 + i * STEP, now - 3600e3 + (i + 1) * STEP]);
  const reports = await Promise.all(windows.map(([a, b]) => get("/usage" + qs({
    since: new Date(a).toISOString(), until: new Date(b).toISOString(), group_by: "queue"}))));
  const lines = new Map();
  reports.forEach((r, i) => r.shares.forEach((x) => {
    const key = `${x.queue} on ${x.node}`;
    if (!lines.has(key)) lines.set(key, {measured: [], target: []});
    const mid = (windows[i][0] + windows[i][1]) / 2;
    if (x.measured_share !== null) lines.get(key).measured.push([mid, x.measured_share]);
    if (x.target_share !== null) lines.get(key).target.push([mid, x.target_share]);
  }));
  shares.append(h("h3", {}, "Over the last hour (5-minute windows)"),
    chart(Array.from(lines.entries()).flatMap(([k, v]) => [{name: `${k}, measured`, points: v.measured},
                                                           {name: `${k}, target`, points: v.target}]),
          {label: "measured and target CPU share per scheduler and node over the last hour", max: 100, top: "100%",
           from: now - 3600e3, to: now, empty: "Nothing measured in the last hour."}));

  const history = h("section", {class: "panel"}, h("h2", {}, "Node CPU and memory, last hour"));
  for (const n of nodes.items) {
    const m = await get(`/cluster/nodes/${n.id}/metrics` + qs({since: hourAgo, limit: 1000}));
    const pts = m.items.filter((s) => s.cpu_percent !== null).map((s) => [new Date(s.at).getTime(), s.cpu_percent]);
    const mem = m.items.filter((s) => s.memory_percent !== null).map((s) => [new Date(s.at).getTime(), s.memory_percent]);
    history.append(h("h3", {}, `${n.ip}:${n.port}`),
      chart([{name: "CPU %", points: pts}, {name: "memory %", points: mem}],
            {label: `CPU and memory percent of node ${n.ip}:${n.port} over the last hour`, max: 100, top: "100%",
             from: Date.now() - 3600e3, to: Date.now()}));
  }

  view.append(h("h1", {}, "Overview"), modePanel, queuePanel, nodePanel, shares, history, h("section", {class: "panel"}, h("h2", {}, "Recent events"), eventsList));
  subscribe((kind, ev) => {
    if (eventsList.firstChild && eventsList.firstChild.classList.contains("muted")) eventsList.firstChild.remove();
    addEvent(ev, true);
  });
}

async function jobsView(view, params) {
  document.title = "Jobs · metasched";
  await loadQueues();
  const f = {status: params.status || "", queue: params.queue || "", name: params.name || "", owner: params.owner || ""};
  let sort = {key: "id", desc: true};
  const stateSel = h("select", {name: "status"}, h("option", {value: ""}, "any"),
                     h("option", {value: "TO_BE_QUEUED,HELD,DISPATCHING,QUEUED,RUNNING"}, "active"),
                     h("option", {value: "COMPLETED,ERROR,CANCELLED"}, "finished"),
                     STATES.map((s) => h("option", {value: s}, s)));
  stateSel.value = f.status;
  const queueSel = h("select", {name: "queue"}, h("option", {value: ""}, "any"),
                     app.queues.map((q) => h("option", {value: String(q.id)}, q.name)));
  queueSel.value = f.queue;
  const nameIn = h("input", {type: "text", name: "name", value: f.name, placeholder: "part of the name"});
  const ownerIn = h("input", {type: "text", name: "owner", value: f.owner, placeholder: "user name"});
  // sorting: the column headers' buttons, or this list (the only way on a narrow screen, where rows are cards)
  const SORTS = [["id", "ID"], ["name", "name"], ["owner", "user"], ["queue", "queue"], ["status", "state"],
                 ["created_at", "submitted"], ["started_at", "started"], ["finished_at", "ended"]];
  const sortSel = h("select", {name: "sort"}, SORTS.filter(([k]) => k !== "owner" || app.me.admin).flatMap(([k, t]) => [
    h("option", {value: `${k}:desc`}, `${t}, descending`), h("option", {value: `${k}:asc`}, `${t}, ascending`)]));
  sortSel.value = "id:desc";
  sortSel.addEventListener("change", () => { const [key, dir] = sortSel.value.split(":"); sort = {key, desc: dir === "desc"}; draw(); });
  const filters = h("form", {class: "filters", role: "search", "aria-label": "Filter jobs"},
    field("State", stateSel), field("Queue", queueSel), field("Name contains", nameIn),
    app.me.admin ? field("User", ownerIn) : null, field("Sort by", sortSel));
  const holder = h("div", {id: "jobs-table", "aria-live": "off"});
  const count = h("p", {class: "muted", id: "jobs-count"});
  view.append(h("h1", {}, app.me.admin ? "Jobs (everyone's)" : "Your jobs"), filters, count, holder);
  let jobs = [], more = false;
  const open = new Set();

  const sortButton = (label, key) => h("button", {type: "button", class: "sort", "aria-label": `Sort by ${label}`,
    onclick: () => { sort = {key, desc: sort.key === key ? !sort.desc : false}; sortSel.value = `${key}:${sort.desc ? "desc" : "asc"}`; draw(); }},
    label, sort.key === key ? (sort.desc ? " ▼" : " ▲") : "");
  const value = (j, key) => key === "queue" ? queueName(j.queue) : j[key] === null ? "" : j[key];

  function tasksRow(j, span) {
    if (!j.array || !open.has(j.id)) return null;
    const cell = h("td", {colspan: String(span), "data-label": "Tasks"}, "Loading tasks…");
    get(`/jobs/${j.id}/tasks?limit=1000`).then((t) => {
      cell.replaceChildren(table([
        {label: "Task", cell: (x) => x.id}, {label: "State", cell: (x) => stateBadge(x.status)},
        {label: "Started", cell: (x) => when(x.started_at)}, {label: "Ended", cell: (x) => when(x.finished_at)},
        {label: "Walltime", cell: (x) => elapsed(x)}, {label: "Exit", cell: (x) => x.exit_code === null ? null : String(x.exit_code)},
        {label: "Reason", cell: (x) => x.reason}], t.items));
    }, (err) => cell.replaceChildren(message("error", err.message)));
    return h("tr", {class: "task"}, cell);
  }

  function draw() {
    const needle = nameIn.value.trim().toLowerCase();
    const shown = jobs.filter((j) => !needle || j.name.toLowerCase().includes(needle));
    shown.sort((a, b) => {
      const x = value(a, sort.key), y = value(b, sort.key);
      const c = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
      return sort.desc ? -c : c;
    });
    count.textContent = `${shown.length} job${shown.length === 1 ? "" : "s"}` +
      (more ? ` of the newest ${jobs.length} (narrow the filters to see older ones)` : "") + "; updated live.";
    const cols = [
      {label: "ID", header: sortButton("ID", "id"), cell: (j) => h("a", {href: `#/jobs/${j.id}`, class: "job-link"}, String(j.id))},
      {label: "Name", header: sortButton("Name", "name"), cell: (j) => [j.name, j.array ? [" ", h("button", {
        type: "button", class: "expand", "aria-expanded": String(open.has(j.id)),
        onclick: () => { open.has(j.id) ? open.delete(j.id) : open.add(j.id); draw(); }},
        `${open.has(j.id) ? "▾" : "▸"} ${j.array.count} tasks`)] : null]},
      app.me.admin ? {label: "User", header: sortButton("User", "owner"), cell: (j) => j.owner} : null,
      {label: "Queue", header: sortButton("Queue", "queue"), cell: (j) => queueName(j.queue)},
      {label: "State", header: sortButton("State", "status"), cell: (j) => [stateBadge(j.status),
        j.array ? h("div", {class: "hint"}, Object.entries(j.array.tasks).filter(([, n]) => n).map(([s, n]) => `${s} ${n}`).join(", ")) : null]},
      {label: "Resources", cell: (j) => resources(j.resources)},
      {label: "Submitted", header: sortButton("Submitted", "created_at"), cell: (j) => when(j.created_at)},
      {label: "Started", cell: (j) => when(j.started_at)},
      {label: "Ended", cell: (j) => when(j.finished_at)},
      {label: "Walltime", cell: (j) => elapsed(j)},
      {label: "Exit", cell: (j) => j.exit_code === null ? null : String(j.exit_code)},
      {label: "Reason", cell: (j) => j.reason},
    ].filter(Boolean);
    holder.replaceChildren(shown.length
      ? table(cols, shown, {rowClass: (j) => `job s-${j.status}`, after: tasksRow})
      : h("p", {}, "No jobs match."));
    view.dataset.ready = "1";
  }

  async function load() {
    const page = await get("/jobs" + qs({order: "newest", limit: 1000, status: stateSel.value, queue: queueSel.value,
                                         owner: app.me.admin ? ownerIn.value.trim() : ""}));
    jobs = page.items;
    more = Boolean(page.next);
    draw();
  }
  const reload = debounce(250, () => load().catch((err) => holder.replaceChildren(message("error", err.message))));
  stateSel.addEventListener("change", reload);
  queueSel.addEventListener("change", reload);
  ownerIn.addEventListener("change", reload);
  nameIn.addEventListener("input", draw);
  filters.addEventListener("submit", (e) => { e.preventDefault(); reload(); });
  subscribe((kind, ev) => { if (kind === "job") { reload(); announce(`job ${ev.job.id} is ${ev.new_status}`); } });
  every(5000, () => { if (!streaming()) reload(); });    // only while the event stream is down (it reconnects)
  every(30000, draw);        // walltimes of running jobs move on
  await load();
}

async function jobView(view, params) {
  const id = Number(params.id);
  document.title = `Job ${id} · metasched`;
  await loadQueues();
  let job = await get(`/jobs/${id}`);        // another user's job is a 404: the not-found page
  const head = h("div", {});
  const facts = h("section", {class: "panel"});
  const why = h("section", {class: "panel", id: "why"});
  const timeline = h("ol", {class: "timeline", id: "timeline"});
  const outPre = h("pre", {class: "output", id: "output", tabindex: "0", "aria-label": "output"});
  const outInfo = h("p", {class: "muted", id: "output-info"});
  const metrics = h("section", {class: "panel", id: "metrics"});
  const notice = h("div", {id: "job-notice"});
  let stream = "stdout";
  const streamSel = h("select", {name: "stream", onchange: () => { stream = streamSel.value; loadOutput(); }},
                      h("option", {value: "stdout"}, "stdout"), h("option", {value: "stderr"}, "stderr"));

  async function act(label, question, method, path) {
    if (!window.confirm(question)) return;
    notice.replaceChildren();
    try {
      job = await api(method, path);
      notice.append(message("ok", `${label}: job ${id} is ${job.status}${job.cancel_requested && !FINAL.has(job.status) ? " (cancel requested)" : ""}.`));
      await refresh();
    } catch (err) {
      notice.append(message("error", err.message));
    }
  }

  let editEl = null, editOf = null;
  function edit() {     // rebuilt only when the job changed: a refresh must not wipe what is being typed
    if (editOf !== job.updated_at) { editEl = editForm(); editOf = job.updated_at; }
    return editEl;
  }

  function editForm() {
    // what can change before the job is dispatched: its name, arguments, walltime and memory (PATCH /jobs/{id})
    if (!(job.status === "TO_BE_QUEUED" || job.status === "HELD") || job.array) return null;
    const name = h("input", {type: "text", name: "edit-name", value: job.name});
    const args = h("textarea", {name: "edit-options", rows: "2"});
    args.value = job.options.join("\n");
    const wall = h("input", {type: "text", name: "edit-walltime", value: job.resources && job.resources.walltime ? duration(job.resources.walltime) : ""});
    const out = h("div", {});
    const form = h("form", {class: "stack", id: "edit-form", novalidate: true},
      h("div", {class: "fields"}, field("Name", name), field("Walltime", wall, "empty: the scheduler's default")),
      field("Arguments", args, "one per line"),
      h("div", {class: "actions"}, h("button", {type: "submit"}, "Save changes")), out);
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const patch = {};
      if (name.value.trim() !== job.name) patch.name = name.value.trim();
      const opts = args.value.split("\n").filter((x) => x !== "");
      if (JSON.stringify(opts) !== JSON.stringify(job.options)) patch.options = opts;
      const old = job.resources && job.resources.walltime ? duration(job.resources.walltime) : "";
      if (wall.value.trim() !== old) patch.resources = {walltime: wall.value.trim() || null};
      if (!Object.keys(patch).length) { out.replaceChildren(message("ok", "Nothing changed.")); return; }
      if (!window.confirm(`Save the changes to job ${id}?`)) return;
      try {
        job = await api("PATCH", `/jobs/${id}`, patch);
        notice.replaceChildren(message("ok", `Saved: job ${id} changed.`));
        await refresh();
      } catch (err) {
        out.replaceChildren(message("error", err.message));
      }
    });
    return h("details", {class: "panel", id: "edit"}, h("summary", {}, "Edit (until it is dispatched)"), form);
  }

  function drawHead() {
    const buttons = [];
    if (!FINAL.has(job.status) && !job.cancel_requested)
      buttons.push(h("button", {type: "button", class: "danger", id: "cancel",
        onclick: () => act("Cancelled", `Cancel job ${id} (${job.name})?`, "DELETE", `/jobs/${id}`)}, "Cancel job"));
    if (job.status === "TO_BE_QUEUED" || (job.array && job.status === "QUEUED"))
      buttons.push(h("button", {type: "button", id: "hold",
        onclick: () => act("Held", `Hold job ${id}? It will not be dispatched until released.`, "POST", `/jobs/${id}/hold`)}, "Hold"));
    if (job.status === "HELD" || (job.array && job.array.tasks.HELD))
      buttons.push(h("button", {type: "button", id: "release",
        onclick: () => act("Released", `Release job ${id}?`, "POST", `/jobs/${id}/release`)}, "Release"));
    head.replaceChildren(h("h1", {}, `Job ${id}: ${job.name} `, stateBadge(job.status)),
                         h("div", {class: "actions"}, buttons), notice, edit());
    const a = job.accounting || {};
    facts.replaceChildren(h("h2", {}, "Details"), h("dl", {class: "facts"}, [
      ["State", [stateBadge(job.status), job.cancel_requested && !FINAL.has(job.status) ? " cancel requested" : ""]],
      ["Owner", job.owner], ["Queue", queueName(job.queue)], ["Script", h("code", {}, job.path)],
      ["Arguments", job.options.length ? h("code", {}, job.options.map((o) => JSON.stringify(o)).join(" ")) : "none"],
      ["Working directory", h("code", {}, job.pwd)], ["Resources", resources(job.resources)],
      ["Submitted", when(job.created_at)], ["Dispatched", when(job.submitted_at)], ["Started", when(job.started_at)],
      ["Ended", when(job.finished_at)], ["Walltime", elapsed(job)],
      ["Exit code", job.exit_code === null ? null : String(job.exit_code)], ["Reason", job.reason],
      ["Scheduler job", job.scheduler_job_id], ["Native name", h("code", {}, job.native_name)],
      ["stdout", job.outputs && job.outputs.stdout ? h("code", {}, job.outputs.stdout) : null],
      ["stderr", job.outputs && job.outputs.stderr ? h("code", {}, job.outputs.stderr) : (job.outputs && job.outputs.join ? "into stdout" : null)],
      ["Depends on", job.after ? JSON.stringify(job.after) : null],
      ["Array", job.array ? `${job.array.spec}: ` + Object.entries(job.array.tasks).filter(([, n]) => n).map(([s, n]) => `${s} ${n}`).join(", ") : null],
      ["Variables", job.env && Object.keys(job.env).length ? Object.keys(job.env).join(", ") : null],
      ["CPU time", a.cpu_seconds !== undefined && a.cpu_seconds !== null ? `${a.cpu_seconds} s` : null],
      ["Peak memory", a.max_rss_bytes ? bytes(a.max_rss_bytes) : null],
    ].filter(([, v]) => v !== null && v !== undefined && v !== "").map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])));
  }

  async function loadWhy() {
    if (!WAITING.has(job.status)) { why.hidden = true; return; }
    const w = await get(`/jobs/${id}/why`);
    why.hidden = false;
    why.replaceChildren(h("h2", {}, "Why it waits"), h("p", {}, w.summary),
      w.reasons.length ? h("ul", {}, w.reasons.map((r) => h("li", {}, h("strong", {}, r.code), `: ${r.text}`, r.detail ? ` (${r.detail})` : ""))) : null,
      w.position ? h("p", {}, `Position ${w.position} in its queue; ${w.ahead} ahead` + (w.ahead_yours.length ? ` (yours: ${w.ahead_yours.join(", ")})` : "") + ".") : null,
      w.scheduler_reason ? h("p", {}, `The scheduler says: ${w.scheduler_reason}`) : null);
  }

  async function loadEvents() {
    const evs = await get(`/jobs/${id}/events`);
    timeline.replaceChildren(...evs.items.map((e) => h("li", {}, when(e.at), " ",
      e.old_status ? `${e.old_status} → ` : "", stateBadge(e.new_status), e.task !== null && e.task !== undefined ? ` (task ${e.task})` : "",
      e.actor ? ` by ${e.actor}` : "", e.reason ? ` — ${e.reason}` : "")));
  }

  async function loadOutput() {
    if (!job.started_at && !FINAL.has(job.status)) { outInfo.textContent = "No output yet: the job has not started."; outPre.textContent = ""; return; }
    if (!job.started_at && FINAL.has(job.status)) { outInfo.textContent = "The job never ran: no output."; outPre.textContent = ""; return; }
    try {
      const resp = await fetch(`/jobs/${id}/output` + qs({stream, offset: -OUTPUT_TAIL}), {credentials: "same-origin", cache: "no-store"});
      if (resp.status === 404) { outInfo.textContent = `No ${stream} file (yet).`; outPre.textContent = ""; return; }
      if (!resp.ok) { const b = await resp.json().catch(() => ({})); throw new ApiError(resp.status, b); }
      const text = await resp.text();
      const size = Number(resp.headers.get("X-Output-Size") || 0);
      const where = decodeURIComponent(resp.headers.get("X-Output-Path") || "");
      outInfo.textContent = `${where} — ${size} bytes${size > OUTPUT_TAIL ? `, the last ${OUTPUT_TAIL} shown` : ""}` +
                            (FINAL.has(job.status) ? "" : "; following while the job runs");
      const atEnd = outPre.scrollTop + outPre.clientHeight >= outPre.scrollHeight - 4;
      outPre.textContent = text;
      if (atEnd) outPre.scrollTop = outPre.scrollHeight;
    } catch (err) {
      outInfo.replaceChildren(message("error", err.message));
    }
  }

  async function loadMetrics() {
    const m = await get(`/jobs/${id}/metrics?limit=1000`);
    const cpu = m.items.filter((s) => s.cpu_percent !== null).map((s) => [new Date(s.at).getTime(), s.cpu_percent]);
    const rss = m.items.map((s) => [new Date(s.at).getTime(), s.rss_bytes]);
    metrics.replaceChildren(h("h2", {}, "CPU and memory"),
      m.latest ? h("p", {}, `Latest: CPU ${pct(m.latest.cpu_percent)} (100% = one core), memory ${bytes(m.latest.rss_bytes)}, ` +
                            `peak ${bytes(m.max_rss_bytes)}, ${m.latest.pids} process${m.latest.pids === 1 ? "" : "es"}.`)
               : h("p", {class: "muted"}, "Not measured (yet): the node agents measure running jobs each poll cycle."),
      m.items.length ? chart([{name: "CPU % (100 = one core)", points: cpu},
                              {name: `resident memory (0..${bytes(Math.max(...rss.map((p) => p[1]), 0))})`, points: rss, scale: true}],
                             {label: `CPU and memory of job ${id} over time`, max: Math.max(100, ...cpu.map((p) => p[1])),
                              top: `${Math.round(Math.max(100, ...cpu.map((p) => p[1])))}%`}) : null);
  }

  async function refresh() {
    job = await get(`/jobs/${id}`);
    drawHead();
    await Promise.all([loadWhy(), loadEvents(), loadOutput(), loadMetrics()]);
    view.dataset.ready = "1";
  }

  const outSection = h("section", {class: "panel"}, h("h2", {}, "Output"), h("div", {class: "filters"}, field("Stream", streamSel)),
                       outInfo, outPre);
  view.append(head, h("div", {class: "grid"}, facts, h("div", {}, why, h("section", {class: "panel"}, h("h2", {}, "Events"), timeline))),
              outSection, metrics);
  const again = debounce(200, () => refresh().catch(() => {}));
  subscribe((kind, ev) => { if (kind === "job" && ev.job.id === id) { again(); announce(`job ${id} is ${ev.new_status}`); } });
  // the output follows while the job runs (a file's growth is no event); its state comes with the events, and is
  // asked for only while the event stream is down
  every(3000, () => { if (!FINAL.has(job.status)) { if (streaming()) loadOutput(); else again(); } });
  await refresh();
}

async function submitView(view) {
  document.title = "Submit · metasched";
  await loadQueues();
  const inp = (name, attrs) => h("input", Object.assign({type: "text", name}, attrs || {}));
  const num = (name) => h("input", {type: "number", name, min: "0", step: "1", inputmode: "numeric"});
  const queue = h("select", {name: "queue"}, app.queues.map((q) => h("option", {value: q.name}, `${q.name} (${q.type})`)));
  const opts = h("textarea", {name: "options", rows: "3"});
  const join = h("input", {type: "checkbox", name: "join"});
  const hold = h("input", {type: "checkbox", name: "hold"});
  const out = h("div", {id: "submit-result"});
  const form = h("form", {class: "stack", id: "submit-form", novalidate: true},
    h("fieldset", {}, h("legend", {}, "Job"), h("div", {class: "fields"},
      field("Queue", queue), field("Script path", inp("path", {required: true, placeholder: "/home/you/job.sh"}), "absolute path of the script on the cluster"),
      field("Name", inp("name"), "default: the script's file name"),
      field("Working directory", inp("pwd", {placeholder: "/home/you"}), "absolute; default: the script's directory")),
      field("Arguments", opts, "one argument per line, passed as they are (no shell)")),
    h("fieldset", {}, h("legend", {}, "Resources"), h("div", {class: "fields"},
      field("Nodes", num("resources.nodes")), field("Tasks", num("resources.tasks")),
      field("Cores per task", num("resources.cores_per_task")), field("Memory per node", inp("resources.memory"), "e.g. 2G, 512M"),
      field("Walltime", inp("resources.walltime"), "e.g. 01:00:00, 90m"), field("GPUs per node", num("resources.gpus_per_node")),
      field("Scheduler queue / partition", inp("resources.native_queue")), field("Account", inp("resources.account")))),
    h("fieldset", {}, h("legend", {}, "Output"), h("div", {class: "fields"},
      field("stdout file", inp("stdout"), "%j job id, %x name, %a array task"), field("stderr file", inp("stderr"))),
      h("label", {class: "inline"}, join, "stderr into the stdout file")),
    h("fieldset", {}, h("legend", {}, "Workflow"), h("div", {class: "fields"},
      field("Array", inp("array"), "FIRST[-LAST[:STEP]][%LIMIT], e.g. 1-10%2"),
      field("After (ok)", inp("after.ok"), "job ids that must complete first, comma-separated (12, 13.2)"),
      field("After (any end)", inp("after.any"), "job ids that must end first")),
      h("label", {class: "inline"}, hold, "submit held (not dispatched until released)")),
    h("div", {class: "actions"}, h("button", {type: "submit", class: "primary"}, "Submit")), out);

  const refs = (s) => s.split(",").map((x) => x.trim()).filter(Boolean).map((x) => /^\d+$/.test(x) ? Number(x) : x);
  function body() {
    const v = (n) => form.elements[n].value.trim();
    const b = {queue: queue.value, path: v("path")};
    for (const k of ["name", "pwd", "stdout", "stderr", "array"]) if (v(k)) b[k] = v(k);
    const args = opts.value.split("\n").filter((x) => x !== "");
    if (args.length) b.options = args;
    const r = {};
    for (const k of ["nodes", "tasks", "cores_per_task", "gpus_per_node"]) {
      const x = v(`resources.${k}`);
      if (x !== "") r[k] = /^-?\d+$/.test(x) ? Number(x) : x;     // the API says what is wrong with it
    }
    for (const k of ["memory", "walltime", "native_queue", "account"]) if (v(`resources.${k}`)) r[k] = v(`resources.${k}`);
    if (Object.keys(r).length) b.resources = r;
    if (join.checked) b.join = true;
    if (hold.checked) b.hold = true;
    const after = {};
    if (v("after.ok")) after.ok = refs(v("after.ok"));
    if (v("after.any")) after.any = refs(v("after.any"));
    if (Object.keys(after).length) b.after = after;
    return b;
  }
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    out.replaceChildren();
    form.querySelectorAll("[aria-invalid]").forEach((x) => x.removeAttribute("aria-invalid"));
    try {
      const job = await api("POST", "/jobs", body());
      out.append(message("ok", `Submitted job ${job.id}.`));
      location.hash = `#/jobs/${job.id}`;
    } catch (err) {
      out.append(message("error", err.message));
      const name = err.body.field || (err.body.fields || [])[0];
      const el = name ? (form.elements[name] || form.elements[String(name).split(/[.[]/)[0]]) : null;
      if (el && el.focus) { el.setAttribute("aria-invalid", "true"); el.focus(); }
    }
  });
  view.append(h("h1", {}, "Submit a job"), form);
  view.dataset.ready = "1";
}

async function adminView(view) {
  document.title = "Admin · metasched";
  view.append(h("h1", {}, "Admin"));
  if (!app.me.admin) { view.append(message("error", "Only admins change the cluster mode or see everyone's usage.")); return; }
  const [mode, queues] = [await get("/cluster/mode"), await loadQueues()];
  const policy = h("select", {name: "policy"}, ["exclusive", "best_effort", "shared", "dynamic"].map((p) => h("option", {value: p}, p)));
  policy.value = mode.policy;
  const hp = h("select", {name: "high_priority"}, h("option", {value: ""}, "none"),
               queues.map((q) => h("option", {value: q.name}, q.name)));
  hp.value = mode.high_priority ? mode.high_priority.name : "";
  const weights = mode.schedulers.map((s) => h("input", {type: "number", name: `weight-${s.name}`, min: "0", max: "100",
                                                         value: String(s.weight), "data-queue": s.name}));
  const preview = h("div", {id: "preview"});
  const result = h("div", {id: "mode-result"});
  const apply = h("button", {type: "button", class: "primary", id: "apply", disabled: true}, "Apply this mode");
  let previewed = null;
  const proposal = () => ({policy: policy.value, high_priority: hp.value || null,
                           weights: Object.fromEntries(weights.map((w) => [w.dataset.queue, Number(w.value)]))});
  const invalidate = () => { previewed = null; apply.disabled = true; preview.replaceChildren(); };
  [policy, hp, ...weights].forEach((x) => x.addEventListener("input", invalidate));
  const form = h("form", {class: "stack", id: "mode-form", novalidate: true},
    h("p", {}, "Current: ", h("strong", {id: "current-policy"}, mode.policy), mode.updated_at ? [" since ", when(mode.updated_at), ` (by ${mode.updated_by})`] : ""),
    h("div", {class: "fields"}, field("Policy", policy), field("High priority (best_effort)", hp),
      mode.schedulers.map((s, i) => field(`Weight of ${s.name} (0..100)`, weights[i]))),
    h("div", {class: "actions"}, h("button", {type: "submit", id: "preview-button"}, "Preview (dry run)"), apply),
    h("p", {class: "hint"}, "A change is applied only after its preview: what it would dispatch now and the CPU shares it would set."),
    preview, result);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    result.replaceChildren();
    const p = proposal();
    try {
      const d = await api("PUT", "/cluster/mode?dry_run=true", p);
      previewed = JSON.stringify(p);
      apply.disabled = false;
      preview.replaceChildren(h("h2", {}, `Preview: ${d.mode.policy}`),
        h("p", {}, d.dispatch.length ? `It would dispatch now: ${d.dispatch.map((j) => `job ${j.id} (${j.owner}, ${j.name})`).join(", ")}.`
                                     : "It would dispatch nothing now.",
                   ` Under the current mode: ${d.current.dispatch.length ? "jobs " + d.current.dispatch.join(", ") : "nothing"}.`),
        Object.keys(d.waiting).length ? h("p", {}, "Others would wait: " + Object.entries(d.waiting).map(([k, v]) => `${v} (${k})`).join(", ")) : null,
        table([{label: "Scheduler", cell: (s) => s.name},
               {label: "Proposed share", cell: (s) => bar(s.share, 100, pct(s.share))},
               {label: "Current share", cell: (s) => bar(d.current.shares[s.name], 100, pct(d.current.shares[s.name]), "target")}], d.shares),
        table([{label: "Node", cell: (n) => n.address},
               {label: "Shares", cell: (n) => Object.entries(n.shares).map(([k, v]) => `${k} ${pct(v)}`).join(", ")}], d.nodes));
      apply.focus();
    } catch (err) {
      invalidate();
      result.append(message("error", err.message));
    }
  });
  apply.addEventListener("click", async () => {
    const p = proposal();
    if (JSON.stringify(p) !== previewed) { invalidate(); return; }
    if (!window.confirm(`Change the cluster mode to ${p.policy}?`)) return;
    try {
      const m = await api("PUT", "/cluster/mode", p);
      result.replaceChildren(message("ok", `The cluster mode is now ${m.policy}.`));
      form.querySelector("#current-policy").textContent = m.policy;
      invalidate();
    } catch (err) {
      result.replaceChildren(message("error", err.message));
    }
  });

  const since = h("select", {name: "since"}, [["1", "last day"], ["7", "last week"], ["30", "last 30 days"]].map(([v, t]) => h("option", {value: v}, t)));
  const usageOut = h("div", {id: "usage"});
  const groupCols = (what) => [{label: what, cell: (g) => g.name || g.key}, {label: "Jobs", cell: (g) => String(g.jobs)},
    {label: "Completed", cell: (g) => String(g.completed)}, {label: "Failed", cell: (g) => String(g.failed)},
    {label: "Cancelled", cell: (g) => String(g.cancelled)},
    {label: "Failure rate", cell: (g) => g.failure_rate === null ? "–" : pct(100 * g.failure_rate)},
    {label: "CPU hours", cell: (g) => g.cpu_hours === null ? "–" : g.cpu_hours.toFixed(3)},
    {label: "Wall hours", cell: (g) => g.wall_hours === null ? "–" : g.wall_hours.toFixed(3)},
    {label: "Wait p50", cell: (g) => duration(g.wait_p50_seconds) || "–"}, {label: "Wait p95", cell: (g) => duration(g.wait_p95_seconds) || "–"}];
  async function loadUsage() {
    const from = new Date(Date.now() - Number(since.value) * 86400e3).toISOString();
    const [byUser, byQueue] = await Promise.all([get("/usage" + qs({since: from, group_by: "user"})),
                                                 get("/usage" + qs({since: from, group_by: "queue"}))]);
    usageOut.replaceChildren(h("h3", {}, "Per user"), table(groupCols("User"), byUser.groups.concat([byUser.total])),
      h("h3", {}, "Per scheduler"), table(groupCols("Scheduler"), byQueue.groups),
      h("h3", {}, "CPU share per node"), byQueue.shares.length ? table([{label: "Node", cell: (s) => s.node}, {label: "Scheduler", cell: (s) => s.queue},
        {label: "Target", cell: (s) => bar(s.target_share, 100, `target ${pct(s.target_share)}`, "target")},
        {label: "Measured", cell: (s) => bar(s.measured_share, 100, `measured ${pct(s.measured_share)}`)}], byQueue.shares)
        : h("p", {class: "muted"}, "Nothing measured in this window."));
  }
  since.addEventListener("change", () => loadUsage().catch((err) => usageOut.replaceChildren(message("error", err.message))));
  view.append(h("section", {class: "panel"}, h("h2", {}, "Cluster mode"), form),
              h("section", {class: "panel"}, h("h2", {}, "Usage"), h("div", {class: "filters"}, field("Window", since)), usageOut));
  await loadUsage();
  view.dataset.ready = "1";
}

function notFoundView(view, text) {
  document.title = "Not found · metasched";
  view.append(h("h1", {id: "not-found"}, "404: not found"), h("p", {}, text || "There is nothing here."),
              h("p", {}, h("a", {href: "#/jobs"}, "Your jobs")));
}

// -- the router --------------------------------------------------------------------------------------------------

const ROUTES = [
  [/^#?\/?$/, "overview", overviewView], [/^#\/jobs(?:\?(.*))?$/, "jobs", jobsView],
  [/^#\/jobs\/([1-9][0-9]*)$/, "jobs", jobView, "id"], [/^#\/submit$/, "submit", submitView],
  [/^#\/admin$/, "admin", adminView], [/^#\/login$/, "login", loginView],
];

let rendering = 0;

async function render() {
  const mine = ++rendering;
  app.leave.splice(0).forEach((fn) => fn());
  const view = document.getElementById("view");
  const fresh = h("main", {id: "view", tabindex: "-1", "aria-busy": "true"});
  view.replaceWith(fresh);
  const hash = location.hash || "#/";
  let found = null;
  for (const [re, nav, fn, key] of ROUTES) {
    const m = hash.match(re);
    if (m) { found = {nav, fn, params: key ? {[key]: m[1]} : Object.fromEntries(new URLSearchParams(m[1] || ""))}; break; }
  }
  document.querySelectorAll("[data-nav]").forEach((a) => a.toggleAttribute("aria-current", false));
  if (!app.me || !app.me.authenticated) {
    if (!found || found.nav !== "login") { location.replace("#/login"); return; }
  }
  if (found && found.nav === "login" && app.me.authenticated) { location.replace("#/"); return; }
  const current = found && document.querySelector(`[data-nav="${found.nav}"]`);
  if (current) current.setAttribute("aria-current", "page");
  try {
    if (!found) notFoundView(fresh, `No page ${hash}.`);
    else await found.fn(fresh, found.params);
  } catch (err) {
    if (mine !== rendering) return;
    if (err instanceof ApiError && err.status === 404) { fresh.replaceChildren(); notFoundView(fresh, err.message); }
    else if (err instanceof ApiError && err.status === 401) { await loadSession(); location.replace("#/login"); return; }
    else fresh.append(message("error", err.message));
  }
  if (mine !== rendering) return;
  fresh.dataset.ready = "1";
  fresh.removeAttribute("aria-busy");
  if (!fresh.contains(document.activeElement)) fresh.focus({preventScroll: true});   // a view may focus its form
}

window.addEventListener("hashchange", render);
window.addEventListener("DOMContentLoaded", async () => {
  try { await loadSession(); } catch (err) {
    document.getElementById("view").replaceChildren(message("error", `The service does not answer: ${err.message}`));
    return;
  }
  render();
});
