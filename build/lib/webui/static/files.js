// "Your files": a paged table updated in place (rows keyed by file id), so a live
// update never takes away the control a keyboard user is on. Also selection for
// "add to collection", the details dialog and delete.

import { api, authHeaders, failureSentence, state } from "./api.js";
import { $, announce, badge, el, formatBytes, plural } from "./ui.js";

const PAGE_SIZE = 20;
const FINAL = ["done", "failed"];
const STAGES = { parse: "reading the file", chunk: "splitting into passages", embed: "indexing", store: "saving" };
let page = 0;
let hooks = { deleted: () => {}, addToCollection: async () => {} };
const body = () => $("#files-table tbody");

export function initFiles(h) {
  hooks = h;
  $("#status-filter").addEventListener("change", () => { page = 0; loadFiles(); });
  $("#refresh-files").addEventListener("click", () => loadFiles());
  $("#prev-page").addEventListener("click", () => { page--; loadFiles(); });
  $("#next-page").addEventListener("click", () => { page++; loadFiles(); });
  $("#add-selected").addEventListener("click", addSelected);
  // Rows still moving are re-read now and then, in case an event was lost.
  setInterval(() => {
    if (!$("#app").hidden && [...body().querySelectorAll("tr[data-status]")].some((tr) => !FINAL.includes(tr.dataset.status))) loadFiles();
  }, 15000);
}

let reloadTimer = null;
export function scheduleFilesReload() {
  // Many files finish close together: refresh the table once for all of them.
  clearTimeout(reloadTimer);
  reloadTimer = setTimeout(loadFiles, 500);
}

export async function loadFiles() {
  const status = $("#status-filter").value;
  const q = new URLSearchParams({ limit: PAGE_SIZE, offset: page * PAGE_SIZE });
  if (status) q.set("status", status);
  let data;
  try { data = await api(`/files?${q}`); } catch (err) { $("#page-info").textContent = err.message; return; }
  render(data.items, status);
  const pages = Math.max(1, Math.ceil(data.total / PAGE_SIZE));
  $("#page-info").textContent = `Page ${page + 1} of ${pages} · ${plural(data.total, "file")}`;
  $("#prev-page").disabled = page === 0;
  $("#next-page").disabled = page + 1 >= pages;
}

function render(items, status) {
  const tbody = body();
  const focus = focusInTable();
  const existing = new Map([...tbody.querySelectorAll("tr[data-id]")].map((tr) => [tr.dataset.id, tr]));
  const wanted = new Set(items.map((f) => f.id));
  for (const [id, tr] of existing) if (!wanted.has(id)) tr.remove();
  tbody.querySelector("tr.empty")?.remove();
  // Insert or move only rows that are out of place: moving a node blurs its focused control.
  items.forEach((f, i) => {
    const tr = existing.get(f.id) || newRow(f);
    updateRow(tr, f);
    if (tbody.children[i] !== tr) tbody.insertBefore(tr, tbody.children[i] || null);
  });
  if (!items.length) {
    tbody.append(el("tr", { class: "empty" }, el("td", { colspan: "6", class: "hint",
      text: `No files${status ? ` with status “${status}”` : " yet"}.` })));
  }
  restoreFocus(focus);
  $("#selection-bar").hidden = !items.length || !state.collections.some((c) => c.role === "owner");
}

function focusInTable() {
  const a = document.activeElement;
  const tr = a?.closest?.("#files-table tbody tr[data-id]");
  if (!tr) return null;
  return { id: tr.dataset.id, role: a.dataset.role, index: [...body().children].indexOf(tr) };
}

// If the focused row went away (deleted, filtered out), focus the same control on
// the row that took its place; never leave focus on <body>.
function restoreFocus(focus) {
  if (!focus || (document.activeElement && document.activeElement !== document.body)) return;
  focusRowControl(focus.id, focus.role, focus.index);
}

function focusRowControl(id, role, index) {
  const rowsNow = [...body().querySelectorAll("tr[data-id]")];
  const tr = rowsNow.find((r) => r.dataset.id === id) || rowsNow[Math.min(index, rowsNow.length - 1)];
  const target = tr?.querySelector(`[data-role="${role}"]`) || tr?.querySelector("button");
  (target || $("#files-title")).focus();
}

function newRow(f) {
  const tr = el("tr", { "data-id": f.id });
  const pick = el("input", { type: "checkbox", "data-role": "pick" });
  const name = el("button", { type: "button", class: "link name", "data-role": "open" });
  name.addEventListener("click", () => openDetails(tr.file.id));
  const del = el("button", { type: "button", class: "danger", "data-role": "delete", text: "Delete" });
  del.addEventListener("click", () => deleteFile(tr.file));
  tr.append(el("td", { class: "pick" }, pick), el("td", {}, name, el("span", { class: "in-collections hint" })),
    el("td", { class: "status" }), el("td", { class: "num col-size" }), el("td", { class: "col-date" }), el("td", {}, del));
  return tr;
}

