// The public /api/v1 API, as the pages use it: JSON in and out, the CSRF
// header on every change, and sign-in through an HttpOnly cookie.
export const session = { signedIn: false, open: false, name: null, role: null, csrf: null };

export class ApiError extends Error {
  constructor(status, detail) { super(detail); this.status = status; }
}

let onUnauthorized = () => {};
export function whenUnauthorized(fn) { onUnauthorized = fn; }

export async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") {
    headers["Content-Type"] = "application/json";
    if (session.csrf) headers["X-CSRF-Token"] = session.csrf;
  }
  const response = await fetch("/api/v1" + path, {
    method, headers, credentials: "same-origin",
    body: method === "GET" ? undefined : JSON.stringify(body ?? {}),
  });
  const type = response.headers.get("Content-Type") || "";
  const data = type.includes("json") ? await response.json() : null;
  if (response.status === 401 && path !== "/session") onUnauthorized();
  if (!response.ok) throw new ApiError(response.status, (data && data.detail) || response.statusText);
  return data;
}

export async function loadSession() {
  const info = await api("/session");
  Object.assign(session, { signedIn: info.signed_in, open: info.open, name: info.name, role: info.role, csrf: info.csrf });
  return session;
}

export async function signIn(token) {
  const info = await api("/session", { method: "POST", body: { token } });
  Object.assign(session, { signedIn: true, open: info.open, name: info.name, role: info.role, csrf: info.csrf });
}

export async function signOut() {
  await api("/session", { method: "DELETE" });
  Object.assign(session, { signedIn: false, name: null, role: null, csrf: null });
}

/** Operators and admins see actions; viewers do not (and the API refuses them). */
export function canAct() { return session.role === "operator" || session.role === "admin"; }

/** Follow server-sent events; returns a function that stops following. */
export function follow(query, onMessage) {
  const source = new EventSource("/api/v1/live?" + query);
  const handler = (event) => onMessage(JSON.parse(event.data));
  source.addEventListener("run", handler);
  source.addEventListener("workflows", handler);
  return () => source.close();
}
