// Sluice browser page: sign in, upload many files, watch them process, search.
// Plain ES module, no build step. Every server message shown to a person comes
// from the API's `detail` field, never raw JSON.

const $ = (sel) => document.querySelector(sel);
const KEY_STORAGE = "sluice.apiKey";
const PARALLEL_UPLOADS = 3;
const PAGE_SIZE = 20;

const state = {
  key: localStorage.getItem(KEY_STORAGE) || "",
  me: null,
  rows: new Map(),        // local row id -> {file, el, fileId, status}
  byFileId: new Map(),    // file id -> local row id
  pending: [],            // rows waiting for an upload slot
  active: 0,
  batchStart: null,
  page: 0,
  events: null,           // AbortController of the event stream
};

// ---------- API ----------
class ApiError extends Error {
  constructor(status, detail, retryAfter) { super(detail); this.status = status; this.retryAfter = retryAfter; }
}

function authHeaders() {
  return state.key ? { Authorization: `Bearer ${state.key}` } : {};
}

async function api(path, { method = "GET", body, json } = {}) {
  const headers = authHeaders();
  if (json !== undefined) { headers["Content-Type"] = "application/json"; body = JSON.stringify(json); }
  let res;
  try {
    res = await fetch(`/api/v1${path}`, { method, headers, body });
  } catch {
    throw new ApiError(0, "Cannot reach the server. Check your connection and try again.");
  }
  if (res.status === 204) return null;
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new ApiError(res.status, readableError(res.status, data), res.headers.get("Retry-After"));
  return data;
}

function readableError(status, data) {
  const detail = typeof data.detail === "string" ? data.detail : "";
  if (status === 401) return detail || "Your key is not valid. Sign in again.";
  if (status === 413) return detail || "This file is too large.";
  if (status === 429) return detail || "Too many requests right now. Wait a moment and try again.";
  if (status === 503) return detail || "The service is busy. Try again in a moment.";
  return detail || `The server answered with an error (${status}).`;
}

// ---------- sign in ----------
async function signIn() {
  try {
    state.me = await api("/me");
  } catch (err) {
    state.me = null;
    showSignIn(state.key && err.status === 401 ? err.message : "");
    return;
  }
  $("#sign-in").hidden = true;
  $("#app").hidden = false;
  $("#whoami").hidden = false;
  $("#user-email").textContent = state.me.email;
  $("#max-mb").textContent = state.me.max_upload_mb;
  loadFiles();
  connectEvents();
}

function showSignIn(message) {
  $("#app").hidden = true;
  $("#whoami").hidden = true;
  $("#sign-in").hidden = false;
  $("#sign-in-error").textContent = message || "";
  $("#api-key").focus();
}

$("#sign-in-form").addEventListener("submit", (e) => {
  e.preventDefault();
  state.key = $("#api-key").value.trim();
  localStorage.setItem(KEY_STORAGE, state.key);
  signIn();
});

$("#sign-out").addEventListener("click", () => {
  localStorage.removeItem(KEY_STORAGE);
  state.key = "";
  if (state.events) state.events.abort();
  state.rows.clear(); state.byFileId.clear();
  $("#upload-list").replaceChildren();
  $("#batch-summary").textContent = "";
  showSignIn("");
});

// ---------- uploads ----------
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

let rowSeq = 0;
function addFiles(files) {
  if (!files.length) return;
  if (!state.batchStart || allSettled()) state.batchStart = Date.now();
  for (const file of files) {
    const id = `r${++rowSeq}`;
    const el = document.createElement("li");
    el.dataset.row = id;
    el.innerHTML = `<span class="name"></span><span class="state"></span>
      <progress max="1" value="0"></progress><span class="message"></span>`;
    el.querySelector(".name").textContent = file.name;
    $("#upload-list").prepend(el);
    const row = { id, file, el, fileId: null, status: "waiting" };
    state.rows.set(id, row);
    setRow(row, { status: "waiting", label: "Waiting to upload" });
    if (state.me && file.size > state.me.max_upload_mb * 1024 * 1024) {
      setRow(row, { status: "rejected", label: "Not uploaded",
        message: `This file is larger than the ${state.me.max_upload_mb} MB upload limit.` });
      continue;
    }
    state.pending.push(row);
  }
  pumpUploads();
  updateSummary();
}

function pumpUploads() {
  while (state.active < PARALLEL_UPLOADS && state.pending.length) {
    const row = state.pending.shift();
    state.active++;
    uploadOne(row).finally(() => { state.active--; pumpUploads(); updateSummary(); });
  }
}

