// The console's HTTP access, the only module that calls fetch: JSON from the public API
// (its error envelope as ApiError), the text of /metrics, the polling of the live pages,
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

const networkError = (path, e) => new ApiError(0, "network", `network error calling ${path}: ${e.message}`);

/** The response to `path` with `init`; a failed fetch throws ApiError "network". */
async function send(path, init) {
  try {
    return await fetch(path, init);
  } catch (e) {
    throw networkError(path, e);
  }
}

/** JSON from `path` (GET, or POST with `body`); throws ApiError with the envelope's message. */
export async function api(path, body) {
  const init = body === undefined
    ? { headers: { Accept: "application/json" } }
    : { method: "POST", headers: { "Content-Type": "application/json", Accept: "application/json" }, body: JSON.stringify(body) };
  const res = await send(path, init);
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

/** The text GET `path` answers (e.g. /metrics, Prometheus' text format); throws ApiError
 * "network" when the fetch or the body fails, "http" when the status is not 2xx. */
export async function apiText(path) {
  const res = await send(path, { headers: { Accept: "text/plain" } });
  let text;
  try {
    text = await res.text();
  } catch (e) {
    throw networkError(path, e);
  }
  if (!res.ok) throw new ApiError(res.status, "http", `${path} answered ${res.status}`);
  return text;
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

/** Calls `load()` now and every `ms` until `signal` aborts and hands each result to
 * `show`; a failed load is shown in #error (the page keeps its last numbers), the next
 * good one clears it. Resolves after the first poll. */
export async function poll(signal, ms, load, show) {
  const once = async () => {
    let data;
    try {
      data = await load();
    } catch (e) {
      showError(e);
      return;
    }
    clearError();
    show(data);
  };
  await once();
  const timer = setInterval(() => {
    if (signal.aborted) clearInterval(timer);
    else once();
  }, ms);
  signal.addEventListener("abort", () => clearInterval(timer));
}
