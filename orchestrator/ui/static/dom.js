// Building the page from data: text always goes in as text, never as HTML.
export function h(tag, attrs = {}, ...children) {
  const svg = ["svg", "g", "rect", "path", "text", "title", "line"].includes(tag);
  const el = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag) : document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.setAttribute("class", value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** A glyph per state, so state never rests on colour alone. */
export const GLYPH = {
  success: "✓", failed: "✗", dead_lettered: "☠", upstream_failed: "⊘", running: "▶", queued: "…",
  scheduled: "○", deferred: "⏳", up_for_retry: "↻", skipped: "↷", cancelled: "■", held: "⏸",
};

export function stateBadge(state) {
  return h("span", { class: `badge st-${state}`, style: "color:#fff" }, `${GLYPH[state] || "?"} ${state}`);
}

export function when(value) {
  if (!value) return "";
  const d = new Date(value);
  return d.toLocaleString(undefined, { hour12: false });
}

// A span of seconds as people write it in workflow files: 26h, 90m, 1d 2h, 45s.
export function span(seconds) {
  const units = [["d", 86400], ["h", 3600], ["m", 60], ["s", 1]];
  const parts = [];
  let left = Math.round(seconds);
  for (const [unit, size] of units) {
    if (left >= size && parts.length < 2) {
      // 26h stays 26h rather than 1d 2h: a day is written as hours below two days.
      if (unit === "d" && left < 2 * 86400) continue;
      parts.push(`${Math.floor(left / size)}${unit}`);
      left %= size;
    }
  }
  return parts.join(" ") || "0s";
}

export function toast(text) {
  const box = document.getElementById("toast");
  const item = h("div", {}, text);
  box.append(item);
  setTimeout(() => item.remove(), 5000);
}

/** Ask why, in the dialog; resolves to the reason, or null when cancelled. */
export function askReason(what) {
  const dialog = document.getElementById("reason-dialog");
  document.getElementById("reason-what").textContent = what;
  const text = document.getElementById("reason-text");
  text.value = "";
  dialog.showModal();
  text.focus();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      resolve(dialog.returnValue === "ok" && text.value.trim() ? text.value.trim() : null);
    }, { once: true });
  });
}