function uploadOne(row) {
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    const form = new FormData();
    form.append("file", row.file, row.file.name);
    xhr.open("POST", "/api/v1/files");
    if (state.key) xhr.setRequestHeader("Authorization", `Bearer ${state.key}`);
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) setRow(row, { status: "uploading", label: "Uploading", progress: e.loaded / e.total,
        message: `${formatBytes(e.loaded)} of ${formatBytes(e.total)} sent` });
    };
    xhr.onload = () => {
      let data = {};
      try { data = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
      if (xhr.status === 200 || xhr.status === 202) {
        row.fileId = data.id;
        state.byFileId.set(data.id, row.id);
        applyFile(row, data, xhr.status === 200 ? "You uploaded these exact bytes before; showing that file." : "");
        scheduleFilesReload();
      } else {
        const wait = xhr.getResponseHeader("Retry-After");
        let message = readableError(xhr.status, data);
        if (wait) message += ` (try again in about ${wait} s)`;
        setRow(row, { status: "rejected", label: "Not uploaded", message });
      }
      resolve();
    };
    xhr.onerror = () => {
      setRow(row, { status: "rejected", label: "Not uploaded",
        message: "The upload was interrupted. Check your connection and drop the file again." });
      resolve();
    };
    setRow(row, { status: "uploading", label: "Uploading", progress: 0 });
    xhr.send(form);
  });
}

const STAGES = { parse: "reading the file", chunk: "splitting into passages", embed: "indexing", store: "saving" };

function applyFile(row, f, note = "") {
  if (f.status === "done") {
    setRow(row, { status: "done", label: "Done", progress: 1,
      message: `${f.chunk_count} passage${f.chunk_count === 1 ? "" : "s"} indexed. ${note}` });
  } else if (f.status === "failed") {
    setRow(row, { status: "failed", label: "Failed", message: f.error || "Processing failed.", retry: true });
  } else if (f.status === "processing") {
    const stage = STAGES[f.stage] || "processing";
    const parts = f.segments_total > 1 ? `, part ${f.segments_done} of ${f.segments_total}` : "";
    setRow(row, { status: "processing", label: "Processing", progress: f.progress || 0,
      message: `Step: ${stage}${f.progress ? ` (${Math.round(f.progress * 100)}%${parts})` : ""}` });
  } else {
    setRow(row, { status: "queued", label: "Queued", progress: 0,
      message: (f.error ? `${f.error} ` : "Waiting for a worker. ") + note });
  }
  updateSummary();
}

function setRow(row, { status, label, progress, message, retry }) {
  row.status = status;
  const stateEl = row.el.querySelector(".state");
  stateEl.className = `state state-${status}`;
  stateEl.textContent = label;
  const bar = row.el.querySelector("progress");
  if (progress !== undefined) bar.value = progress;
  bar.hidden = ["rejected", "failed", "done"].includes(status);
  bar.setAttribute("aria-label", `${row.file.name}: ${label}`);
  const msg = row.el.querySelector(".message");
  msg.textContent = message || "";
  if (retry && row.fileId) {
    const b = document.createElement("button");
    b.type = "button"; b.className = "secondary"; b.textContent = "Retry";
    b.addEventListener("click", async () => {
      try { applyFile(row, await api(`/files/${row.fileId}/retry`, { method: "POST" })); }
      catch (err) { msg.textContent = err.message; }
    });
    msg.append(" ", b);
  }
}

function allSettled() {
  return [...state.rows.values()].every((r) => ["done", "failed", "rejected"].includes(r.status));
}

function updateSummary() {
  const rows = [...state.rows.values()];
  if (!rows.length) { $("#batch-summary").textContent = ""; return; }
  const done = rows.filter((r) => r.status === "done").length;
  const failed = rows.filter((r) => r.status === "failed" || r.status === "rejected").length;
  const left = rows.length - done - failed;
  let text = `${done} of ${rows.length} done`;
  if (failed) text += ` · ${failed} failed`;
  if (left && done && state.batchStart) {
    const perFile = (Date.now() - state.batchStart) / (done + failed);
    text += ` · about ${formatDuration(perFile * left)} remaining`;
  } else if (!left) {
    text += " · all finished";
  }
  $("#batch-summary").textContent = text;
}

