// Uploads of this session: one row per dropped file, from upload progress to done.
//
// Events can arrive before the upload's own reply (the worker is fast, the reply
// slow): they are kept per file id and applied when the reply names that id.
// Rows that have not moved in a while are re-checked against the API, so a lost
// event can never leave a row "Queued" for ever.

import { api, failureSentence, readableError, state } from "./api.js";
import { $, STATUS_LABELS, announce, badge, el, formatBytes, formatDuration, plural } from "./ui.js";

const PARALLEL_UPLOADS = 3;
const STALE_MS = 15000;      // a row unchanged this long is re-checked
const EARLY_MAX = 500;       // early events kept (a bounded map, oldest dropped)
const FINAL = ["done", "failed", "rejected"];
const RANK = { waiting: 0, uploading: 0, queued: 1, processing: 2, done: 3, failed: 3 };
const STAGES = { parse: "reading the file", chunk: "splitting into passages", embed: "indexing", store: "saving" };

const rows = new Map();       // local row id -> row
const byFileId = new Map();   // file id -> row
const early = new Map();      // file id -> latest event seen before the upload reply
const pending = [];
let active = 0;
let batchStart = null;
let batchFailureShown = false;
let rowSeq = 0;
let onChange = () => {};

export function initUploads({ changed }) {
  onChange = changed;
  const dropZone = $("#drop-zone");
  dropZone.addEventListener("click", () => $("#file-input").click());
  dropZone.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("#file-input").click(); }
  });
  dropZone.addEventListener("dragover", (e) => { e.preventDefault(); dropZone.classList.add("over"); });
  dropZone.addEventListener("dragleave", () => dropZone.classList.remove("over"));
  dropZone.addEventListener("drop", (e) => {
    e.preventDefault(); dropZone.classList.remove("over");
    addFiles([...e.dataTransfer.files]);
  });
  $("#file-input").addEventListener("change", (e) => { addFiles([...e.target.files]); e.target.value = ""; });
  $("#clear-finished").addEventListener("click", clearFinished);
  setInterval(recheckStale, 5000);
}

export function resetUploads() {
  rows.clear(); byFileId.clear(); early.clear(); pending.length = 0;
  $("#upload-list").replaceChildren();
  updateSummary();
}

function addFiles(files) {
  if (!files.length) return;
  if (!batchStart || allSettled()) { batchStart = Date.now(); batchFailureShown = false; }
  const collectionId = $("#upload-collection").value;
  for (const file of files) {
    const row = newRow(file, collectionId);
    if (state.me && file.size > state.me.max_upload_mb * 1024 * 1024) {
      reject(row, `This file is larger than the ${state.me.max_upload_mb} MB upload limit. Split or compress it, then upload it again.`);
      continue;
    }
    if (file.size === 0) {
      reject(row, "This file is empty. Choose the file with its content and upload it again.");
      continue;
    }
    pending.push(row);
  }
  announce(`${plural(files.length, "file")} added to the uploads.`);
  pumpUploads();
  updateSummary();
}

function newRow(file, collectionId) {
  const id = `r${++rowSeq}`;
  const li = el("li", { "data-row": id },
    el("span", { class: "name", text: file.name }), el("span", { class: "state" }),
    el("progress", { max: "1", value: "0" }), el("span", { class: "message" }));
  // One Retry button per row, shown or hidden: never replaced, so focus on it survives updates.
  const retry = el("button", { type: "button", class: "secondary retry", hidden: true, text: "Retry",
    "aria-label": `Retry ${file.name}` });
  li.append(retry);
  $("#upload-list").prepend(li);
  const row = { id, file, el: li, fileId: null, status: "waiting", collectionId, movedAt: Date.now(), retry };
  retry.addEventListener("click", async () => {
    try { applyFile(row, await api(`/files/${row.fileId}/retry`, { method: "POST" })); announce(`${file.name}: queued again.`); }
    catch (err) { row.el.querySelector(".message").textContent = err.message; }
  });
  rows.set(id, row);
  setRow(row, { status: "waiting" });
  return row;
}

function pumpUploads() {
  while (active < PARALLEL_UPLOADS && pending.length) {
    const row = pending.shift();
    active++;
    uploadOne(row).finally(() => { active--; pumpUploads(); updateSummary(); });
  }
}

function uploadOne(row) {
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    const form = new FormData();
    if (row.collectionId) form.append("collection_id", row.collectionId);
    form.append("file", row.file, row.file.name);
    xhr.open("POST", "/api/v1/files");
    if (state.key) xhr.setRequestHeader("Authorization", `Bearer ${state.key}`);
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) setRow(row, { status: "uploading", progress: e.loaded / e.total,
        message: `${formatBytes(e.loaded)} of ${formatBytes(e.total)} sent` });
    };
    xhr.onload = () => {
      let data = {};
      try { data = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
      if (xhr.status === 200 || xhr.status === 202) {
        row.fileId = data.id;
        byFileId.set(data.id, row);
        applyFile(row, data, xhr.status === 200 ? "You uploaded these exact bytes before; showing that file." : "");
        const seen = early.get(data.id);
        early.delete(data.id);
        if (seen && (RANK[seen.status] ?? 0) >= (RANK[data.status] ?? 0)) applyEvent(row, seen);
        onChange({ uploaded: data.id, collectionId: row.collectionId });
      } else {
        if (xhr.status === 429) data.retry_after = xhr.getResponseHeader("Retry-After");
        reject(row, readableError(xhr.status, data));
      }
      resolve();
    };
    xhr.onerror = () => {
      reject(row, "The upload was interrupted. Check your connection and drop the file again.");
      resolve();
    };
    setRow(row, { status: "uploading", progress: 0 });
    xhr.send(form);
  });
}

