// fleetbus dashboard: plain JavaScript, no build step, nothing fetched from elsewhere.
// State comes from /events (server-sent events): a `status` snapshot of runner.status,
// then each `runner.*` and `channel` message of the hub's bus ("bus" events). Nothing polls:
// the only timer ticks the elapsed time of running runs in the page itself.
"use strict";

(() => {
  const MAX_EVENTS = 100;
  const ACTIVE = new Set(["queued", "running"]);
  const PRIORITY = { critical: 0, high: 1, medium: 2, low: 3 };
  const state = { status: null, events: [], selected: null, source: null };
  const $ = (id) => document.getElementById(id);

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === undefined || value === null) continue;
      if (key === "text") node.textContent = value;
      else if (key === "className") node.className = value;
      else node.setAttribute(key, value);
    }
    node.append(...children);
    return node;
  }

  function duration(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    const pad = (n) => String(n).padStart(2, "0");
    if (h) return `${h}h ${pad(m)}m`;
    if (m) return `${m}m ${pad(s % 60)}s`;
    return `${s % 60}s`;
  }

  function elapsed(run) {
    if (!run.started_at) return run.status === "queued" ? "waiting" : "";
    const end = run.ended_at ?? Date.now() / 1000;
    return duration(end - run.started_at);
  }

  function clock(ts) {
    return new Date(ts * 1000).toLocaleTimeString([], { hour12: false });
  }

  let noticeTimer = null;
  function notice(text) {
    const box = $("notice");
    box.textContent = text;
    box.hidden = !text;
    clearTimeout(noticeTimer);
    if (text) noticeTimer = setTimeout(() => (box.hidden = true), 8000);
  }

  function setConnection(value, label) {
    const pill = $("connection");
    pill.dataset.state = value;
    pill.textContent = label ?? value;
  }

  // -- rendering ---------------------------------------------------------------------------
  function render() {
    const status = state.status;
    if (!status) return;
    renderDispatch(status);
    renderCounts(status);
    renderLanes(status.lanes || {});
    renderQueue(status);
    renderRuns(status.runs || []);
  }

  function renderDispatch(status) {
    const pill = $("dispatch");
    pill.dataset.frozen = String(Boolean(status.frozen));
    pill.textContent = status.frozen ? "dispatch frozen" : "dispatching";
    $("freeze").hidden = Boolean(status.frozen);
    $("freeze").disabled = false;
    $("unfreeze").hidden = !status.frozen;
  }

  function renderCounts(status) {
    const names = ["running", "queued", "completed", "failed", "blocked", "cancelled", "timeout", "total"];
    const items = names.flatMap((name) => [
      el("dt", { text: name }),
      el("dd", { id: `count-${name}`, text: String(status[name] ?? 0) }),
    ]);
    $("counts").replaceChildren(...items);
    const backoff = Object.entries(status.backoff || {}).map(([pool, why]) => `${pool} backed off ${why}`);
    $("backoff").textContent = backoff.join("; ");
  }

  function renderLanes(lanes) {
    const rows = Object.entries(lanes).map(([name, lane]) => {
      const fill = el("div", { className: "fill" });
      const share = lane.limit ? lane.running / lane.limit : lane.running ? 1 : 0;
      fill.style.width = `${Math.min(100, Math.round(share * 100))}%`;
      if (lane.limit && lane.running >= lane.limit) fill.classList.add("full");
      const limit = lane.limit ?? "∞";
      return el(
        "div",
        { className: "lane", "data-lane": name, title: `${name}: ${lane.running} running of ${limit}` },
        el("span", { className: "name", text: name }),
        el("div", { className: "bar" }, fill),
        el("span", { className: "count", text: `${lane.running} / ${limit}` }),
      );
    });
    $("lanes").replaceChildren(...rows);
  }

  function renderQueue(status) {
    const queued = (status.runs || [])
      .filter((run) => run.status === "queued")
      .sort((a, b) => PRIORITY[a.priority] - PRIORITY[b.priority] || a.created_at - b.created_at);
    $("queue").replaceChildren(
      ...queued.map((run) =>
        el(
          "li",
          { "data-run-id": run.run_id },
          el("code", { text: run.workspace }),
          ` ${run.agent} (${run.priority})`,
          run.reason ? ` — ${run.reason}` : "",
        ),
      ),
    );
    const more = (status.queued || 0) - queued.length;
    $("queue-note").textContent =
      more > 0 ? `and ${more} more queued` : queued.length ? "" : status.frozen ? "empty (frozen)" : "empty";
  }

  function renderRuns(runs) {
    const rows = runs.map((run) => {
      const kill = ACTIVE.has(run.status)
        ? el("button", { type: "button", className: "danger kill", "data-run-id": run.run_id, text: "Kill" })
        : "";
      return el(
        "tr",
        {
          "data-run-id": run.run_id,
          "data-status": run.status,
          className: run.run_id === state.selected ? "selected" : undefined,
          title: run.reason || undefined,
        },
        el("td", {}, el("code", { text: run.run_id })),
        el("td", { text: run.model ? `${run.agent} (${run.model})` : run.agent }),
        el("td", { text: run.workspace }),
        el("td", {}, el("span", { className: "status", "data-status": run.status, text: run.status })),
        el("td", { className: "elapsed", text: elapsed(run) }),
        el("td", { className: "exit", text: run.exit_code ?? "" }),
        el("td", {}, kill),
      );
    });
    $("runs").tBodies[0].replaceChildren(...rows);
  }

  function renderEvents() {
    $("events").replaceChildren(
      ...state.events.map((msg) =>
        el(
          "li",
          { "data-channel": msg.data.channel },
          el("time", { text: clock(msg.ts) }),
          el("span", { text: msg.data.content }),
        ),
      ),
    );
  }

  function tick() {
    if (!state.status) return;
    for (const run of state.status.runs || []) {
      if (run.status !== "running") continue;
      const cell = document.querySelector(`tr[data-run-id="${CSS.escape(run.run_id)}"] td.elapsed`);
      if (cell) cell.textContent = elapsed(run);
    }
  }

  // -- messages ----------------------------------------------------------------------------
  function onBus(msg) {
    if (msg.topic === "channel") {
      state.events.unshift(msg);
      state.events.length = Math.min(state.events.length, MAX_EVENTS);
      renderEvents();
      return;
    }
    if (!msg.topic.startsWith("runner.run_") || !state.status) return;
    const data = msg.data;
    const runs = (state.status.runs = state.status.runs || []);
    let run = runs.find((r) => r.run_id === data.run_id);
    if (!run) {
      run = {
        run_id: data.run_id, workspace: data.workspace, agent: data.agent, model: data.model,
        priority: "medium", status: "queued", reason: "", created_at: msg.ts,
        started_at: null, ended_at: null, exit_code: null,
      };
      runs.unshift(run);
    }
    if (msg.topic === "runner.run_queued") {
      run.status = "queued";
      run.reason = data.reason;
    } else if (msg.topic === "runner.run_started") {
      run.status = "running";
      run.reason = "";
      run.started_at = msg.ts;
      run.pid = data.pid;
    } else if (msg.topic === "runner.run_completed") {
      run.status = data.status;
      run.exit_code = data.exit_code;
      run.reason = data.reason;
      run.ended_at = msg.ts;
      if (data.duration_s != null) run.started_at = msg.ts - data.duration_s;
    }
    render();
    if (data.run_id === state.selected) loadLog(state.selected);
  }

  function connect() {
    setConnection("connecting", "connecting…");
    const source = new EventSource("/events");
    state.source = source;
    source.addEventListener("open", () => setConnection("live"));
    source.addEventListener("status", (e) => {
      state.status = JSON.parse(e.data);
      render();
    });
    source.addEventListener("bus", (e) => onBus(JSON.parse(e.data)));
    source.addEventListener("problem", (e) => notice(JSON.parse(e.data).error));
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) {
        setConnection("offline");
        recover();
      } else {
        setConnection("reconnecting", "reconnecting…");
      }
    });
  }

  async function recover() {
    // The stream was refused: log in again if the login is gone, else retry in a while.
    const response = await fetch("/api/status?limit=0", { credentials: "same-origin" }).catch(() => null);
    if (response && response.status === 401) {
      location.assign("/login");
      return;
    }
    setTimeout(connect, 3000);
  }

  // -- actions -----------------------------------------------------------------------------
  async function post(path, body) {
    let response;
    try {
      response = await fetch(path, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body ?? {}),
      });
    } catch (err) {
      notice(`${path}: ${err}`);
      return null;
    }
    const data = await response.json().catch(() => null);
    if (response.status === 401) {
      location.assign("/login");
      return null;
    }
    if (!response.ok) {
      notice((data && data.error) || `${path}: HTTP ${response.status}`);
      return null;
    }
    return data;
  }

  async function setFrozen(frozen) {
    const data = await post(frozen ? "/api/freeze" : "/api/unfreeze");
    if (data && state.status) {
      state.status.frozen = data.frozen;
      render();
      notice(data.frozen ? "Dispatch frozen: running runs go on, nothing new starts." : "Dispatch unfrozen.");
    }
  }

  async function kill(runId) {
    if (!window.confirm(`Kill run ${runId}?`)) return;
    const data = await post("/api/kill", { run_id: runId });
    if (data) notice(`Run ${runId}: ${data.killed} killed, ${data.cancelled} cancelled.`);
  }

  async function loadLog(runId) {
    const response = await fetch(`/api/runs/${encodeURIComponent(runId)}/log`, { credentials: "same-origin" })
      .catch(() => null);
    if (runId !== state.selected) return;
    const data = response ? await response.json().catch(() => null) : null;
    if (!response || !response.ok || !data) {
      $("log-note").textContent = (data && data.error) || "cannot load the log";
      return;
    }
    const pre = $("log");
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    pre.textContent = data.log;
    $("log-note").textContent = data.problem
      || (data.truncated ? `the last ${data.log.length} characters of ${data.size} bytes` : `${data.size} bytes`);
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  }

  function select(runId) {
    state.selected = runId;
    $("log-section").hidden = false;
    $("log-run").textContent = runId;
    $("log").textContent = "";
    $("log-note").textContent = "loading…";
    render();
    loadLog(runId);
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("freeze").addEventListener("click", () => setFrozen(true));
    $("unfreeze").addEventListener("click", () => setFrozen(false));
    $("runs").addEventListener("click", (e) => {
      const button = e.target.closest("button.kill");
      if (button) {
        kill(button.dataset.runId);
        return;
      }
      const row = e.target.closest("tr[data-run-id]");
      if (row) select(row.dataset.runId);
    });
    setInterval(tick, 1000);
    connect();
  });
})();
