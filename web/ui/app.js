// The Engram dashboard: contexts, a context's live timeline with its side panels
// (presence, leases, tasks, facts) and packet preview, search across contexts, and
// steering (post a message, release a stuck lease). Plain ES modules, no build step;
// every request goes to this server. README "Dashboard".
//
// Routes (location.hash): #/?prefix=p · #/c/<context>[?seq=N] · #/search?q=…&mode=…
// window.engram exposes the page's state for the browser tests.
import { api, auth, enc, LiveStream, onProblem } from './api.js';
import { el, fmtTime, renderUnit, time, TYPES } from './units.js';

const $ = (id) => document.getElementById(id);
const main = $('main');
const state = window.engram = { view: null, conn: 'idle', timeline: null, reconnects: 0 };

// ---- chrome: connection state, problems and sign-in, theme -----------------------
function setConn(s, text) {
  state.conn = s;
  const c = $('conn');
  c.textContent = text || s;
  c.className = `conn ${s === 'live' ? 'live' : s === 'idle' ? '' : 'down'}`;
}

function showProblem(message, login) {
  $('problem-text').textContent = message;
  $('login').hidden = !login;
  $('problem').hidden = false;
  if (login) $('token').focus();
}
const hideProblem = () => { $('problem').hidden = true; };

onProblem((p) => {
  if (p.status === 0) setConn('down', 'server unreachable, reconnecting…');
  else if (p.status === 200 && state.conn === 'down' && !(state.timeline && state.timeline.stream)) setConn('idle', 'connected');
  else if (p.status === 401) showProblem(`Sign in: ${p.message}`, true);
  else if (p.status === 403) showProblem(`Not allowed: ${p.message}`, true);
});

$('login').addEventListener('submit', (e) => {
  e.preventDefault();
  auth.signIn($('token').value.trim());
  $('token').value = '';
  hideProblem();
  route();
});
$('logout').addEventListener('click', () => { auth.signOut(); route(); });

const themeKey = 'engram.theme';
const applyTheme = () => {
  const t = localStorage.getItem(themeKey);
  if (t) document.documentElement.dataset.theme = t; else delete document.documentElement.dataset.theme;
};
$('theme').addEventListener('click', () => {
  const dark = document.documentElement.dataset.theme === 'dark' ||
    (!document.documentElement.dataset.theme && matchMedia('(prefers-color-scheme: dark)').matches);
  localStorage.setItem(themeKey, dark ? 'light' : 'dark');
  applyTheme();
});
applyTheme();

$('search-form').addEventListener('submit', (e) => {
  e.preventDefault();
  location.hash = `#/search?q=${enc($('search-q').value)}&mode=${$('search-mode').value}`;
});
document.addEventListener('keydown', (e) => {
  if (e.key === '/' && !/^(INPUT|TEXTAREA|SELECT)$/.test(document.activeElement.tagName)) {
    e.preventDefault();
    $('search-q').focus();
  }
});

// ---- router ------------------------------------------------------------------------
let teardown = () => {};
function route() {
  teardown();
  teardown = () => {};
  $('logout').hidden = !auth.token;
  main.replaceChildren();
  const hash = location.hash.slice(1) || '/';
  const [path, query] = hash.split('?');
  const q = new URLSearchParams(query || '');
  if (path.startsWith('/c/')) return contextView(decodeURIComponent(path.slice(3)), q);
  if (path === '/search') return searchView(q);
  return contextsView(q);
}
window.addEventListener('hashchange', route);

const ctxLink = (id, text = id, seq) => el('a', { href: `#/c/${enc(id)}${seq ? `?seq=${seq}` : ''}` }, text);
const ago = (ts) => {
  const d = time(ts);
  if (!d) return '';
  const s = Math.max(0, Math.round((Date.now() - d) / 1000));
  return s < 60 ? `${s}s ago` : s < 3600 ? `${Math.round(s / 60)}m ago` : s < 86400 ? `${Math.round(s / 3600)}h ago` : d.toLocaleDateString();
};
const failure = (e, where) => el('p', { class: 'muted' }, `${where}: ${e.message}`);

