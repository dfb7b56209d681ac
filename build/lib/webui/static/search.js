// Search results people can scan: grouped by file, a short snippet with the
// matching words marked (offsets from the server, which skips stop words), a
// plain-language relevance, "More" for the whole passage, "no close match".

import { api, state } from "./api.js";
import { $, announce, el, plural } from "./ui.js";

const STRENGTH = { strong: "Strong match", partial: "Partial match", weak: "Weak match" };
const WHY = { both: "has your words and their meaning", text: "has your words", vector: "similar in meaning" };
// Only for hits without server snippets (older servers): which words not to mark.
const STOP = new Set("a an and are as at be but by for from has have how i in is it its of on or that the this to was what when where which who why will with you your".split(" "));
let openDetails = () => {};

export function initSearch(h) {
  openDetails = h.openDetails;
  $("#search-form").addEventListener("submit", (e) => { e.preventDefault(); run(false); });
}

export function resetSearch() {
  $("#search-results").replaceChildren();
  $("#search-status").textContent = "";
}

async function run(includeWeak) {
  const query = $("#search-query").value.trim();
  if (!query) return;
  const scope = $("#search-scope").value;
  const where = scope ? `“${state.collections.find((c) => c.id === scope)?.name ?? "this collection"}”` : "your files";
  const request = { query, top_k: 10, group_by_file: true, include_weak: includeWeak };
  if (scope) request.collection_ids = [scope];
  // "Show loose matches" sits in the status line, which is about to be redrawn.
  const fromStatus = $("#search-status").contains(document.activeElement);
  status("Searching…");
  let data;
  try { data = await api("/search", { method: "POST", json: request }); }
  catch (err) { status(err.message); return; }
  const hits = data.hits || [];
  const groups = data.groups || groupByFile(hits);
  // Hits from a collection shared with you are someone else's files: no delete or retry.
  const readOnly = state.collections.some((c) => c.id === scope && c.role === "reader");
  $("#search-results").replaceChildren(...groups.map((g) => groupItem(g, query, readOnly)));
  if (hits.length && data.no_close_match) {
    status(`No close match in ${where}. Showing ${plural(hits.length, "loosely related passage")}.`);
  } else if (hits.length) {
    status(`${plural(hits.length, "passage")} in ${plural(groups.length, "file")} from ${where}.`);
  } else if (data.no_close_match || data.below_threshold > 0) {
    const more = el("button", { type: "button", class: "link", text: "Show loose matches" });
    more.addEventListener("click", () => run(true));
    const n = data.below_threshold || 0;
    const loose = n ? `${plural(n, "passage")} ${n === 1 ? "was" : "were"} only loosely related. ` : "";
    status(`No close match in ${where}. ${loose}`, more);
  } else {
    status(`Nothing found in ${where}. Try other words, or upload the document first.`);
  }
  if (fromStatus) ($("#search-results button") || $("#search-query")).focus();
}

function status(text, ...extra) {
  $("#search-status").replaceChildren(text, ...extra);
  announce(text);
}

function groupByFile(hits) {
  const groups = new Map();
  for (const h of hits) {
    if (!groups.has(h.file_id)) groups.set(h.file_id, { file_id: h.file_id, filename: h.filename, hits: [] });
    groups.get(h.file_id).hits.push(h);
  }
  return [...groups.values()];
}

function groupItem(g, query, readOnly) {
  const open = el("button", { type: "button", class: "link file-name", text: g.filename });
  open.addEventListener("click", () => openDetails(g.file_id, { readOnly }));
  const head = el("div", { class: "hit-head" }, el("h3", {}, open));
  const cids = new Set(g.hits.flatMap((h) => h.collection_ids?.length ? h.collection_ids : (state.fileCollections.get(g.file_id) || [])));
  const names = [...cids].map((cid) => state.collections.find((c) => c.id === cid)).filter(Boolean)
    .map((c) => (c.role === "reader" ? `${c.name} (shared with you)` : c.name));
  if (names.length) head.append(el("span", { class: "hint in-collections", text: `in ${names.join(", ")}` }));
  return el("li", { class: "result-group" }, head, el("ol", { class: "hits" }, ...g.hits.map((h) => hitItem(h, query))));
}

function hitItem(hit, query) {
  const strength = hit.strength || (hit.score >= 0.7 ? "strong" : "partial");
  const meta = [STRENGTH[strength] || STRENGTH.partial, WHY[hit.matched], `passage ${hit.chunk_index + 1}`].filter(Boolean);
  const li = el("li", { class: `hit strength-${strength}` }, el("p", { class: "hint meta", text: meta.join(" · ") }));
  const snippet = el("p", { class: "snippet" });
  const words = new Set();
  if (typeof hit.snippet === "string" && hit.snippet) {
    snippet.append(...marked(hit.snippet, hit.highlights || [], words));
  } else {
    snippet.append(...fallbackSnippet(hit.text || "", query, words));
  }
  li.append(snippet);
  if (hit.text && hit.text.trim() !== (hit.snippet || "").replace(/ … /g, " ").trim()) {
    const full = el("p", { class: "passage", hidden: true });
    const more = el("button", { type: "button", class: "link more", "aria-expanded": "false", text: "More" });
    more.addEventListener("click", () => {
      const show = full.hidden;
      if (show && !full.childNodes.length) full.append(...markWords(hit.text, words));
      full.hidden = !show; snippet.hidden = show;
      more.textContent = show ? "Less" : "More";
      more.setAttribute("aria-expanded", String(show));
    });
    li.append(full, more);
  }
  return li;
}

// Text with <mark>s at the server's [start, end) offsets; collects the marked words.
function marked(text, spans, words) {
  const out = [];
  let pos = 0;
  for (const [start, end] of [...spans].sort((a, b) => a[0] - b[0])) {
    if (start < pos || end > text.length) continue;
    out.push(text.slice(pos, start));
    const word = text.slice(start, end);
    words.add(word.toLowerCase());
    out.push(el("mark", { text: word }));
    pos = end;
  }
  out.push(text.slice(pos));
  return out;
}

const escapeRe = (w) => w.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

// Marks the given words wherever they occur (for the whole passage behind "More").
function markWords(text, words) {
  if (!words.size) return [text];
  const re = new RegExp(`(${[...words].map(escapeRe).join("|")})`, "gi");
  const spans = [...text.matchAll(re)].map((m) => [m.index, m.index + m[0].length]);
  return marked(text, spans, new Set());
}

// No server snippet: a window around the first query word that is not a stop word.
function fallbackSnippet(text, query, words) {
  const terms = query.toLowerCase().split(/[^\p{L}\p{N}-]+/u).filter((w) => w.length > 1 && !STOP.has(w));
  terms.forEach((w) => words.add(w));
  const lower = text.toLowerCase();
  const first = Math.min(...terms.map((w) => lower.indexOf(w)).filter((i) => i >= 0), text.length);
  const start = first === text.length ? 0 : Math.max(0, first - 120);
  const end = Math.min(text.length, start + 300);
  const cut = `${start ? "… " : ""}${text.slice(start, end)}${end < text.length ? " …" : ""}`;
  return markWords(cut, words);
}
