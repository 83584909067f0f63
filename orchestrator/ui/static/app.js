// The single page: a router over location.hash and the workflow pages.
import { api, canAct, follow, loadSession, session, signIn, signOut, whenUnauthorized } from "./api.js";
import { GLYPH, askReason, h, toast, when } from "./dom.js";
import { drawGraph } from "./graph.js";
import { runPage } from "./run.js";
import { auditPage, deadLettersPage } from "./lists.js";
import { eventPage, eventsPage } from "./events.js";
import { alertsPage, datasetsPage } from "./alerts.js";

const main = document.getElementById("main");
let leave = () => {};   // stops the current page's live updates

const ROUTES = [
  [/^#?\/?$/, () => workflowsPage()],
  [/^#\/workflows\/([^/]+)$/, (m) => workflowPage(decodeURIComponent(m[1]))],
  [/^#\/runs\/(\d+)$/, (m) => runPage(main, Number(m[1]))],
  [/^#\/audit$/, () => auditPage(main)],
  [/^#\/dead-letters$/, () => deadLettersPage(main)],
  [/^#\/events$/, () => eventsPage(main)],
  [/^#\/events\/(\d+)$/, (m) => eventPage(main, Number(m[1]))],
  [/^#\/alerts$/, () => alertsPage(main)],
  [/^#\/datasets$/, () => datasetsPage(main)],
];

async function route() {
  leave();
  leave = () => {};
  if (!session.role) return signInPage();
  for (const [pattern, page] of ROUTES) {
    const m = location.hash.match(pattern);
    if (m) {
      main.replaceChildren(h("p", {}, "Loading…"));
      try {
        leave = (await page(m)) || (() => {});
      } catch (err) {
        main.replaceChildren(h("p", { class: "error", role: "alert" }, `Could not load: ${err.message}`));
      }
      main.focus();
      return;
    }
  }
  main.replaceChildren(h("p", {}, "No such page. "), h("a", { href: "#/" }, "Workflows"));
}

function showWho() {
  const who = document.getElementById("who");
  who.replaceChildren();
  if (session.signedIn) {
    who.append(`${session.name} (${session.role}) `, h("button", { onclick: async () => { await signOut(); route(); showWho(); } }, "Sign out"));
  } else if (session.open) {
    who.append("open API (loopback): no sign-in needed");
  }
}

function signInPage() {
  const input = h("input", { id: "token", type: "password", autocomplete: "off", required: true, "aria-describedby": "token-help" });
  const error = h("p", { class: "error", role: "alert" });
  const form = h("form", { class: "signin", onsubmit: async (e) => {
    e.preventDefault();
    try {
      await signIn(input.value.trim());
      showWho();
      route();
    } catch (err) { error.textContent = err.message; }
  } },
  h("h1", {}, "Sign in"),
  h("label", { for: "token" }, "API token"), input,
  h("p", { id: "token-help", class: "muted" }, "orchestrator tokens create NAME --role operator makes one."),
  h("button", { class: "primary", type: "submit" }, "Sign in"), error);
  main.replaceChildren(form);
  input.focus();
}

// -- workflow list ------------------------------------------------------------------

const SOURCE_ICON = { kafka: "⇶", webhook: "⚓", file: "📂", schedule: "⏰", dataset: "▦" };

function triggerBadges(workflow) {
  return workflow.triggers.map((t) => {
    const source = t.split(" ")[0];
    const text = `${SOURCE_ICON[source] || "•"} ${t}`;
    const next = source === "schedule" && workflow.next_schedule ? ` (next ${when(workflow.next_schedule)})` : "";
    return h("span", { class: "badge", title: source }, text + next);
  });
}

function squares(runs) {
  return h("div", { class: "squares", "aria-label": "recent runs" }, [...runs].reverse().map((r) =>
    h("a", { class: `sq st-${r.state}`, href: `#/runs/${r.id}`, title: `run ${r.id}: ${r.state}`, "aria-label": `run ${r.id} ${r.state}` }, GLYPH[r.state] || "")));
}

function pauseSwitch(workflow) {
  if (!canAct()) return h("span", {}, workflow.paused ? "⏸ paused" : "▶ active");
  return h("button", {
    class: "switch", role: "switch", "aria-checked": String(workflow.paused), "data-workflow": workflow.name,
    "aria-label": `${workflow.name} paused`,
    onclick: async () => {
      const action = workflow.paused ? "unpause" : "pause";
      const reason = await askReason(`${action} workflow ${workflow.name}`);
      if (reason === null) return;
      try {
        await api(`/workflows/${encodeURIComponent(workflow.name)}/${action}`, { method: "POST", body: { reason } });
        toast(`${workflow.name}: ${action}d`);
      } catch (err) { toast(`${action} refused: ${err.message}`); }
    },
  }, workflow.paused ? "⏸ paused" : "▶ active");
}

function workflowsPage() {
  const body = h("tbody");
  main.replaceChildren(h("h1", {}, "Workflows"), h("table", {},
    h("thead", {}, h("tr", {}, ["Workflow", "Owner", "Tags", "Triggers", "Paused", "Buffered", "Last 20 runs"].map((t) => h("th", { scope: "col" }, t)))),
    body));
  return follow("workflows=1", (message) => {
    body.replaceChildren(...message.workflows.map((w) => h("tr", { "data-workflow": w.name },
      h("td", {}, h("a", { href: `#/workflows/${encodeURIComponent(w.name)}` }, w.name), h("div", { class: "muted" }, w.description)),
      h("td", {}, w.owner || ""),
      h("td", {}, w.tags.map((t) => h("span", { class: "badge" }, t))),
      h("td", {}, triggerBadges(w)),
      h("td", {}, pauseSwitch(w), w.paused && w.pause_reason ? h("div", { class: "muted" }, w.pause_reason) : null),
      h("td", { class: "buffered", "data-buffered": w.buffered }, w.paused || w.buffered ? `${w.buffered} buffered` : "", w.dropped ? ` · ${w.dropped} dropped` : ""),
      h("td", {}, squares(w.recent)),
    )));
  });
}

// -- one workflow ------------------------------------------------------------------

function paramInput(p) {
  const id = `param-${p.name}`;
  let input;
  if (p.enum) {
    input = h("select", { id, name: p.name }, p.enum.map((v) => h("option", { value: JSON.stringify(v), selected: v === p.default }, String(v))));
  } else if (p.type === "boolean") {
    input = h("input", { id, name: p.name, type: "checkbox", checked: p.default === true });
  } else {
    const type = p.type === "integer" || p.type === "number" ? "number" : p.format === "date" ? "date" : "text";
    const value = p.default === null || p.default === undefined ? "" : typeof p.default === "object" ? JSON.stringify(p.default) : String(p.default);
    input = h("input", { id, name: p.name, type, value, required: p.required, min: p.minimum, max: p.maximum, step: p.type === "number" ? "any" : undefined });
  }
  return [h("label", { for: id }, p.name, p.required ? " *" : "", p.description ? h("span", { class: "muted" }, ` — ${p.description}`) : null), input];
}

function readParam(p, input) {
  if (p.enum) return JSON.parse(input.value);
  if (p.type === "boolean") return input.checked;
  if (input.value === "") return undefined;
  if (p.type === "integer") return parseInt(input.value, 10);
  if (p.type === "number") return Number(input.value);
  if (p.type === "array" || p.type === "object" || p.type === null) {
    try { return JSON.parse(input.value); } catch { return input.value; }
  }
  return input.value;
}

async function workflowPage(name) {
  const path = `/workflows/${encodeURIComponent(name)}`;
  const [workflow, graph, versions, runs] = await Promise.all([
    api(path), api(`${path}/graph`), api(`${path}/versions`), api(`/runs?workflow=${encodeURIComponent(name)}&limit=20`),
  ]);
  let stop = () => {};
  const runStatus = h("p", { id: "selected-run", "aria-live": "polite" });
  const picture = drawGraph(graph, { onSelect: (task) => { if (selected) location.hash = `#/runs/${selected}`; else toast(task); } });
  let selected = null;
  const select = (runId) => {
    stop();
    picture.clear();
    selected = runId;
    if (!runId) { runStatus.textContent = "No run yet."; return; }
    runStatus.replaceChildren("Showing run ", h("a", { href: `#/runs/${runId}` }, `#${runId}`), " ", h("span", { id: "run-state" }, ""));
    stop = follow(`run=${runId}`, (m) => {
      for (const t of m.tasks) picture.paint(t.task_id, t.state, t.attempt);
      if (m.run) document.getElementById("run-state").textContent = `${GLYPH[m.run.state] || ""} ${m.run.state}`;
    });
  };
  const form = h("form", { class: "params", onsubmit: async (e) => {
    e.preventDefault();
    const params = {};
    for (const p of graph.params) {
      const value = readParam(p, form.elements[p.name]);
      if (value !== undefined) params[p.name] = value;
    }
    try {
      const started = await api(`${path}/runs`, { method: "POST", body: { params } });
      if (started.paused) toast(`${name} is paused: the run starts at unpause`);
      else { toast(`started run ${started.run_ids.join(", ")}`); select(started.run_ids[0]); }
    } catch (err) { toast(`trigger refused: ${err.message}`); }
  } }, graph.params.map(paramInput), h("p", {}, h("button", { class: "primary", type: "submit" }, "Trigger run")));
  main.replaceChildren(
    h("h1", {}, name, workflow.paused ? " ⏸ paused" : ""),
    h("p", { class: "muted" }, workflow.description, workflow.owner ? ` · owner ${workflow.owner}` : "", ` · version ${graph.version} · on pause: ${graph.on_pause}`),
    h("div", { class: "cols" },
      h("section", { "aria-label": "graph" }, runStatus, picture.element,
        h("h2", {}, "Recent runs"),
        h("table", {}, h("tbody", {}, runs.items.map((r) => h("tr", {},
          h("td", {}, h("a", { href: `#/runs/${r.id}` }, `#${r.id}`)),
          h("td", {}, `${GLYPH[r.state] || ""} ${r.state}`), h("td", {}, when(r.created_at)), h("td", {}, r.actor),
          h("td", {}, h("button", { onclick: () => select(r.id) }, "show on graph"))))))),
      h("aside", {},
        canAct() ? h("section", { class: "panel" }, h("h2", {}, "Trigger"), form) : null,
        h("section", { class: "panel" }, h("h2", {}, "Triggers"),
          graph.triggers.length ? h("ul", {}, graph.triggers.map((t) => h("li", {}, `${SOURCE_ICON[t.source] || "•"} ${t.source} ${t.target}`, t.next ? ` — next ${when(t.next)}` : ""))) : h("p", { class: "muted" }, "manual only")),
        h("section", { class: "panel" }, h("h2", {}, "Versions"),
          h("table", {}, h("tbody", {}, versions.items.map((v) => h("tr", {},
            h("td", {}, h("code", {}, v.version), v.current ? " (current)" : ""), h("td", {}, when(v.created_at)),
            h("td", {}, Object.entries(v.runs).map(([s, n]) => `${n} ${s}`).join(", ") || "no runs")))))))));
  select(runs.items.length ? runs.items[0].id : null);
  return () => stop();
}

whenUnauthorized(() => { session.role = null; session.signedIn = false; showWho(); signInPage(); });
window.addEventListener("hashchange", route);
loadSession().then(() => { showWho(); route(); }, (err) => { main.textContent = `Cannot reach the API: ${err.message}`; });