// ---- contexts ------------------------------------------------------------------------
function contextsView(q) {
  state.view = 'contexts';
  const prefix = el('input', { type: 'search', value: q.get('prefix') || '', placeholder: 'filter by id prefix',
    'aria-label': 'filter contexts by id prefix' });
  const body = el('tbody');
  const table = el('table', { id: 'contexts' }, el('thead', {}, el('tr', {},
    el('th', {}, 'context'), el('th', {}, 'head seq'), el('th', {}, 'agents present'), el('th', {}, 'last activity'))), body);
  main.append(el('h1', {}, 'Contexts'), el('div', { class: 'toolbar' }, prefix, el('span', { class: 'muted small' }, 'updates every 2 s')), table);
  let timer = null, alive = true, generation = 0;
  const load = async () => {
    const mine = ++generation;  // a newer load (the filter changed) supersedes this one
    clearTimeout(timer);
    try {
      const page = await api('GET', `/contexts?limit=100&prefix=${enc(prefix.value)}`);
      const rows = await Promise.all(page.contexts.map(async (c) => {
        let present = [];
        try { present = (await api('GET', `/contexts/${enc(c.id)}/presence`)).agents.map((a) => a.agent_id); } catch { /* no grant */ }
        return el('tr', { 'data-context': c.id },
          el('td', {}, ctxLink(c.id, c.display_name ? `${c.display_name} (${c.id})` : c.id)),
          el('td', {}, String(c.head_seq)),
          el('td', { class: 'present' }, present.join(', ') || el('span', { class: 'muted' }, 'none')),
          el('td', { title: fmtTime(c.updated_at) }, ago(c.updated_at)));
      }));
      if (!alive || mine !== generation) return;
      body.replaceChildren(...rows);
      if (!rows.length) body.append(el('tr', {}, el('td', { colspan: 4, class: 'muted' }, prefix.value ? 'No context starts with that.' : 'No contexts yet.')));
    } catch (e) {
      if (alive && mine === generation) body.replaceChildren(el('tr', {}, el('td', { colspan: 4 }, failure(e, 'Contexts'))));
    }
    if (alive && mine === generation) timer = setTimeout(load, 2000);
  };
  prefix.addEventListener('input', () => { history.replaceState(null, '', `#/?prefix=${enc(prefix.value)}`); load(); });
  load();
  teardown = () => { alive = false; clearTimeout(timer); };
}

// ---- a context -----------------------------------------------------------------------
const MAX_ROWS = 400;  // DOM rows kept: older or newer units are re-read when scrolled to
const PAGE = 100;

class Timeline {
  constructor(context, box, onEvent) {
    Object.assign(this, { context, box, onEvent, units: [], bySeq: new Map(), calls: new Map(), results: new Map(),
      attached: true, newer: 0, loading: false, atStart: false, stream: null, drafts: new Map(), recent: [] });
    this.list = el('div', { class: 'units', role: 'feed', 'aria-label': 'work units' });
    this.top = el('div', { class: 'notice muted' });
    // "Jump to latest" floats at the bottom of the visible timeline (sticky), so it is
    // clicked without scrolling, which would page in newer units under the pointer;
    // one button, relabelled, never replaced.
    this.jump = el('button', { type: 'button', onclick: () => this.latest() });
    this.bottom = el('div', { class: 'notice jump', hidden: '' }, this.jump);
    this.draftBox = el('div', { class: 'drafts' });
    box.append(this.top, this.list, this.draftBox, this.bottom);
    box.addEventListener('scroll', () => this.onScroll());
    this.ctx = { resultOf: (id) => this.results.get(id), callOf: (id) => this.calls.get(id), open: (id) => this.openUnit(id) };
    this.list.addEventListener('click', (e) => {
      const a = e.target.closest('a[data-seq]');
      if (a) { e.preventDefault(); this.jumpTo(Number(a.dataset.seq)); }
    });
  }

  index(u) {
    if (u.call_id && u.type === 3) this.calls.set(u.call_id, u);
    if (u.call_id && u.type === 4) this.results.set(u.call_id, u);
  }

  row(u) { return renderUnit(u, this.ctx); }

