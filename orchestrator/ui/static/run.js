// One run: graph, timeline, transition log, waits and the task panel, kept
// current by the run's server-sent events.
import { api, canAct, follow } from "./api.js";
import { GLYPH, askReason, h, toast, when } from "./dom.js";
import { drawGraph } from "./graph.js";
import { startedBy } from "./events.js";

const ENDED = new Set(["success", "failed", "cancelled"]);

export async function runPage(main, runId) {
  const run = await api(`/runs/${runId}`);
  const graph = await api(`/workflows/${encodeURIComponent(run.workflow)}/graph?version=${encodeURIComponent(run.version)}`);
  const tasks = Object.fromEntries(run.tasks.map((t) => [t.task_id, t]));
  const steps = new Map(run.transitions.map((s) => [s.id, s]));
  let current = null;      // the task the panel shows
  let stopLog = () => {};
  const picture = drawGraph(graph, { onSelect: (task) => openTask(task) });
  const header = h("div");
  const timeline = h("div", { class: "gantt", role: "img", "aria-label": "timeline of attempts" });
  const log = h("tbody");
  const waits = h("div");
  const panel = h("section", { class: "panel", id: "task-panel", "aria-live": "polite" }, h("p", { class: "muted" }, "Choose a task on the graph (Tab, then Enter) to see its attempts and logs."));

  async function act(what, path, body) {
    const reason = await askReason(what);
    if (reason === null) return;
    try {
      await api(path, { method: "POST", body: { ...body, reason } });
      toast(`${what}: done`);
    } catch (err) { toast(`${what} refused: ${err.message}`); }
  }

  function drawHeader() {
    const actions = canAct() ? h("div", { class: "row-actions" },
      run.state === "success" ? null
        : h("button", { onclick: () => act(`clear the failed tasks of run ${runId}`, `/runs/${runId}/clear`, { failed_only: true }) }, "Clear failed"),
      ENDED.has(run.state) ? null : h("button", { class: "danger", onclick: () => act(`cancel run ${runId}`, `/runs/${runId}/cancel`, {}) }, "Cancel run")) : null;
    header.replaceChildren(...[
      h("h1", {}, `Run #${runId} `, h("span", { id: "run-state", "data-state": run.state }, `${GLYPH[run.state] || ""} ${run.state}`)),
      h("p", {}, "Workflow ", h("a", { href: `#/workflows/${encodeURIComponent(run.workflow)}` }, run.workflow),
        ` · version ${run.version} · started by ${run.actor} · created ${when(run.created_at)}`, run.ended_at ? ` · ended ${when(run.ended_at)}` : ""),
      h("details", {}, h("summary", {}, "Params"), h("pre", {}, JSON.stringify(run.params, null, 2))),
      actions].filter(Boolean));
  }

  function drawTimeline() {
    const bars = {};
    const open = {};
    const ordered = [...steps.values()].filter((s) => s.task_id).sort((a, b) => a.id - b.id);
    for (const s of ordered) {
      const at = Date.parse(s.at);
      const o = open[s.task_id];
      if (o) { o.end = at; delete open[s.task_id]; }
      if (s.to_state === "running" || s.to_state === "deferred") {
        const bar = { state: s.to_state, start: at, end: null, attempt: s.attempt };
        (bars[s.task_id] ||= []).push(bar);
        open[s.task_id] = bar;
      }
    }
    const now = Date.now();
    const t0 = Date.parse(run.created_at);
    const t1 = Math.max(run.ended_at ? Date.parse(run.ended_at) : now, t0 + 1);
    timeline.replaceChildren(...graph.nodes.map((n) => h("div", { class: "row" },
      h("span", { class: "label" }, n.id),
      h("div", { class: "track" }, (bars[n.id] || []).map((b) => {
        const end = b.end ?? (ENDED.has(run.state) ? t1 : now);
        const final = b.state === "running" ? (tasks[n.id] && b.attempt === tasks[n.id].attempt ? tasks[n.id].state : "failed") : b.state;
        const left = ((b.start - t0) / (t1 - t0)) * 100, width = Math.max(((end - b.start) / (t1 - t0)) * 100, 0.3);
        return h("div", { class: `bar st-${final}`, style: `left:${left}%;width:${width}%`,
          title: `${n.id} attempt ${b.attempt}: ${b.state} ${((end - b.start) / 1000).toFixed(2)}s` });
      })))));
  }

  function drawLog() {
    log.replaceChildren(...[...steps.values()].sort((a, b) => a.id - b.id).map((s) => h("tr", {},
      h("td", {}, when(s.at)), h("td", {}, s.task_id || "(run)"), h("td", {}, `${s.from_state || "—"} → ${s.to_state}`),
      h("td", {}, s.attempt ?? ""), h("td", {}, s.actor), h("td", {}, s.reason || ""))));
  }

  function drawWaits() {
    const deferred = Object.values(tasks).filter((t) => t.state === "deferred");
    const open = (run.waits || []).filter((w) => w.state === "waiting");
    waits.replaceChildren(deferred.length || open.length ? h("table", {}, h("thead", {}, h("tr", {}, ["Task", "Waits for", "Wakes", "Until"].map((t) => h("th", {}, t)))),
      h("tbody", {}, open.map((w) => h("tr", {}, h("td", {}, w.task_id), h("td", {}, `${w.kind}: ${w.description}`), h("td", {}, when(w.wake_at)), h("td", {}, `${when(w.timeout_at)} (then ${w.on_timeout})`)))))
      : h("p", { class: "muted" }, "No task is waiting."));
  }

  function paintAll() { for (const t of Object.values(tasks)) picture.paint(t.task_id, t.state, t.attempt); }

  function attemptsOf(taskId) {
    const attempts = [];
    for (const s of [...steps.values()].sort((a, b) => a.id - b.id)) {
      if (s.task_id !== taskId || !s.attempt) continue;
      let a = attempts.find((x) => x.n === s.attempt);
      if (!a) attempts.push(a = { n: s.attempt, steps: [] });
      a.steps.push(s);
    }
    return attempts;
  }

  let facts = null;        // the task panel's state, attempts, error and output
  function drawFacts() {
    if (!facts || !current) return;
    const t = tasks[current];
    const node = graph.nodes.find((n) => n.id === current);
    facts.replaceChildren(...[
      h("p", {}, h("span", { id: "task-state" }, `${GLYPH[t.state] || ""} ${t.state}`), ` · attempt ${t.attempt} · handler ${t.handler} · pool ${t.pool}`,
        node ? ` · trigger rule ${node.trigger_rule}` : ""),
      h("h3", {}, "Attempts"),
      h("ol", {}, attemptsOf(current).map((a) => h("li", {}, a.steps.map((s) => `${s.to_state} ${when(s.at)}`).join(" → "),
        a.steps.filter((s) => s.reason && ["failed", "up_for_retry", "dead_lettered"].includes(s.to_state)).map((s) => h("div", { class: "error" }, s.reason))))),
      t.error ? h("div", {}, h("h3", {}, "Error"), h("pre", { class: "error", id: "task-error" }, t.error)) : null,
      t.state === "success" && t.output !== null && t.output !== undefined ? h("div", {}, h("h3", {}, "Output"), h("pre", { id: "task-output" }, JSON.stringify(t.output, null, 2))) : null,
    ].filter(Boolean));
  }

  // The live stream carries states, not errors or outputs: when the open
  // task's state changes, read the run again for them. One read at a time; a
  // change during a read asks for one more read after it.
  let reading = false, again = false;
  async function rereadCurrent() {
    if (reading) { again = true; return; }
    reading = true;
    try {
      do {
        again = false;
        const fresh = await api(`/runs/${runId}`);
        for (const t of fresh.tasks) tasks[t.task_id] = { ...(tasks[t.task_id] || {}), ...t };
        drawFacts();
      } while (again);
    } catch { /* the next change tries again */ } finally { reading = false; }
  }

  async function openTask(taskId) {
    current = taskId;
    stopLog();
    const t = tasks[taskId];
    const node = graph.nodes.find((n) => n.id === taskId);
    const attempts = attemptsOf(taskId);
    const logBox = h("pre", { class: "log", id: "task-log", tabindex: 0, "aria-label": "attempt log" }, "");
    const pick = h("select", { id: "attempt-pick", "aria-label": "attempt", onchange: () => showLog(Number(pick.value)) },
      (attempts.length ? attempts : [{ n: t.attempt || 1 }]).map((a) => h("option", { value: a.n, selected: a.n === t.attempt }, `attempt ${a.n}`)));
    const actions = canAct() ? h("div", { class: "row-actions" },
      h("button", { onclick: () => act(`clear task ${taskId}`, `/runs/${runId}/clear`, { tasks: [taskId] }) }, "Clear this task"),
      h("button", { onclick: () => act(`clear ${taskId} and downstream`, `/runs/${runId}/clear`, { tasks: [taskId], downstream: true }) }, "Clear with downstream"),
      ["success", "failed", "skipped"].map((state) => h("button", { onclick: () => act(`mark ${taskId} ${state}`, `/runs/${runId}/tasks/${encodeURIComponent(taskId)}/mark`, { state }) }, `Mark ${state}`))) : null;
    facts = h("div", { id: "task-facts" });
    drawFacts();
    panel.replaceChildren(...[
      h("h2", {}, `Task ${taskId}`),
      actions,
      facts,
      // The spec's inputs as written: templates, never rendered, so no secret value shows.
      node && Object.keys(node.inputs || {}).length ? h("details", { id: "task-inputs" }, h("summary", {}, "Inputs (as declared)"), h("pre", {}, JSON.stringify(node.inputs, null, 2))) : null,
      h("h3", {}, "Log ", pick), logBox].filter(Boolean));

    async function showLog(attempt) {
      stopLog();
      let after = 0, stopped = false, timer = null;
      logBox.replaceChildren();
      stopLog = () => { stopped = true; clearTimeout(timer); };
      const more = async () => {
        try {
          const page = await api(`/runs/${runId}/tasks/${encodeURIComponent(taskId)}/logs?attempt=${attempt}&after=${after}`);
          if (stopped) return;
          for (const line of page.lines) logBox.append(h("span", { class: line.stream }, line.text.endsWith("\n") ? line.text : line.text + "\n"));
          after = page.next_after;
          if (!page.lines.length && !logBox.childNodes.length) logBox.textContent = page.running ? "(nothing logged yet)" : "(nothing logged)";
          if (page.running) timer = setTimeout(more, 1000);  // following a running attempt
        } catch (err) { logBox.textContent = `log unavailable: ${err.message}`; }
      };
      more();
    }
    showLog(Number(pick.value));
  }

  let scheduled = false;
  function redraw() {
    if (scheduled) return;
    scheduled = true;
    requestAnimationFrame(() => { scheduled = false; drawHeader(); drawTimeline(); drawLog(); drawWaits(); });
  }

  drawHeader(); paintAll(); drawTimeline(); drawLog(); drawWaits();
  const origin = await startedBy(run);
  main.replaceChildren(header, origin,
    h("div", { class: "cols" },
      h("section", { "aria-label": "graph and timeline" }, picture.element, h("h2", {}, "Timeline"), timeline,
        h("h2", {}, "Waiting"), waits,
        h("h2", {}, "Transitions"), h("table", {}, h("thead", {}, h("tr", {}, ["At", "Task", "Change", "Attempt", "Actor", "Reason"].map((t) => h("th", {}, t)))), log)),
      panel));
  const stop = follow(`run=${runId}`, (m) => {
    if (m.run) Object.assign(run, m.run);
    for (const t of m.tasks) {
      tasks[t.task_id] = { ...(tasks[t.task_id] || {}), ...t };
      picture.paint(t.task_id, t.state, t.attempt);
    }
    for (const s of m.transitions || []) steps.set(s.id, s);
    if (current && m.tasks.some((t) => t.task_id === current)) {
      drawFacts();
      rereadCurrent();
    }
    redraw();
  });
  return () => { stop(); stopLog(); };
}
