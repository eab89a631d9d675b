// The admin API: bearer-token calls, errors as ApiError (the body is `{"error": code, "message": …}`).

let token = null;

/** The token every call sends from now on (null when signed out). */
export function setToken(value) {
  token = value;
}

export class ApiError extends Error {
  constructor(status, code, message, body) {
    super(message);
    this.status = status;
    this.code = code;
    this.body = body;
  }
}

/** Calls the API; answers the parsed JSON body or throws an ApiError. */
export async function api(method, path, body) {
  const headers = { Accept: 'application/json', Authorization: `Bearer ${token}` };
  const init = { method, headers, cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, 'unreachable', `the producer did not answer (${e.message})`);
  }
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!res.ok) {
    const code = data && typeof data.error === 'string' ? data.error : `http_${res.status}`;
    const message = data && data.message ? String(data.message) : text.slice(0, 200) || res.statusText;
    throw new ApiError(res.status, code, message, data);
  }
  return data;
}

export const enc = encodeURIComponent;

export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== '' && v != null) q.set(k, v);
  return q.toString();
}

export function describe(e) {
  if (!(e instanceof ApiError)) return String(e && e.message ? e.message : e);
  return `${e.status ? `${e.status} ` : ''}${e.code}${e.message ? `: ${e.message}` : ''}`;
}
