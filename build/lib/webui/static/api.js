// Talking to the API, and turning its answers into sentences a person can act on.
// Every message shown comes from the API's `detail` field or from here, never raw JSON.

export const KEY_STORAGE = "sluice.apiKey";
export const TYPES_HINT = "Upload a PDF, Word (.docx), HTML, Markdown, text, CSV or JSON file.";

// Page-wide state shared by the modules (one signed-in user at a time).
export const state = {
  key: localStorage.getItem(KEY_STORAGE) || "",
  me: null,
  collections: [],          // CollectionRead items: own and shared with me
  fileCollections: new Map(), // file id -> [collection id] (from the collections' file lists)
};

export class ApiError extends Error {
  constructor(status, detail, retryAfter) { super(detail); this.status = status; this.retryAfter = retryAfter; }
}

export function authHeaders() {
  return state.key ? { Authorization: `Bearer ${state.key}` } : {};
}

export async function api(path, { method = "GET", body, json } = {}) {
  const headers = authHeaders();
  if (json !== undefined) { headers["Content-Type"] = "application/json"; body = JSON.stringify(json); }
  let res;
  try {
    res = await fetch(`/api/v1${path}`, { method, headers, body });
  } catch {
    throw new ApiError(0, "The server cannot be reached. Check your connection and try again.");
  }
  if (res.status === 204) return null;
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new ApiError(res.status, readableError(res.status, data), res.headers.get("Retry-After"));
  return data;
}

// "file is empty" -> "This file is empty."; anything else gets a capital and a full stop.
export function sentence(text) {
  let s = String(text || "").trim();
  if (!s) return "";
  s = s.replace(/^(the )?file\b/i, "This file");
  s = s[0].toUpperCase() + s.slice(1);
  return /[.!?]$/.test(s) ? s : `${s}.`;
}

export function readableError(status, data) {
  const detail = sentence(typeof data.detail === "string" ? data.detail : "");
  const wait = (s) => (s ? `Wait about ${s} seconds and try again.` : "Wait a moment and try again.");
  switch (status) {
    case 400: return data.code === "empty_file"
      ? "This file is empty. Choose the file with its content and upload it again."
      : `${detail || "The upload was not understood."} Check the file and upload it again.`;
    case 401: return `${detail || "Your key is not valid."} Sign in again.`;
    case 403: return `${detail || "This is shared with you read-only."} Only its owner can change it.`;
    case 404: return `${detail || "It is not there any more."} Refresh the page to see what is left.`;
    case 409: return detail || "That clashes with something that exists. Choose another name.";
    case 413: return `${detail || "This file is too large."} Split or compress it, then upload it again.`;
    case 415: return `${detail} ${TYPES_HINT}`.trim();
    case 422: return `${detail || "Something in the request is not valid."} Check it and try again.`;
    case 429: return `Too many requests right now. ${wait(data.retry_after)}`;
    case 503: return `The service is busy. ${wait()}`;
    case 507: return "The server is out of storage space. Try again later, or tell an administrator.";
    default: return `${detail || `The server answered with an error (${status}).`} Try again; if it keeps happening, tell an administrator.`;
  }
}

// A processing failure from the worker, with what to do about it.
export function failureSentence(error) {
  const s = sentence(error) || "Processing failed.";
  if (/scanned|no extractable text|image/i.test(s)) return `${s} Upload a version with selectable text (not a scan).`;
  if (/not supported|unsupported|not a |content is not/i.test(s)) return `${s} ${TYPES_HINT}`;
  return `${s} Press Retry if the problem may have been temporary, or fix the file and upload it again.`;
}
