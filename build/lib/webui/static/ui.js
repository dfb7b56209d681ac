// Small DOM helpers shared by the page's modules: lookup, icons, announcements, formats.

export const $ = (sel, root = document) => root.querySelector(sel);

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== false && v !== null && v !== undefined) node.setAttribute(k, v === true ? "" : v);
  }
  node.append(...children);
  return node;
}

// Inline SVG, not emoji: emoji render as empty boxes where no emoji font is installed.
const PATHS = {
  queued: "M8 1.5a6.5 6.5 0 1 0 0 13 6.5 6.5 0 0 0 0-13zM8 4v4.2l2.8 1.7",
  waiting: "M8 1.5a6.5 6.5 0 1 0 0 13 6.5 6.5 0 0 0 0-13zM8 4v4.2l2.8 1.7",
  uploading: "M8 13V3M3.5 7.5 8 3l4.5 4.5",
  processing: "M8 1.5v3M8 11.5v3M1.5 8h3M11.5 8h3M3.4 3.4l2.1 2.1M10.5 10.5l2.1 2.1M3.4 12.6l2.1-2.1M10.5 5.5l2.1-2.1",
  done: "M2.5 8.5 6.5 12.5 13.5 4",
  failed: "M3.5 3.5l9 9M12.5 3.5l-9 9",
  rejected: "M8 1.5a6.5 6.5 0 1 0 0 13 6.5 6.5 0 0 0 0-13zM3.4 3.4l9.2 9.2",
  shared: "M5 8a2 2 0 1 1-4 0 2 2 0 0 1 4 0zM15 3.5a2 2 0 1 1-4 0 2 2 0 0 1 4 0zM15 12.5a2 2 0 1 1-4 0 2 2 0 0 1 4 0zM4.8 7l6.4-2.6M4.8 9l6.4 2.6",
};

export function icon(name) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 16 16");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("focusable", "false");
  svg.classList.add("icon");
  const path = document.createElementNS(ns, "path");
  path.setAttribute("d", PATHS[name] || PATHS.queued);
  svg.append(path);
  return svg;
}

export const STATUS_LABELS = {
  waiting: "Waiting to upload", uploading: "Uploading", queued: "Queued", processing: "Processing",
  done: "Done", failed: "Failed", rejected: "Not uploaded",
};

// A status badge: icon plus words, never colour alone.
export function badge(status, label) {
  const s = el("span", { class: `state state-${status}` }, icon(status));
  s.append(label || STATUS_LABELS[status] || status);
  return s;
}

let announceTimer = null;
// Say it in the live region; cleared first so the same words are announced again.
export function announce(message) {
  const region = $("#announcer");
  region.textContent = "";
  clearTimeout(announceTimer);
  announceTimer = setTimeout(() => { region.textContent = message; }, 50);
}

export function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

export function formatDuration(ms) {
  const s = Math.round(ms / 1000);
  if (s < 60) return `${Math.max(s, 1)} s`;
  if (s < 3600) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

export const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
