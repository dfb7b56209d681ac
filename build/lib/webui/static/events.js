// Live updates: Server-Sent Events read with fetch (so the key can be sent as a header).

import { authHeaders } from "./api.js";

let current = null; // AbortController of the running stream

export function stopEvents() {
  if (current) current.abort();
  current = null;
  document.body.dataset.events = "closed";
}

// `onFile(event)` for each file event; `onResync()` when events may have been missed.
export async function connectEvents({ onFile, onResync, onSignedOut }) {
  stopEvents();
  const ctrl = new AbortController();
  current = ctrl;
  let lastId = "";
  while (!ctrl.signal.aborted) {
    try {
      const headers = authHeaders();
      if (lastId) headers["Last-Event-ID"] = lastId;
      const res = await fetch("/api/v1/events", { headers, signal: ctrl.signal });
      // The key was revoked or expired: asking again every few seconds cannot help.
      if (res.status === 401) { stopEvents(); onSignedOut(); return; }
      if (!res.ok) throw new Error(String(res.status));
      document.body.dataset.events = "open"; // tests wait for this before uploading
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
          if (ev.event === "file") onFile(JSON.parse(ev.data));
          if (ev.event === "resync") onResync();
        }
      }
    } catch {
      if (ctrl.signal.aborted) return;
    }
    document.body.dataset.events = "reconnecting";
    await new Promise((r) => setTimeout(r, 3000));
    if (!ctrl.signal.aborted) onResync(); // we may have missed events while disconnected
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