// ---------- live events (Server-Sent Events over fetch, so the key can be sent) ----------
async function connectEvents() {
  if (state.events) state.events.abort();
  const ctrl = new AbortController();
  state.events = ctrl;
  let lastId = "";
  while (!ctrl.signal.aborted) {
    try {
      const headers = authHeaders();
      if (lastId) headers["Last-Event-ID"] = lastId;
      const res = await fetch("/api/v1/events", { headers, signal: ctrl.signal });
      if (!res.ok) throw new Error(String(res.status));
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const frame = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
          const ev = parseFrame(frame);
          if (ev.id) lastId = ev.id;
          if (ev.event === "file") onFileEvent(JSON.parse(ev.data));
          if (ev.event === "resync") resync();
        }
      }
    } catch (err) {
      if (ctrl.signal.aborted) return;
    }
    await new Promise((r) => setTimeout(r, 3000));
    resync(); // we may have missed events while disconnected
  }
}

function parseFrame(frame) {
  const ev = { event: "message", data: "", id: "" };
  for (const line of frame.split("\n")) {
    if (line.startsWith(":")) continue;
    const i = line.indexOf(":");
    const field = i < 0 ? line : line.slice(0, i);
    const value = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
    if (field === "data") ev.data += value;
    else if (field === "event") ev.event = value;
    else if (field === "id") ev.id = value;
  }
  return ev;
}

function onFileEvent(e) {
  const rowId = state.byFileId.get(e.file_id);
  if (rowId) {
    const row = state.rows.get(rowId);
    applyFile(row, { status: e.status, stage: e.stage, progress: e.progress,
      chunk_count: e.chunks ?? 0, error: e.error,
      segments_done: e.segments_done ?? 0, segments_total: e.segments_total ?? 0 });
  }
  const tr = document.querySelector(`#files-table tr[data-id="${e.file_id}"]`);
  if (tr) tr.querySelector(".state").replaceWith(stateBadge(e.status));
  else if (e.status === "done" || e.status === "failed") scheduleFilesReload();
}

let reloadTimer = null;
function scheduleFilesReload() {
  // Many files finish close together: refresh the table once for all of them.
  clearTimeout(reloadTimer);
  reloadTimer = setTimeout(loadFiles, 500);
}

async function resync() {
  for (const row of state.rows.values()) {
    if (row.fileId && !["done", "failed"].includes(row.status)) {
      try { applyFile(row, await api(`/files/${row.fileId}`)); } catch { /* next time */ }
    }
  }
  loadFiles();
}

// ---------- files list ----------
function stateBadge(status) {
  const s = document.createElement("span");
  s.className = `state state-${status}`;
  s.textContent = status[0].toUpperCase() + status.slice(1);
  return s;
}

async function loadFiles() {
  const status = $("#status-filter").value;
  const q = new URLSearchParams({ limit: PAGE_SIZE, offset: state.page * PAGE_SIZE });
  if (status) q.set("status", status);
  let data;
  try { data = await api(`/files?${q}`); } catch (err) {
    $("#page-info").textContent = err.message; return;
  }
  const body = $("#files-table tbody");
  body.replaceChildren(...data.items.map(fileRow));
  if (!data.items.length) {
    const tr = document.createElement("tr");
    tr.innerHTML = `<td colspan="5" class="hint">No files${status ? ` with status “${status}”` : " yet"}.</td>`;
    body.append(tr);
  }
  const pages = Math.max(1, Math.ceil(data.total / PAGE_SIZE));
  $("#page-info").textContent = `Page ${state.page + 1} of ${pages} · ${data.total} file${data.total === 1 ? "" : "s"}`;
  $("#prev-page").disabled = state.page === 0;
  $("#next-page").disabled = state.page + 1 >= pages;
}

function fileRow(f) {
  const tr = document.createElement("tr");
  tr.dataset.id = f.id;
  tr.innerHTML = `<td><button type="button" class="link name"></button></td><td></td>
    <td class="num"></td><td></td><td><button type="button" class="danger">Delete</button></td>`;
  const name = tr.querySelector(".name");
  name.textContent = f.filename;
  name.addEventListener("click", () => openDetails(f.id));
  tr.children[1].append(stateBadge(f.status));
  tr.children[2].textContent = formatBytes(f.size_bytes);
  tr.children[3].textContent = new Date(f.created_at).toLocaleString();
  const del = tr.querySelector(".danger");
  del.setAttribute("aria-label", `Delete ${f.filename}`);
  del.addEventListener("click", () => deleteFile(f));
  return tr;
}