function reject(row, message) {
  setRow(row, { status: "rejected", message });
  firstFailure(row);
}

function progressMessage(f) {
  const stage = STAGES[f.stage] || "processing";
  // Segments (when the server reports them) say more than a percentage.
  if (f.segments_total > 0) return `Step: ${stage} (part ${f.segments_done ?? 0} of ${f.segments_total})`;
  return `Step: ${stage}${f.progress ? ` (${Math.round(f.progress * 100)}%)` : ""}`;
}

function applyFile(row, f, note = "") {
  if (f.status === "done") {
    setRow(row, { status: "done", progress: 1,
      message: `${plural(f.chunk_count ?? 0, "passage")} indexed. ${note}`.trim() });
  } else if (f.status === "failed") {
    setRow(row, { status: "failed", message: failureSentence(f.error) });
    firstFailure(row);
  } else if (f.status === "processing") {
    setRow(row, { status: "processing", progress: f.progress || 0, message: progressMessage(f) });
  } else {
    setRow(row, { status: "queued", progress: 0,
      message: `${f.error ? `${f.error} ` : "Waiting for a worker. "}${note}`.trim() });
  }
  updateSummary();
}

function applyEvent(row, e) {
  applyFile(row, { ...e, chunk_count: e.chunks ?? e.chunk_count ?? 0 });
}

// Called for every live `file` event.
export function uploadEvent(e) {
  const row = byFileId.get(e.file_id);
  if (row) { applyEvent(row, e); return; }
  // Maybe one of ours whose upload reply has not arrived yet: keep it for then.
  early.delete(e.file_id);
  early.set(e.file_id, e);
  if (early.size > EARLY_MAX) early.delete(early.keys().next().value);
}

function setRow(row, { status, progress, message }) {
  const before = `${row.status}|${row.el.querySelector("progress").value}|${row.el.querySelector(".message").textContent}`;
  row.status = status;
  const label = `${row.file.name}: ${STATUS_LABELS[status]}`;
  row.el.querySelector(".state").replaceWith(badge(status));
  const bar = row.el.querySelector("progress");
  if (progress !== undefined) bar.value = progress;
  bar.hidden = FINAL.includes(status);
  bar.setAttribute("aria-label", label);
  const msg = row.el.querySelector(".message");
  if (message !== undefined) msg.textContent = message;
  row.retry.hidden = !(status === "failed" && row.fileId);
  if (before !== `${row.status}|${bar.value}|${msg.textContent}`) row.movedAt = Date.now();
  if (before.split("|")[0] !== status && FINAL.includes(status)) announce(`${label}.`);
}

// The first failure of a batch is brought into view, once: later ones would make the page jump.
function firstFailure(row) {
  if (batchFailureShown) return;
  batchFailureShown = true;
  row.el.scrollIntoView({ block: "nearest" });
}

async function recheckStale() {
  const now = Date.now();
  const stale = [...rows.values()].filter((r) => r.fileId && !FINAL.includes(r.status) && now - r.movedAt > STALE_MS);
  for (const row of stale.slice(0, 10)) {
    row.movedAt = now; // at most one check per row per STALE_MS
    try { applyFile(row, await api(`/files/${row.fileId}`)); } catch { /* next time */ }
  }
}

// After a reconnect: events may have been missed.
export async function resyncUploads() {
  for (const row of rows.values()) {
    if (row.fileId && !FINAL.includes(row.status)) {
      try { applyFile(row, await api(`/files/${row.fileId}`)); } catch { /* next time */ }
    }
  }
}

export function forgetFile(fileId) {
  const row = byFileId.get(fileId);
  if (!row) return;
  row.el.remove(); rows.delete(row.id); byFileId.delete(fileId);
  updateSummary();
}

function clearFinished() {
  for (const row of [...rows.values()]) {
    if (FINAL.includes(row.status)) { row.el.remove(); rows.delete(row.id); if (row.fileId) byFileId.delete(row.fileId); }
  }
  updateSummary();
  announce("Finished uploads cleared from the list.");
  $("#drop-zone").focus(); // the button hides itself now
}

function allSettled() {
  return [...rows.values()].every((r) => FINAL.includes(r.status));
}

function updateSummary() {
  const all = [...rows.values()];
  $("#clear-finished").hidden = !all.some((r) => FINAL.includes(r.status));
  if (!all.length) { $("#batch-summary").textContent = ""; return; }
  const count = (s) => all.filter((r) => r.status === s).length;
  const done = count("done"), failed = count("failed"), refused = count("rejected");
  const left = all.length - done - failed - refused;
  const parts = all.length > refused ? [`${done} of ${all.length - refused} done`] : [];
  if (failed) parts.push(`${failed} failed`);
  if (refused) parts.push(`${refused} not uploaded`);
  let text = parts.join(" · ");
  if (left && done && batchStart) {
    const perFile = (Date.now() - batchStart) / (done + failed);
    text += ` · about ${formatDuration(perFile * left)} remaining`;
  } else if (!left) {
    text += " · all finished";
  }
  $("#batch-summary").textContent = text;
}
