// Intake events: the list (GET /api/v1/events, filtered, paged), one event,
// and the part of the run page that says which event started the run.
// Payloads and headers are shown as text; the API masks credential headers.
import { api } from "./api.js";
import { h, toast, when } from "./dom.js";
import { filters, pagedTable } from "./lists.js";

const STATUSES = ["started", "recorded", "buffered", "dropped", "dead_lettered"];
const STATUS_GLYPH = { started: "▶", recorded: "•", buffered: "⏸", dropped: "⊘", dead_lettered: "☠" };

export function statusText(status) { return `${STATUS_GLYPH[status] || ""} ${status}`; }

export function runLinks(ids) {
  return (ids || []).length ? ids.map((id) => [h("a", { href: `#/runs/${id}` }, `#${id}`), " "]) : "none";
}

/** One event with everything the API gives: what it did, payload, headers, meta. */
export function eventView(e) {
  return h("div", { class: "event", "data-event": e.id },
    h("dl", { class: "facts" },
      h("dt", {}, "Source"), h("dd", {}, e.source),
      h("dt", {}, "Channel"), h("dd", {}, e.channel),
      h("dt", {}, "Received"), h("dd", {}, when(e.received_at)),
      h("dt", {}, "Status"), h("dd", {}, statusText(e.status), e.reason ? ` — ${e.reason}` : ""),
      h("dt", {}, "Runs started"), h("dd", {}, runLinks(e.run_ids)),
      h("dt", {}, "Recorded by"), h("dd", {}, e.actor),
      e.redeliveries ? [h("dt", {}, "Redelivered"), h("dd", {}, `${e.redeliveries} times, last ${when(e.last_redelivered_at)}`)] : null),
    h("h3", {}, "Payload"), h("pre", { class: "payload" }, typeof e.payload === "string" ? e.payload : JSON.stringify(e.payload, null, 2)),
    h("h3", {}, "Headers (credentials masked)"), h("pre", { class: "headers" }, JSON.stringify(e.headers || {}, null, 2)),
    Object.keys(e.meta || {}).length ? [h("h3", {}, "Meta"), h("pre", {}, JSON.stringify(e.meta, null, 2))] : null);
}

export async function eventsPage(main) {
  const detail = h("section", { class: "panel", "aria-live": "polite" }, h("p", { class: "muted" }, "Choose an event to see its payload and headers."));
  const show = async (id) => {
    try {
      detail.replaceChildren(h("h2", {}, `Event #${id}`), eventView(await api(`/events/${id}`)));
    } catch (err) { toast(err.message); }
  };
  const list = pagedTable("/events", ["Id", "Received", "Source", "Channel", "Status", "Runs started"], (e) => h("tr", {},
    h("td", {}, h("button", { onclick: () => show(e.id), "aria-label": `event ${e.id}` }, `#${e.id}`)), h("td", {}, when(e.received_at)),
    h("td", {}, e.source), h("td", {}, e.channel), h("td", { title: e.reason || "" }, statusText(e.status)), h("td", {}, runLinks(e.run_ids))));
  main.replaceChildren(h("h1", {}, "Events"),
    filters([["source", "Source"], ["workflow", "Workflow"], ["status", "Status", STATUSES]], (q) => list.load(q).catch((err) => toast(err.message))),
    h("div", { class: "cols" }, list.element, detail));
  await list.load();
}

export async function eventPage(main, id) {
  const e = await api(`/events/${id}`);
  main.replaceChildren(h("h1", {}, `Event #${id}`), eventView(e));
}

/** What started a run: its event, and the dataset updates when a dataset triggered it. */
export async function startedBy(run) {
  const box = h("section", { id: "started-by", "aria-label": "what started this run" }, h("h2", {}, "Started by"));
  if (run.event_id === null || run.event_id === undefined) {
    box.append(h("p", { class: "muted" }, "No event is recorded for this run."));
  } else {
    try {
      const e = await api(`/events/${run.event_id}`);
      box.append(h("p", { id: "started-by-event" }, h("a", { href: `#/events/${e.id}` }, `Event #${e.id}`),
        ` · ${e.source} · ${e.channel} · received ${when(e.received_at)}`),
      h("details", {}, h("summary", {}, "Payload and headers"), eventView(e)));
    } catch (err) {
      box.append(h("p", { class: "muted" }, `Event #${run.event_id} is not available (${err.message}); retention may have pruned it.`));
    }
  }
  try {
    const datasets = await api(`/runs/${run.id}/datasets`);
    if (datasets.caused_by.length) {
      box.append(h("h3", {}, "Dataset updates that started it"), h("table", {},
        h("thead", {}, h("tr", {}, ["Dataset", "Logical date", "By", "Recorded"].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, datasets.caused_by.map((u) => h("tr", {}, h("td", {}, u.uri), h("td", {}, u.logical_date || ""),
          h("td", {}, u.run_id ? [h("a", { href: `#/runs/${u.run_id}` }, `#${u.run_id}`), ` ${u.task_id || ""}`] : (u.workflow || "")),
          h("td", {}, when(u.recorded_at)))))));
    }
  } catch { /* a server without datasets: nothing to show */ }
  return box;
}
