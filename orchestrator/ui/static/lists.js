// Dead letters and the audit log, and what every list page shares: filters
// and pages. Every list the API answers is {"items": [...], "next": url-or-null}.
import { api, canAct } from "./api.js";
import { askReason, h, toast, when } from "./dom.js";

/** A filter form; a field is [name, label] (a text box) or [name, label, choices] (a select). */
export function filters(fields, onApply) {
  const inputs = fields.map(([name, label, choices]) => choices
    ? h("select", { name, id: `f-${name}`, "aria-label": label }, h("option", { value: "" }, "any"), choices.map((c) => h("option", { value: c }, c)))
    : h("input", { name, id: `f-${name}`, "aria-label": label }));
  const form = h("form", { class: "filters", onsubmit: (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    for (const i of inputs) if (i.value.trim()) q.set(i.name, i.value.trim());
    onApply(q);
  } }, fields.map(([, label], n) => h("label", { for: inputs[n].id }, label, inputs[n])), h("button", { type: "submit" }, "Filter"));
  return form;
}

export function table(head, rows) {
  return h("table", {}, h("thead", {}, h("tr", {}, head.map((t) => h("th", { scope: "col" }, t)))), h("tbody", {}, rows));
}

export async function auditPage(main) {
  const box = h("div");
  const load = async (q = new URLSearchParams()) => {
    const page = await api(`/audit?${q}`);
    box.replaceChildren(table(["When", "Who", "Action", "Workflow", "Run", "Task", "Reason"], page.items.map((e) => h("tr", {},
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
    box.replaceChildren(table(["Id", "Received", "Source", "Channel", "Workflow", "Error", "Redriven"], page.items.map((d) => h("tr", {},
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

/**
 * A table over a paged list: `load(query)` reads the first page, "More" the
 * next (its URL comes from the answer). `row` turns an item into a <tr>.
 */
export function pagedTable(path, head, row) {
  const body = h("tbody");
  const more = h("button", { type: "button", hidden: true }, "More");
  const empty = h("p", { class: "muted", hidden: true }, "Nothing here.");
  let next = null;
  const show = (page, append) => {
    if (!append) body.replaceChildren();
    body.append(...page.items.map(row));
    next = page.next;
    more.hidden = !next;
    empty.hidden = body.childNodes.length > 0;
  };
  more.addEventListener("click", async () => {
    try { show(await api(next.replace(/^\/api\/v1/, "")), true); } catch (err) { toast(err.message); }
  });
  const element = h("div", {}, h("table", {}, h("thead", {}, h("tr", {}, head.map((t) => h("th", { scope: "col" }, t)))), body), empty, more);
  const load = async (q = new URLSearchParams()) => show(await api(`${path}?${q}`), false);
  return { element, load };
}