  // Replaces the window with `units` (ascending).
  reset(units, attached) {
    this.units = units;
    this.bySeq = new Map(units.map((u) => [u.seq, u]));
    units.forEach((u) => this.index(u));
    this.list.replaceChildren(...units.map((u) => this.row(u)));
    this.attached = attached;
    this.newer = 0;
    this.atStart = units.length === 0 || units[0].seq === 1;
    if (attached) this.catchUp();
    this.notices();
  }

  // Live units that arrived while a page was being read, or while the window was
  // away from the head: appended once the window reaches the head again.
  catchUp() {
    const last = this.units.length ? this.units[this.units.length - 1].seq : 0;
    for (const u of this.recent) if (u.seq > last) this.appendRow(u);
    this.trim();
  }

  // At most MAX_ROWS rows: drop from the end away from the head.
  trim() {
    while (this.list.children.length > MAX_ROWS) this.dropOldest();
  }

  notices() {
    this.top.textContent = this.atStart ? 'Start of the context.' : 'Scroll up for older units.';
    this.bottom.hidden = this.attached;
    const label = this.newer ? `${this.newer} newer units · jump to latest` : 'Newer units below · jump to latest';
    if (this.jump.textContent !== label) this.jump.textContent = label;
    state.timeline = { context: this.context, seqs: this.units.map((u) => u.seq), rows: this.list.children.length,
      attached: this.attached, atStart: this.atStart, live: !!this.stream, drafts: [...this.drafts.keys()],
      focused: state.timeline?.focused };
  }

  async latest() {
    this.loading = true;
    let page;
    try { page = await api('GET', `/workunits/${enc(this.context)}?reverse=true&limit=${PAGE}&text=1`); }
    finally { this.loading = false; }
    this.reset(page.work_units.reverse(), true);
    this.box.scrollTop = this.box.scrollHeight;
    return this.units.length ? this.units[this.units.length - 1].seq : 0;
  }

  // Units with seq in (after, before), ascending: pages forward from `after`.
  async range(after, before, limit) {
    const page = await api('GET', `/workunits/${enc(this.context)}?after_seq=${after}&limit=${limit}&text=1`);
    return page.work_units.filter((u) => before === undefined || u.seq < before);
  }

  async loadOlder() {
    if (this.loading || this.atStart || !this.units.length) return;
    this.loading = true;
    try {
      const lo = this.units[0].seq;
      let older = [];
      // Seqs are shared with the log's other events: widen the span until it holds
      // units, reading each span to its end (a full page continues after its last).
      for (let span = PAGE * 2; older.length === 0; span *= 4) {
        let after = Math.max(0, lo - 1 - span);
        const from = after;
        for (;;) {
          const page = await this.range(after, lo, 1000);
          older = older.concat(page).slice(-PAGE);
          if (page.length < 1000 || page[page.length - 1].seq >= lo - 1) break;
          after = page[page.length - 1].seq;
        }
        if (from === 0) break;
      }
      if (!older.length) { this.atStart = true; return this.notices(); }
      const before = this.box.scrollHeight;
      older.forEach((u) => { this.bySeq.set(u.seq, u); this.index(u); });
      this.units = older.concat(this.units);
      this.list.prepend(...older.map((u) => this.row(u)));
      this.box.scrollTop += this.box.scrollHeight - before;  // keep what the reader looks at in place
      this.atStart = older[0].seq === 1;
      while (this.list.children.length > MAX_ROWS) this.dropNewest();
    } finally {
      this.loading = false;
      if (this.attached) this.catchUp();
      this.notices();
    }
  }

  async loadNewer() {
    if (this.loading || this.attached || !this.units.length) return;
    this.loading = true;
    try {
      const hi = this.units[this.units.length - 1].seq;
      const newer = await this.range(hi, undefined, PAGE);
      for (const u of newer) this.appendRow(u);
      if (newer.length < PAGE) { this.attached = true; this.newer = 0; }
    } finally {
      this.loading = false;
      if (this.attached) this.catchUp();
      this.notices();
    }
  }

  dropNewest() {
    const u = this.units.pop();
    this.bySeq.delete(u.seq);
    this.list.lastElementChild.remove();
    this.attached = false;
  }

