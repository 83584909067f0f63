// Events, dead letters and the audit log: filterable tables over the API.
import { api, canAct } from "./api.js";
import { askReason, h, toast, when } from "./dom.js";

function filters(fields, onApply) {
  const inputs = fields.map(([name, label]) => h("input", { name, id: `f-${name}`, "aria-label": label }));
  const form = h("form", { class: "filters", onsubmit: (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    for (const i of inputs) if (i.value.trim()) q.set(i.name, i.value.trim());
    onApply(q);
  } }, fields.map(([, label], n) => h("label", { for: inputs[n].id }, label, inputs[n])), h("button", { type: "submit" }, "Filter"));
  return form;
}

function table(head, rows) {
  return h("table", {}, h("thead", {}, h("tr", {}, head.map((t) => h("th", { scope: "col" }, t)))), h("tbody", {}, rows));
}

export async function auditPage(main) {
  const box = h("div");
  const load = async (q = new URLSearchParams()) => {
    const page = await api(`/audit?${q}`);
    box.replaceChildren(table(["When", "Who", "Action", "Workflow", "Run", "Task", "Reason"], page.entries.map((e) => h("tr", {},
      h("td", {}, when(e.at)), h("td", {}, e.actor), h("td", {}, e.action), h("td", {}, e.workflow || ""),
      h("td", {}, e.run_id ? h("a", { href: `#/runs/${e.run_id}` }, `#${e.run_id}`) : ""), h("td", {}, e.task_id || ""), h("td", {}, e.reason || "")))));
  };
  main.replaceChildren(h("h1", {}, "Audit"), filters([["workflow", "Workflow"], ["action", "Action"], ["run", "Run id"]], (q) => load(q).catch((err) => toast(err.message))), box);
  await load();
}

export async function deadLettersPage(main) {
  const box = h("div");
  const detail = h("section", { class: "panel", "aria-live": "polite" }, h("p", { class: "muted" }, "Choose a dead letter to see its payload."));
  const load = async (q = new URLSearchParams()) => {
    const page = await api(`/dead-letters?${q}`);
    box.replaceChildren(table(["Id", "Received", "Source", "Channel", "Workflow", "Error", "Redriven"], page.dead_letters.map((d) => h("tr", {},
      h("td", {}, h("button", { onclick: () => show(d.id) }, `#${d.id}`)), h("td", {}, when(d.received_at)), h("td", {}, d.source),
      h("td", {}, d.channel), h("td", {}, d.workflow || ""), h("td", { class: "error" }, d.error),
      h("td", {}, d.redriven_at ? `${when(d.redriven_at)} by ${d.redriven_by}` : "no")))));
  };
  const show = async (id) => {
    const d = await api(`/dead-letters/${id}`);
    detail.replaceChildren(...[h("h2", {}, `Dead letter #${id}`), h("p", { class: "error" }, d.error),
      h("h3", {}, "Payload"), h("pre", {}, typeof d.payload === "string" ? d.payload : JSON.stringify(d.payload, null, 2)),
      h("h3", {}, "Headers (secrets masked)"), h("pre", {}, JSON.stringify(d.headers, null, 2)),
      canAct() && !d.redriven_at ? h("button", { class: "primary", onclick: async () => {
        const reason = await askReason(`redrive dead letter ${id}`);
        if (reason === null) return;
        try {
          const done = await api("/dead-letters/redrive", { method: "POST", body: { ids: [id], reason } });
          toast(done.redriven[0].message); load(); show(id);
        } catch (err) { toast(`redrive refused: ${err.message}`); }
      } }, "Redrive") : null].filter(Boolean));
  };
  main.replaceChildren(h("h1", {}, "Dead letters"), filters([["source", "Source"], ["workflow", "Workflow"]], (q) => load(q).catch((err) => toast(err.message))),
    h("div", { class: "cols" }, box, detail));
  await load();
}

export async function eventsPage(main) {
  // GET /api/v1/events answers {"items": [...], "next": url-or-null}.
  const box = h("div");
  const load = async (q = new URLSearchParams()) => {
    const page = await api(`/events?${q}`);
    box.replaceChildren(table(["Id", "Received", "Source", "Channel", "Runs started", "Payload"], page.items.map((e) => h("tr", {},
      h("td", {}, e.id), h("td", {}, when(e.received_at)), h("td", {}, e.source), h("td", {}, e.channel || ""),
      h("td", {}, (e.run_ids || []).map((id) => h("a", { href: `#/runs/${id}` }, `#${id} `))),
      h("td", {}, h("details", {}, h("summary", {}, "show"), h("pre", {}, JSON.stringify(e.payload, null, 2))))))));
  };
  main.replaceChildren(h("h1", {}, "Events"), filters([["source", "Source"], ["workflow", "Workflow"]], (q) => load(q).catch((err) => toast(err.message))), box);
  try { await load(); } catch (err) { box.replaceChildren(h("p", { class: "error" }, `Events are not available: ${err.message}`)); }
}
