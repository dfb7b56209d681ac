// Sluice browser page: sign in, upload many files, watch them process, search,
// collections. Plain ES modules, no build step; this one wires the others together.

import { KEY_STORAGE, api, state } from "./api.js";
import { addToCollection, initCollections, loadCollections, resetCollections } from "./collections.js";
import { connectEvents, stopEvents } from "./events.js";
import { fileEventForTable, initFiles, loadFiles, openDetails, refreshCollectionTags, scheduleFilesReload } from "./files.js";
import { initSearch, resetSearch } from "./search.js";
import { $ } from "./ui.js";
import { forgetFile, initUploads, resetUploads, resyncUploads, uploadEvent } from "./uploads.js";

// The probe answers 200 either way (signed in or not), so a signed-out visit
// leaves no error in the console; `reason` says why a stored key was refused.
async function signIn() {
  let probe;
  try { probe = await api("/session"); } catch (err) { showSignIn(err.message); return; }
  if (!probe.signed_in) {
    showSignIn(state.key && probe.reason ? `${probe.reason[0].toUpperCase()}${probe.reason.slice(1)}. Check the key and sign in again.` : "");
    return;
  }
  state.me = probe.me;
  $("#sign-in").hidden = true;
  $("#app").hidden = false;
  $("#whoami").hidden = false;
  $("#user-email").textContent = state.me.email;
  $("#max-mb").textContent = state.me.max_upload_mb;
  loadFiles();
  loadCollections();
  connectEvents({
    onFile: (e) => { uploadEvent(e); fileEventForTable(e); },
    onResync: () => { resyncUploads(); loadFiles(); },
    onSignedOut: () => signOut("Your key is no longer valid (revoked or expired). Sign in again with a new key."),
  });
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

$("#sign-out").addEventListener("click", () => signOut(""));

function signOut(message) {
  localStorage.removeItem(KEY_STORAGE);
  state.key = "";
  state.me = null;
  stopEvents();
  resetUploads();
  resetSearch();
  resetCollections();
  $("#files-table tbody").replaceChildren();
  showSignIn(message);
}

initUploads({
  changed: ({ collectionId }) => { scheduleFilesReload(); if (collectionId) scheduleCollectionsReload(); },
});
let collectionsTimer = null;
function scheduleCollectionsReload() {
  // A batch into one collection: count its files once, after the last reply.
  clearTimeout(collectionsTimer);
  collectionsTimer = setTimeout(loadCollections, 500);
}

initFiles({
  deleted: (fileId) => { forgetFile(fileId); loadCollections(); },
  addToCollection,
});
initCollections({ changed: () => refreshCollectionTags() });
initSearch({ openDetails });
signIn();