async function deleteFile(f) {
  if (!confirm(`Delete “${f.filename}”? Its passages are removed from search. This cannot be undone.`)) return false;
  try { await api(`/files/${f.id}`, { method: "DELETE" }); } catch (err) { alert(err.message); return false; }
  const rowId = state.byFileId.get(f.id);
  if (rowId) { state.rows.get(rowId).el.remove(); state.rows.delete(rowId); state.byFileId.delete(f.id); }
  updateSummary();
  loadFiles();
  return true;
}

$("#status-filter").addEventListener("change", () => { state.page = 0; loadFiles(); });
$("#refresh-files").addEventListener("click", loadFiles);
$("#prev-page").addEventListener("click", () => { state.page--; loadFiles(); });
$("#next-page").addEventListener("click", () => { state.page++; loadFiles(); });

// ---------- details ----------
async function openDetails(fileId) {
  const dlg = $("#details");
  $("#details-error").textContent = "";
  let f;
  try { f = await api(`/files/${fileId}`); } catch (err) { alert(err.message); return; }
  $("#details-title").textContent = f.filename;
  const fields = [
    ["Status", f.status + (f.stage ? ` (${STAGES[f.stage] || f.stage})` : "")],
    ["Reason", f.error || "—"], ["Type", f.kind || "not detected yet"],
    ["Size", formatBytes(f.size_bytes)], ["Passages", String(f.chunk_count)],
    ["Attempts", String(f.attempts)], ["Uploaded", new Date(f.created_at).toLocaleString()],
    ["Finished", f.finished_at ? new Date(f.finished_at).toLocaleString() : "—"],
  ];
  $("#details-list").replaceChildren(...fields.flatMap(([k, v]) => {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = v;
    return [dt, dd];
  }));
  $("#details-download").onclick = (e) => { e.preventDefault(); download(f); };
  const retry = $("#details-retry");
  retry.hidden = f.status !== "failed";
  retry.onclick = async () => {
    try { await api(`/files/${f.id}/retry`, { method: "POST" }); dlg.close(); loadFiles(); }
    catch (err) { $("#details-error").textContent = err.message; }
  };
  $("#details-delete").onclick = async () => { if (await deleteFile(f)) dlg.close(); };
  dlg.showModal();
}

async function download(f) {
  const res = await fetch(`/api/v1/files/${f.id}/content`, { headers: authHeaders() });
  if (!res.ok) { $("#details-error").textContent = "The file could not be downloaded."; return; }
  const url = URL.createObjectURL(await res.blob());
  const a = document.createElement("a");
  a.href = url; a.download = f.filename; document.body.append(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// ---------- search ----------
$("#search-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const query = $("#search-query").value.trim();
  if (!query) return;
  $("#search-status").textContent = "Searching…";
  let data;
  try { data = await api("/search", { method: "POST", json: { query, top_k: 10 } }); }
  catch (err) { $("#search-status").textContent = err.message; return; }
  $("#search-status").textContent = data.hits.length
    ? `${data.hits.length} passage${data.hits.length === 1 ? "" : "s"} found in ${data.took_ms} ms.`
    : "Nothing found in your files yet.";
  $("#search-results").replaceChildren(...data.hits.map((h) => hitItem(h, query)));
});

function hitItem(hit, query) {
  const li = document.createElement("li");
  li.innerHTML = `<div class="hit-head"><button type="button" class="link"></button>
    <span class="hint"></span></div><p class="passage"></p>`;
  const open = li.querySelector("button");
  open.textContent = hit.filename;
  open.addEventListener("click", () => openDetails(hit.file_id));
  li.querySelector(".hint").textContent = `match ${Math.round(hit.score * 100)}% · passage ${hit.chunk_index + 1}`;
  li.querySelector(".passage").innerHTML = highlight(hit.text, query);
  return li;
}

function escapeHtml(s) {
  return s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function highlight(text, query) {
  const words = [...new Set(query.toLowerCase().split(/\W+/).filter((w) => w.length > 2))];
  const safe = escapeHtml(text);
  if (!words.length) return safe;
  const re = new RegExp(`\\b(${words.map((w) => w.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")).join("|")})`, "gi");
  return safe.replace(re, "<mark>$1</mark>");
}

// ---------- formatting ----------
function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

function formatDuration(ms) {
  const s = Math.round(ms / 1000);
  if (s < 60) return `${Math.max(s, 1)} s`;
  if (s < 3600) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

signIn();