  dropOldest() {
    const before = this.box.scrollHeight;
    const u = this.units.shift();
    this.bySeq.delete(u.seq);
    this.list.firstElementChild.remove();
    this.box.scrollTop -= before - this.box.scrollHeight;
    this.atStart = false;
  }

  appendRow(u) {
    if (this.bySeq.has(u.seq)) return;
    this.bySeq.set(u.seq, u);
    this.index(u);
    this.units.push(u);
    this.list.append(this.row(u));
    // A result completes its call: show the call again with it.
    if (u.type === 4 && u.call_id) {
      const call = this.calls.get(u.call_id);
      const old = call && this.list.querySelector(`[data-seq="${call.seq}"]`);
      if (old) old.replaceWith(this.row(call));
    }
  }

  onScroll() {
    if (this.box.scrollTop < 200) this.loadOlder();
    else if (this.box.scrollHeight - this.box.scrollTop - this.box.clientHeight < 200) this.loadNewer();
  }

  live(since, onState) {
    this.stream = new LiveStream(this.context, since, {
      onState: (s, why) => {
        // Drafts live only in the server's memory: a new subscription's snapshots
        // are the truth (one that ended while disconnected is gone).
        if (s === 'live') { this.draftBox.replaceChildren(); this.drafts.clear(); }
        onState(s, why);
        this.notices();
      },
      onEvent: (msg) => this.event(msg),
    });
    this.notices();
  }

  event(msg) {
    if (typeof msg.type === 'number') {  // a work unit
      for (const [id, d] of this.drafts) if (d.unit_seq === msg.seq) { d.node.remove(); this.drafts.delete(id); }
      this.recent.push(msg);
      if (this.recent.length > 2 * MAX_ROWS) this.recent.splice(0, MAX_ROWS);
      // Away from the head, or a page is being read: catchUp() adds it when attached.
      if (!this.attached || this.loading) { if (!this.attached) this.newer++; return this.notices(); }
      const follow = this.box.scrollHeight - this.box.scrollTop - this.box.clientHeight < 80;
      this.appendRow(msg);
      this.trim();
      if (follow) this.box.scrollTop = this.box.scrollHeight;
      return this.notices();
    }
    if (msg.type === 'draft' || msg.type === 'delta' || msg.type === 'draft_end') return this.draft(msg);
    this.onEvent(msg);
  }

  // Partial output an agent is still writing: forming at the end, gone when it
  // ends (a committed draft's unit takes its place).
  draft(msg) {
    const id = msg.draft_id;
    let d = this.drafts.get(id);
    if (msg.type === 'draft_end') {
      if (d) {
        if (msg.reason === 'committed') d.unit_seq = msg.unit_seq;
        else { d.node.classList.add('ended'); setTimeout(() => d.node.remove(), 1500); this.drafts.delete(id); }
        if (msg.reason === 'committed' && this.bySeq.has(msg.unit_seq)) { d.node.remove(); this.drafts.delete(id); }
      }
      return this.notices();
    }
    if (!d) {
      d = { text: '', node: el('article', { class: 'unit draft', 'data-draft': id }) };
      this.drafts.set(id, d);
      this.draftBox.append(d.node);
    }
    d.text = msg.type === 'draft' ? (msg.text || '') : d.text + (msg.text || '');
    d.node.replaceChildren(el('header', {}, el('span', { class: 'author' }, msg.agent_id), el('span', { class: 'kind' }, 'writing…')),
      el('div', { class: 'body' }, d.text));
    if (this.attached) this.box.scrollTop = this.box.scrollHeight;
    this.notices();
  }

  async jumpTo(seq) {
    let row = this.list.querySelector(`[data-seq="${seq}"]`);
    if (!row) {
      this.loading = true;
      let around;
      try { around = await this.range(Math.max(0, seq - PAGE / 2), undefined, PAGE); }
      finally { this.loading = false; }
      // A short page reached the head; catchUp() then adds what arrived live meanwhile.
      this.reset(around, around.length < PAGE);
      row = this.list.querySelector(`[data-seq="${seq}"]`);
    }
    if (!row) return;
    row.scrollIntoView({ block: 'center' });
    row.classList.add('flash');
    row.focus({ preventScroll: true });
    setTimeout(() => row.classList.remove('flash'), 2000);
    state.timeline.focused = seq;
  }

