// Draws a workflow's DAG as the server laid it out (GET /workflows/{name}/graph):
// nodes are focusable buttons, coloured and labelled by the state of the
// selected run; hovering (or focusing) shows handler, trigger rule and pool.
import { h, GLYPH } from "./dom.js";

export function drawGraph(graph, { onSelect } = {}) {
  const W = graph.node_width, H = graph.node_height;
  const where = Object.fromEntries(graph.nodes.map((n) => [n.id, n]));
  const svg = h("svg", { width: graph.width, height: graph.height, role: "group", "aria-label": `DAG of ${graph.workflow}` });
  for (const node of graph.nodes) {
    for (const up of node.upstream) {
      const a = where[up];
      const x1 = a.x + W, y1 = a.y + H / 2, x2 = node.x, y2 = node.y + H / 2, mid = (x1 + x2) / 2;
      svg.append(h("path", { class: "edge", d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2 - 4},${y2}` }));
      svg.append(h("path", { class: "edge", d: `M${x2 - 8},${y2 - 4} L${x2},${y2} L${x2 - 8},${y2 + 4}` }));
    }
  }
  const nodes = {};
  for (const node of graph.nodes) {
    const state = h("text", { class: "state", x: node.x + 8, y: node.y + H - 9 }, "");
    const tip = h("title", {}, "");
    const g = h("g", {
      class: "node", tabindex: 0, role: "button", "data-task": node.id,
      onclick: () => onSelect && onSelect(node.id),
      onkeydown: (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); onSelect && onSelect(node.id); } },
    }, tip, h("rect", { x: node.x, y: node.y, width: W, height: H }),
      h("text", { x: node.x + 8, y: node.y + 13 }, node.id.length > 22 ? node.id.slice(0, 21) + "…" : node.id), state);
    nodes[node.id] = { g, state, tip, node };
    setState(nodes[node.id], null);
    svg.append(g);
  }
  const box = h("div", { class: "graph" }, svg);
  return {
    element: box,
    /** Colour one task by its state (null: no run selected). */
    paint(taskId, taskState, attempt) {
      const entry = nodes[taskId];
      if (entry) setState(entry, taskState, attempt);
    },
    clear() { for (const entry of Object.values(nodes)) setState(entry, null); },
  };
}

function setState(entry, state, attempt) {
  const { g, state: label, tip, node } = entry;
  g.setAttribute("class", state ? `node st-${state}` : "node");
  g.setAttribute("data-state", state || "");
  label.textContent = state ? `${GLYPH[state] || ""} ${state}${attempt > 1 ? ` · attempt ${attempt}` : ""}` : node.handler;
  const about = `${node.id}: handler ${node.handler}, trigger rule ${node.trigger_rule}, pool ${node.pool}, ` +
    `priority ${node.priority}, up to ${node.max_attempts} attempts`;
  tip.textContent = state ? `${about} — ${state}` : about;
  g.setAttribute("aria-label", state ? `task ${node.id}, ${state}` : `task ${node.id}`);
}
