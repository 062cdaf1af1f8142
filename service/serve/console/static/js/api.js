// The console's JSON API. The session is an HttpOnly cookie the browser sends by itself; state-changing
// requests add the X-HDPO-Console header the server requires (a cross-site form cannot send it).
export class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `HTTP ${status}`);
    this.status = status; this.param = e.param || null; this.line = e.line ?? null; this.code = e.code || null;
  }
}

async function call(method, path, body, isForm = false) {
  const opts = { method, credentials: "same-origin", headers: {} };
  if (method !== "GET") opts.headers["X-HDPO-Console"] = "1";
  if (body !== undefined) {
    if (isForm) opts.body = body;
    else { opts.body = JSON.stringify(body); opts.headers["Content-Type"] = "application/json"; }
  }
  const res = await fetch(`/console/api${path}`, opts);
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

export const api = {
  get: (p) => call("GET", p),
  post: (p, b) => call("POST", p, b),
  del: (p) => call("DELETE", p),
  upload: (p, form) => call("POST", p, form, true),
};