  async openUnit(id) {
    for (const u of this.units) if (u.id === id) return this.jumpTo(u.seq);
    try {
      const { work_unit: u } = await api('GET', `/workunit/${enc(id)}`);
      if (u.context_id !== this.context) location.hash = `#/c/${enc(u.context_id)}?seq=${u.seq}`;
      else this.jumpTo(u.seq);
    } catch (e) { alert(`That unit cannot be opened: ${e.message}`); }
  }

  close() { if (this.stream) this.stream.close(); }
}

function contextView(context, q) {
  state.view = 'context';
  const timelineBox = el('div', { class: 'timeline', id: 'timeline', tabindex: '0', 'aria-label': 'timeline' });
  const packetBox = el('div', { id: 'packet', hidden: true });
  const tabs = el('div', { class: 'tabs', role: 'tablist' });
  const side = el('aside', { class: 'side' });
  const agent = el('input', { id: 'post-as', value: auth.subject || localStorage.getItem('engram.agent') || 'human',
    'aria-label': 'post as agent', size: 12, readonly: auth.subject ? true : undefined });
  const message = el('textarea', { id: 'post-text', placeholder: 'Post a message into this context (Ctrl+Enter)', 'aria-label': 'message' });
  const compose = el('form', { class: 'compose', id: 'compose' }, agent, message, el('button', {}, 'Post'));
  main.append(el('h1', {}, el('a', { href: '#/' }, 'Contexts'), ' / ', context),
    el('div', { class: 'layout' }, el('div', {}, tabs, timelineBox, packetBox, compose), side));

  const select = (name) => {
    for (const b of tabs.children) b.setAttribute('aria-selected', String(b.dataset.tab === name));
    timelineBox.hidden = compose.hidden = name !== 'timeline';
    packetBox.hidden = name !== 'packet';
  };
  for (const [name, label] of [['timeline', 'Timeline'], ['packet', 'Packet preview']])
    tabs.append(el('button', { type: 'button', role: 'tab', 'data-tab': name, onclick: () => select(name) }, label));
  select('timeline');

  // Side panels, refreshed on the stream's lease, presence, task and fact events.
  const panels = {
    presence: el('ul', { id: 'presence' }), leases: el('ul', { id: 'leases' }),
    tasks: el('div', { id: 'tasks' }), facts: el('ul', { id: 'facts' }),
  };
  side.append(
    el('section', { class: 'panel' }, el('h2', {}, 'Agents present'), panels.presence),
    el('section', { class: 'panel' }, el('h2', {}, 'Leases'), panels.leases),
    el('section', { class: 'panel' }, el('h2', {}, 'Tasks'), panels.tasks),
    el('section', { class: 'panel' }, el('h2', {}, 'Facts'), panels.facts));
  let leases = [];
  const refresh = async () => {
    const c = enc(context);
    const [presence, locks, tasks, facts] = await Promise.allSettled([api('GET', `/contexts/${c}/presence`),
      api('GET', '/locks'), api('GET', `/contexts/${c}/tasks?limit=1000`), api('GET', `/contexts/${c}/facts`)]);
    if (presence.status === 'fulfilled')
      panels.presence.replaceChildren(...(presence.value.agents.length ? presence.value.agents.map((a) =>
        el('li', { 'data-agent': a.agent_id }, el('strong', {}, a.agent_id), a.status ? ` · ${a.status}` : '',
          el('div', { class: 'small muted' }, `seen ${ago(a.last_seen)}`))) : [el('li', { class: 'muted' }, 'nobody')]));
    if (locks.status === 'fulfilled') { leases = locks.value.locks.filter((l) => l.context_id === context); drawLeases(); }
    if (tasks.status === 'fulfilled') {
      const by = { open: [], claimed: [], stranded: [], done: [], failed: [] };
      for (const t of tasks.value.tasks) (by[t.status] || (by[t.status] = [])).push(t);
      panels.tasks.replaceChildren(...(tasks.value.tasks.length ? Object.entries(by).filter(([, ts]) => ts.length).map(([s, ts]) =>
        el('div', { 'data-status': s }, el('h3', { class: 'small' }, `${s} (${ts.length})`),
          el('ul', {}, ts.map((t) => el('li', { 'data-task': t.task_id }, t.title,
            el('div', { class: 'small muted' }, [t.holder_agent && `by ${t.holder_agent}`, t.last_holder && `last held by ${t.last_holder}`,
              t.attempts && `attempt ${t.attempts}`, t.error].filter(Boolean).join(' · '))))))) : [el('p', { class: 'muted' }, 'no tasks')]));
    }
    if (facts.status === 'fulfilled')
      panels.facts.replaceChildren(...(facts.value.facts.length ? facts.value.facts.map((f) =>
        el('li', { 'data-key': f.key }, el('code', {}, f.key), ' = ', JSON.stringify(f.value),
          el('div', { class: 'small muted' }, `${f.agent_id} · #${f.set_at_seq}${f.status !== 'active' ? ` · ${f.status}` : ''}`)))
        : [el('li', { class: 'muted' }, 'no facts')]));
  };
  const drawLeases = () => {
    const now = Date.now();
    panels.leases.replaceChildren(...(leases.length ? leases.map((l) => {
      const left = Math.max(0, Math.round((time(l.expires_at) - now) / 1000));
      return el('li', { 'data-resource': l.resource_path }, el('code', {}, l.resource_path),
        el('div', { class: 'small' }, `held by ${l.holder_agent} · `, el('span', { class: 'countdown' }, left ? `expires in ${left}s` : 'expiring'),
          ` · fence ${l.fencing_token}`),
        el('button', { type: 'button', class: 'danger small', onclick: () => release(l) }, 'Release'));
    }) : [el('li', { class: 'muted' }, 'no leases')]));
  };
  const release = async (l) => {
    if (!confirm(`Release ${l.resource_path}, held by ${l.holder_agent}? The holder's fencing token stops working.`)) return;
    try {
      // X-Agent-ID names the operator in the release event (a token's subject wins).
      await api('DELETE', `/locks/${l.resource_path.split('/').map(enc).join('/')}?agent_id=${enc(l.holder_agent)}&lock_id=${enc(l.lock_id)}`,
        undefined, { 'X-Agent-ID': document.getElementById('post-as')?.value || 'human' });
    } catch (e) { alert(`Not released: ${e.message}`); }
    refresh();
  };
  let pending = null;
  const soon = () => { clearTimeout(pending); pending = setTimeout(refresh, 200); };
  const tick = setInterval(() => { drawLeases(); if (Date.now() % 5000 < 1000) refresh(); }, 1000);

  const tl = new Timeline(context, timelineBox, soon);
  const onState = (s, why) => {
    if (s === 'live') { setConn('live', 'live'); hideProblem(); soon(); }
    else if (s === 'reconnecting') { state.reconnects++; setConn('down', 'disconnected, reconnecting…'); }
    else if (s === 'refused') { setConn('down', 'refused'); showProblem(`The server refused the stream (${why.status}): ${why.message}`, why.status === 401 || why.status === 403); }
  };
  (async () => {
    try {
      const seq = Number(q.get('seq'));
      const last = await tl.latest();
      tl.live(last, onState);
      if (seq) await tl.jumpTo(seq);
    } catch (e) { timelineBox.replaceChildren(failure(e, 'Timeline')); }
  })();
  refresh();

  compose.addEventListener('submit', async (e) => {
    e.preventDefault();
    if (!message.value.trim()) return;
    localStorage.setItem('engram.agent', agent.value);
    try {
      await api('POST', '/workunits', { context_id: context, agent_id: agent.value, work_units: [{ type: 'MESSAGE', text: message.value }] });
      message.value = '';
    } catch (err) { alert(`Not posted: ${err.message}`); }
  });
  message.addEventListener('keydown', (e) => { if (e.key === 'Enter' && e.ctrlKey) compose.requestSubmit(); });

  packetView(context, packetBox);
  teardown = () => { tl.close(); clearInterval(tick); clearTimeout(pending); state.timeline = null; setConn('idle', 'connected'); };
}

