// The console's HTTP access: JSON from the public API, its error envelope as ApiError,
// and the #error box every page reports failures in.

const errorBox = document.getElementById("error");

/** An API failure: the envelope's code and message (or a network/HTTP description). */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** JSON from `path` (GET, or POST with `body`); throws ApiError with the envelope's message. */
export async function api(path, body) {
  const init = body === undefined
    ? { headers: { Accept: "application/json" } }
    : { method: "POST", headers: { "Content-Type": "application/json", Accept: "application/json" }, body: JSON.stringify(body) };
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, "network", `network error calling ${path}: ${e.message}`);
  }
  const text = await res.text();
  let data = null;
  try {
    data = JSON.parse(text);
  } catch {
    /* not JSON: handled below */
  }
  if (!res.ok) {
    const message = data?.error?.message ?? `${res.status} ${res.statusText || "error"} from ${path}`;
    throw new ApiError(res.status, data?.error?.code ?? `http_${res.status}`, message);
  }
  if (data === null) throw new ApiError(res.status, "bad_response", `${path} answered no JSON`);
  return data;
}

/** Shows `err`'s message in #error, under any other message shown since the last clear. */
export function showError(err) {
  const message = err instanceof Error ? err.message : String(err);
  const shown = [...errorBox.children].map((c) => c.textContent);
  if (!shown.includes(message)) {
    const line = document.createElement("div");
    line.textContent = message;
    line.title = err instanceof ApiError ? `HTTP ${err.status} ${err.code}` : "";
    errorBox.append(line);
  }
  errorBox.hidden = false;
}

export function clearError() {
  errorBox.hidden = true;
  errorBox.replaceChildren();
}

