// Alerts (GET /api/v1/alerts, acknowledged by an operator with a reason) and
// datasets (GET /api/v1/datasets: last update and freshness).
import { api, canAct } from "./api.js";
import { askReason, h, span, toast, when } from "./dom.js";
import { filters, pagedTable, table } from "./lists.js";

const ALERT_STATES = ["pending", "delivered", "undelivered", "unacked"];
const DELIVERY_GLYPH = { pending: "…", delivered: "✓", undelivered: "✗" };
const FRESHNESS_GLYPH = { fresh: "✓", stale: "⚠", never: "○" };

function ackCell(a, reload) {
  if (a.acked_at) return h("span", { title: a.ack_reason || "" }, `✓ acked by ${a.acked_by} ${when(a.acked_at)}`, a.ack_reason ? ` — ${a.ack_reason}` : "");
  if (!a.require_ack) return h("span", { class: "muted" }, "not required");
  if (!canAct()) return "⚠ waiting for an acknowledgement";
  return h("button", { class: "primary", "data-ack": a.id, onclick: async () => {
    const reason = await askReason(`acknowledge alert ${a.id} (${a.rule})`);
    if (reason === null) return;
    try {
      await api(`/alerts/${a.id}/ack`, { method: "POST", body: { reason } });
      toast(`alert ${a.id} acknowledged`);
      reload();
    } catch (err) { toast(`acknowledge refused: ${err.message}`); }
  } }, "Acknowledge");
}

export async function alertsPage(main) {
  let query = new URLSearchParams();
  const reload = () => list.load(query).catch((err) => toast(err.message));
  const list = pagedTable("/alerts", ["Id", "Raised", "Rule", "Workflow", "Run or dataset", "What", "Delivery", "Acknowledged"], (a) => h("tr", { "data-alert": a.id },
    h("td", {}, `#${a.id}`), h("td", {}, when(a.created_at)), h("td", {}, `${a.rule} (${a.kind})`), h("td", {}, a.workflow),
    a.run_id === null ? h("td", { class: "dataset" }, a.dataset)
      : h("td", {}, h("a", { href: `#/runs/${a.run_id}` }, `#${a.run_id}`), a.task_id ? ` ${a.task_id}` : ""),
    h("td", { class: a.error ? "error" : "" }, a.error || a.detail || ""),
    h("td", { class: "alert-state" }, `${DELIVERY_GLYPH[a.state] || ""} ${a.state}`,
      a.deliveries.filter((d) => d.last_error).map((d) => h("div", { class: "error" }, `${d.route}: ${d.last_error}`))),
    h("td", {}, ackCell(a, reload))));
  main.replaceChildren(h("h1", {}, "Alerts"),
    filters([["workflow", "Workflow"], ["state", "State", ALERT_STATES]], (q) => { query = q; reload(); }),
    list.element);
  await list.load();
}

export async function datasetsPage(main) {
  const page = await api("/datasets");
  main.replaceChildren(h("h1", {}, "Datasets"), page.items.length
    ? table(["Dataset", "Last update", "Updates", "Freshness", "Produced by", "Consumed by"], page.items.map((d) => h("tr", {},
      h("td", {}, d.uri), h("td", {}, d.last_update ? when(d.last_update) : "never"), h("td", {}, d.updates),
      h("td", {}, d.freshness ? `${FRESHNESS_GLYPH[d.freshness] || ""} ${d.freshness}${d.fresh_within_s ? ` (within ${span(d.fresh_within_s)})` : ""}` : "—"),
      h("td", {}, d.producers.join(", ") || "—"), h("td", {}, d.consumers.join(", ") || "—"))))
    : h("p", { class: "muted" }, "No dataset is declared or updated yet."));
}