// ---- packet preview ------------------------------------------------------------------
function packetView(context, box) {
  const agent = el('input', { id: 'packet-agent', value: auth.subject || 'agent', 'aria-label': 'for agent', size: 12 });
  const tokens = el('input', { id: 'packet-tokens', type: 'number', value: '2000', min: '1', 'aria-label': 'max tokens', size: 6 });
  const query = el('input', { id: 'packet-query', placeholder: 'query (optional)', 'aria-label': 'query' });
  const out = el('div', { id: 'packet-out' });
  const form = el('form', { class: 'toolbar' }, 'for ', agent, 'max tokens ', tokens, query, el('button', {}, 'Preview'));
  box.append(form, out);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const body = { agent_id: agent.value, budget: { max_tokens: Number(tokens.value) } };
    if (query.value) body.query = query.value;
    try {
      const p = await api('POST', `/contexts/${enc(context)}/packet`, body);
      const r = p.budget_report;
      const label = (it) => it.kind === 'unit' ? `#${it.seq} ${it.unit.agent_id} (${TYPES[it.unit.type]}): ${(it.unit.text ?? '').slice(0, 140)}`
        : it.kind === 'fact' ? `${it.key} = ${JSON.stringify(it.fact.value)}` : `${it.kind} ${it.key ?? it.seq ?? ''}`;
      const why = (w) => w ? `score ${w.score.toFixed(3)} · by ${w.selected_by} · ${Object.entries(w.signals).map(([k, v]) => `${k} ${v}`).join(', ')}` : '';
      out.replaceChildren(
        el('p', {}, `${r.used_tokens} of ${r.max_tokens} tokens · ${p.items.length} items · ${r.omitted.length} omitted${r.tight ? ' · tight' : ''}`),
        el('div', { class: 'grid2' },
          el('section', { class: 'panel' }, el('h2', {}, 'Shown'), el('ul', { id: 'packet-items' }, p.items.map((it) =>
            el('li', { 'data-section': it.section }, el('span', { class: 'badge' }, it.section), ' ', label(it), ` · ${it.tokens} tok`,
              el('div', { class: 'why' }, why(it.why)))))),
          el('section', { class: 'panel' }, el('h2', {}, 'Omitted'), el('ul', { id: 'packet-omitted' }, r.omitted.slice(0, 300).map((o) =>
            el('li', {}, el('span', { class: 'badge' }, o.reason), ` ${o.section} ${o.kind} ${o.seq ?? o.key ?? ''} · ${o.tokens} tok`))))));
    } catch (err) { out.replaceChildren(failure(err, 'Packet')); }
  });
}

