// The server as the dashboard sees it: REST calls with the signed-in token, and a
// context's live stream over the WebSocket with resume. Nothing here touches the page.

const tokenKey = 'engram.token';

// The token the user signed in with (sessionStorage: gone with the tab). REST
// calls send it as a bearer header; the WebSocket cannot send headers, so it also
// goes into the engram_token cookie, which /stream accepts from this origin.
export const auth = {
  get token() { return sessionStorage.getItem(tokenKey) || ''; },
  signIn(token) {
    sessionStorage.setItem(tokenKey, token);
    const secure = location.protocol === 'https:' ? '; Secure' : '';
    document.cookie = `engram_token=${encodeURIComponent(token)}; Path=/; SameSite=Strict${secure}`;
  },
  signOut() {
    sessionStorage.removeItem(tokenKey);
    document.cookie = 'engram_token=; Path=/; Max-Age=0; SameSite=Strict';
  },
  // The token's subject (its `sub`), read without verifying: only to prefill the
  // name a message is posted as; the server checks the token.
  get subject() {
    try { return JSON.parse(atob(this.token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/'))).sub || ''; }
    catch { return ''; }
  },
};

// An answer the server refused: status and its message.
export class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

const listeners = new Set();
// fn({status, message}) for each refusal a page should show (401/403), and for the
// server becoming unreachable ({status: 0}) or reachable again ({status: 200}).
export function onProblem(fn) { listeners.add(fn); }
const tell = (p) => { for (const fn of listeners) fn(p); };

// One REST call: JSON in and out. Throws ApiError on a refusal (its message is the
// server's) or when the server cannot be reached (status 0).
export async function api(method, path, body, headers = {}) {
  const h = { ...headers };
  if (body !== undefined) h['Content-Type'] = 'application/json';
  if (auth.token) h.Authorization = `Bearer ${auth.token}`;
  let r;
  try {
    r = await fetch(path, { method, headers: h, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    tell({ status: 0, message: 'the server cannot be reached' });
    throw new ApiError(0, `the server cannot be reached (${e.message})`);
  }
  tell({ status: 200 });
  let json = null;
  try { json = await r.json(); } catch { /* empty or not JSON */ }
  if (!r.ok) {
    const message = (json && json.error) || r.statusText;
    if (r.status === 401 || r.status === 403) tell({ status: r.status, message });
    throw new ApiError(r.status, message);
  }
  return json;
}

export const enc = encodeURIComponent;

// A context's events live, from `since` (the last seq the page has; null: from the
// head). Reconnects by itself after any close, resuming after the last seq it
// delivered, so a network blip or a server restart loses and repeats nothing.
// handlers: onEvent(msg), onState('live' | 'reconnecting' | 'refused', detail).
export class LiveStream {
  constructor(context, since, handlers) {
    Object.assign(this, { context, cursor: since, handlers, closed: false, ws: null, attempts: 0 });
    this.open();
  }

  url() {
    const u = new URL('/stream', location.href);
    u.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
    u.searchParams.set('context', this.context);
    u.searchParams.set('text', '1');
    if (this.cursor !== null) u.searchParams.set('since', String(this.cursor));
    return u;
  }

  open() {
    if (this.closed) return;
    const ws = this.ws = new WebSocket(this.url());
    let opened = false;
    ws.onopen = () => { opened = true; this.attempts = 0; this.handlers.onState('live'); };
    ws.onmessage = (m) => {
      const msg = JSON.parse(m.data);
      if (msg.type === 'heartbeat' || msg.type === 'subscribe_ack') return;
      if (typeof msg.seq === 'number' && msg.context_id === this.context && !msg.draft_id) this.cursor = msg.seq;
      this.handlers.onEvent(msg);
    };
    ws.onclose = async (e) => {
      if (this.closed) return;
      this.handlers.onState('reconnecting');
      // Refused before opening, or the token expired: ask the server why (a browser
      // hides the upgrade's answer); a 4xx stops retrying.
      if (!opened || e.code === 4001) {
        const why = await this.diagnose();
        if (why) return this.handlers.onState('refused', why);
      }
      const delay = Math.min(5000, 250 * 2 ** this.attempts++);
      setTimeout(() => this.open(), delay);
    };
  }

  async diagnose() {
    const u = new URL('/stream-sse', location.href);
    u.searchParams.set('context', this.context);
    const abort = new AbortController();
    try {
      const r = await fetch(u, { signal: abort.signal, headers: auth.token ? { Authorization: `Bearer ${auth.token}` } : {} });
      if (r.status < 400 || r.status >= 500 || r.status === 408 || r.status === 429) return null;
      let error = r.statusText;
      try { error = (await r.json()).error || error; } catch { /* not JSON */ }
      return { status: r.status, message: error };
    } catch {
      return null;
    } finally {
      abort.abort();
    }
  }

  close() {
    this.closed = true;
    if (this.ws) this.ws.close();
  }
}
