// Collections: create, rename, delete, share by email, see who has access, revoke.
// A collection shared with you is marked as shared and offers no changes.

import { api, state } from "./api.js";
import { $, announce, el, icon, plural } from "./ui.js";

let changed = () => {};
let current = null; // the collection open in the dialog

export function initCollections(hooks) {
  changed = hooks.changed;
  $("#collection-create").addEventListener("submit", create);
  $("#rename-form").addEventListener("submit", rename);
  $("#share-form").addEventListener("submit", share);
  $("#collection-delete").addEventListener("click", remove);
  $("#collection-close").addEventListener("click", () => $("#collection-dialog").close());
  // The "Manage" button that opened the dialog may have been redrawn meanwhile.
  $("#collection-dialog").addEventListener("close", () => {
    const opener = current && $(`#collections-list [data-cid="${current.id}"] .manage`);
    setTimeout(() => (opener || $("#collections-title")).focus());
  });
}

export function resetCollections() {
  state.collections = [];
  state.fileCollections = new Map();
  $("#collections-list").replaceChildren();
}

export async function loadCollections() {
  let data;
  try { data = await api("/collections"); } catch (err) { $("#collections-error").textContent = err.message; return; }
  $("#collections-error").textContent = "";
  state.collections = data.items;
  // Which collections each file is in (the file API does not say): one list per collection.
  const members = new Map();
  await Promise.all(data.items.map(async (c) => {
    try {
      const files = await api(`/collections/${c.id}/files?limit=200`);
      for (const f of files.items) members.set(f.id, [...(members.get(f.id) || []), c.id]);
    } catch { /* shown without membership */ }
  }));
  state.fileCollections = members;
  render();
  fillSelects();
  changed();
}

function render() {
  // The list is redrawn after every change: put focus back where it was, or on the heading.
  const active = document.activeElement;
  const was = active?.closest?.("#collections-list li[data-cid]");
  const focus = was && { cid: was.dataset.cid, sel: active.classList.contains("manage") ? ".manage" : "button" };
  const items = state.collections.map((c) => {
    const owned = c.role === "owner";
    const meta = owned
      ? `${plural(c.file_count, "file")}${c.shared_with ? ` · shared with ${plural(c.shared_with, "person").replace("persons", "people")}` : ""}`
      : `${plural(c.file_count, "file")} · shared with you by ${c.owner_email} · read only`;
    const li = el("li", { "data-cid": c.id, class: owned ? "collection" : "collection shared" },
      el("span", { class: "name" }, ...(owned ? [] : [icon("shared")]), el("strong", { text: c.name })),
      el("span", { class: "hint meta", text: meta }));
    const actions = el("span", { class: "actions" });
    const search = el("button", { type: "button", class: "secondary", text: "Search in it", "aria-label": `Search in ${c.name}` });
    search.addEventListener("click", () => { $("#search-scope").value = c.id; $("#search-query").focus(); });
    actions.append(search);
    if (owned) {
      const manage = el("button", { type: "button", class: "secondary manage", text: "Manage", "aria-label": `Manage ${c.name}` });
      manage.addEventListener("click", () => openDialog(c));
      actions.append(manage);
    }
    li.append(actions);
    return li;
  });
  if (!items.length) items.push(el("li", { class: "hint", text: "No collections yet. Create one to group files and share them." }));
  $("#collections-list").replaceChildren(...items);
  if (focus && (!document.activeElement || document.activeElement === document.body)) {
    ($(`#collections-list [data-cid="${focus.cid}"] ${focus.sel}`) || $("#collections-title")).focus();
  }
}