// ---- search --------------------------------------------------------------------------
function highlight(text, terms) {
  if (!terms.length) return [text];
  const re = new RegExp(`(${terms.map((t) => t.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('|')})`, 'gi');
  return text.split(re).map((part, i) => (i % 2 ? el('mark', {}, part) : part));
}

async function searchView(q) {
  state.view = 'search';
  const query = q.get('q') || '', mode = q.get('mode') || 'keyword';
  $('search-q').value = query;
  $('search-mode').value = mode;
  const out = el('div', { id: 'results' }, el('p', { class: 'muted' }, 'Searching…'));
  main.append(el('h1', {}, `Search: ${query}`), out);
  if (!query) return out.replaceChildren(el('p', { class: 'muted' }, 'Type a query above.'));
  try {
    const r = await api('POST', '/search', { query, mode, limit: 50 });
    const terms = query.split(/\s+/).filter((t) => /^[\p{L}\p{N}_-]{2,}$/u.test(t));
    out.replaceChildren(el('p', { class: 'muted' }, `${r.total_count} results (${r.mode}${r.degraded ? ', degraded' : ''})`),
      ...r.hits.map((h) => el('div', { class: 'hit' },
        el('div', {}, ctxLink(h.context_id, `${h.context_id} #${h.seq}`, h.seq), ' ',
          el('span', { class: 'muted small' }, `${h.agent_id} · ${TYPES[h.type] || h.type} · ${fmtTime(h.ts)} · score ${h.score.toFixed(3)}`)),
        el('div', { class: 'snippet' }, highlight(h.snippet || '', terms)))));
  } catch (e) { out.replaceChildren(failure(e, 'Search')); }
}

route();