function updateRow(tr, f) {
  tr.file = f;
  const name = tr.querySelector(".name");
  if (name.textContent !== f.filename) name.textContent = f.filename;
  tr.querySelector('[data-role="pick"]').setAttribute("aria-label", `Select ${f.filename}`);
  tr.querySelector('[data-role="delete"]').setAttribute("aria-label", `Delete ${f.filename}`);
  setStatus(tr, f);
  tr.children[3].textContent = formatBytes(f.size_bytes);
  tr.children[4].textContent = new Date(f.created_at).toLocaleString();
  showCollections(tr);
}

function setStatus(tr, f) {
  tr.dataset.status = f.status;
  const cell = tr.querySelector("td.status");
  const parts = [badge(f.status)];
  if (f.status === "processing" && typeof f.progress === "number") {
    parts.push(el("progress", { max: "1", value: String(f.progress), "aria-label": `${f.filename}: processing` }));
  }
  cell.replaceChildren(...parts);
}

// A live event: update that row's status in place (the list itself reloads when it settles).
export function fileEventForTable(e) {
  const tr = body().querySelector(`tr[data-id="${CSS.escape(e.file_id)}"]`);
  if (!tr) { if (FINAL.includes(e.status)) scheduleFilesReload(); return; }
  setStatus(tr, { ...tr.file, status: e.status, progress: e.progress, filename: tr.file.filename });
  if (FINAL.includes(e.status)) scheduleFilesReload();
}

export function showCollections(tr) {
  const names = (state.fileCollections.get(tr.dataset.id) || [])
    .map((cid) => state.collections.find((c) => c.id === cid)?.name).filter(Boolean);
  tr.querySelector(".in-collections").textContent = names.length ? `in ${names.join(", ")}` : "";
}

export function refreshCollectionTags() {
  body().querySelectorAll("tr[data-id]").forEach(showCollections);
}

async function addSelected() {
  const cid = $("#add-to-collection").value;
  const picked = [...body().querySelectorAll('tr[data-id] input[data-role="pick"]:checked')];
  if (!picked.length) { announce("Select one or more files first, with the boxes in the first column."); return; }
  const ids = picked.map((box) => box.closest("tr").dataset.id);
  try {
    const c = await hooks.addToCollection(cid, ids);
    picked.forEach((box) => { box.checked = false; });
    announce(`${plural(ids.length, "file")} added to ${c.name}.`);
  } catch (err) { announce(err.message); }
}

export async function deleteFile(f, beforeFocus = () => {}) {
  if (!confirm(`Delete “${f.filename}”? Its passages are removed from search. This cannot be undone.`)) return false;
  try { await api(`/files/${f.id}`, { method: "DELETE" }); } catch (err) { alert(err.message); return false; }
  beforeFocus(); // e.g. close the dialog: nothing outside an open modal can take focus
  const tr = body().querySelector(`tr[data-id="${CSS.escape(f.id)}"]`);
  if (tr) {
    // Focus moves to the same button on the next row (or the previous one, or the heading).
    const index = [...body().children].indexOf(tr);
    tr.remove();
    focusRowControl("", "delete", index);
  }
  announce(`Deleted ${f.filename}.`);
  hooks.deleted(f.id);
  loadFiles();
  return true;
}

async function openDetails(fileId, { readOnly = false } = {}) {
  const dlg = $("#details");
  $("#details-error").textContent = "";
  let f;
  try { f = await api(`/files/${fileId}`); } catch (err) { announce(err.message); return; }
  $("#details-title").textContent = f.filename;
  const fields = [
    ["Status", f.status + (f.stage ? ` (${STAGES[f.stage] || f.stage})` : "")],
    ["Reason", f.error ? failureSentence(f.error) : "—"], ["Type", f.kind || "not detected yet"],
    ["Size", formatBytes(f.size_bytes)], ["Passages", String(f.chunk_count)],
    ["Attempts", String(f.attempts)], ["Uploaded", new Date(f.created_at).toLocaleString()],
    ["Finished", f.finished_at ? new Date(f.finished_at).toLocaleString() : "—"],
    ["Collections", (state.fileCollections.get(f.id) || [])
      .map((cid) => state.collections.find((c) => c.id === cid)?.name).filter(Boolean).join(", ") || "—"],
  ];
  $("#details-list").replaceChildren(...fields.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
  $("#details-download").onclick = () => download(f);
  const retry = $("#details-retry");
  retry.hidden = readOnly || f.status !== "failed";
  $("#details-delete").hidden = readOnly;
  retry.onclick = async () => {
    try { await api(`/files/${f.id}/retry`, { method: "POST" }); dlg.close(); announce(`${f.filename}: queued again.`); loadFiles(); }
    catch (err) { $("#details-error").textContent = err.message; }
  };
  $("#details-delete").onclick = () => deleteFile(f, () => dlg.close());
  dlg.showModal();
}

export { openDetails };

async function download(f) {
  const res = await fetch(`/api/v1/files/${f.id}/content`, { headers: authHeaders() });
  if (!res.ok) { $("#details-error").textContent = "The file could not be downloaded. Try again in a moment."; return; }
  const url = URL.createObjectURL(await res.blob());
  const a = el("a", { href: url, download: f.filename });
  document.body.append(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