function fillSelects() {
  const own = state.collections.filter((c) => c.role === "owner");
  const fill = (sel, first, list, label = (c) => c.name) => {
    const select = $(sel);
    const keep = select.value;
    const options = list.map((c) => el("option", { value: c.id, text: label(c) }));
    select.replaceChildren(...(first ? [el("option", { value: "", text: first })] : []), ...options);
    if ([...select.options].some((o) => o.value === keep)) select.value = keep;
  };
  fill("#upload-collection", "no collection", own);
  fill("#add-to-collection", "", own);
  fill("#search-scope", "your files", state.collections,
    (c) => (c.role === "reader" ? `${c.name} (shared with you)` : c.name));
}

export async function addToCollection(cid, fileIds) {
  const c = await api(`/collections/${cid}/files`, { method: "POST", json: { file_ids: fileIds } });
  await loadCollections();
  return c;
}

async function create(e) {
  e.preventDefault();
  const name = $("#collection-name").value.trim();
  if (!name) return;
  try { await api("/collections", { method: "POST", json: { name } }); }
  catch (err) { $("#collections-error").textContent = err.message; return; }
  $("#collection-name").value = "";
  await loadCollections();
  announce(`Collection ${name} created.`);
}

async function openDialog(c) {
  current = c;
  $("#collection-dialog-title").textContent = `Collection “${c.name}”`;
  $("#rename-input").value = c.name;
  $("#share-email").value = "";
  $("#collection-dialog-error").textContent = "";
  $("#collection-dialog").showModal();
  await loadReaders();
}

async function loadReaders(focusIndex = null) {
  let readers;
  try { readers = await api(`/collections/${current.id}/shares`); }
  catch (err) { $("#collection-dialog-error").textContent = err.message; return; }
  const items = readers.map((r) => {
    const revoke = el("button", { type: "button", class: "danger", text: "Revoke", "aria-label": `Revoke access for ${r.reader_email}` });
    revoke.addEventListener("click", () => revokeReader(r, readers.indexOf(r)));
    return el("li", {}, el("span", { class: "name", text: r.reader_email }), revoke);
  });
  if (!items.length) items.push(el("li", { class: "hint", text: "Only you." }));
  $("#readers-list").replaceChildren(...items);
  if (focusIndex !== null) {
    const buttons = [...$("#readers-list").querySelectorAll("button")];
    (buttons[Math.min(focusIndex, buttons.length - 1)] || $("#share-email")).focus();
  }
}

async function guarded(action, done) {
  $("#collection-dialog-error").textContent = "";
  try { await action(); } catch (err) { $("#collection-dialog-error").textContent = err.message; return; }
  await done();
}

function rename(e) {
  e.preventDefault();
  const name = $("#rename-input").value.trim();
  return guarded(() => api(`/collections/${current.id}`, { method: "PATCH", json: { name } }), async () => {
    current = { ...current, name };
    $("#collection-dialog-title").textContent = `Collection “${name}”`;
    await loadCollections();
    announce(`Renamed to ${name}.`);
  });
}

function share(e) {
  e.preventDefault();
  const email = $("#share-email").value.trim();
  const attempt = () => api(`/collections/${current.id}/shares`, { method: "POST", json: { email } }).catch((err) => {
    if (err.status === 404 && /user/i.test(err.message)) {
      err.message = `No one with the email ${email} has an account here. Check the address, or ask an administrator to create the account.`;
    }
    throw err;
  });
  return guarded(attempt, async () => {
    $("#share-email").value = "";
    await loadReaders();
    await loadCollections();
    announce(`Shared with ${email}. They can search it and read its files.`);
  });
}

function revokeReader(r, index) {
  return guarded(() => api(`/collections/${current.id}/shares/${r.reader_id}`, { method: "DELETE" }), async () => {
    await loadReaders(index);
    await loadCollections();
    announce(`${r.reader_email} no longer has access.`);
  });
}

function remove() {
  if (!confirm(`Delete the collection “${current.name}”? Its files are kept.`)) return;
  const name = current.name;
  return guarded(() => api(`/collections/${current.id}`, { method: "DELETE" }), async () => {
    $("#collection-dialog").close();
    await loadCollections();
    announce(`Collection ${name} deleted. Its files are kept.`);
  });
}
