// Browser test: headless Chromium loads /ui/live from the real engram binary and
// watches a draft (partial LLM output) form word by word over REST deltas, on both
// transports: the page's lists show it while it is written, a second page opened
// mid-draft shows it at once (the server's "draft" snapshot) and keeps following,
// the commit replaces it with the unit, and an aborted draft is struck through and
// then removed.
//
//   node tests/browser/draft.test.mjs <path to engram binary>
// Exit codes: 0 pass, 1 fail, 77 skipped (chromium cannot start at all).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fail, freePort, launchBrowser, openPage, ready, reportFailure, startServer, waitFor } from './support.mjs';

const binary = process.argv[2];
const context = 'browser/draft';
const agent = 'writer';
const words = ('The flaky test is the end to end login which races the session cookie ' +
               'against the redirect on slow runners').split(' ');
if (words.length !== 20) throw new Error(`expected 20 words, got ${words.length}`);
const soFar = (n) => words.slice(0, n).join(' ');  // the draft after n deltas
const finalText = `${soFar(words.length)}.`;      // what the commit stores
const work = mkdtempSync(join(tmpdir(), 'engram-browser-'));

const port = await freePort();
const base = `http://127.0.0.1:${port}`;
const drafts = `${base}/contexts/${encodeURIComponent(context)}/drafts`;
const pageUrl = `${base}/ui/live?context=${encodeURIComponent(context)}&since=0`;

async function call(method, url, body, want) {
  const r = await fetch(url, { method, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  if (r.status !== want) fail(`${method} ${url} got ${r.status} (want ${want}): ${text}`);
  return JSON.parse(text);
}
const delta = (id, index) =>
  call('POST', `${drafts}/${id}/deltas`, { agent_id: agent, index, text: (index ? ' ' : '') + words[index] }, 200);

// Before the page's own script: records every draft message each transport
// delivers, so the test can tell a "draft" snapshot from deltas.
function recordWire() {
  const wire = window.__wire = { ws: [], sse: [] };
  const note = (transport, type, data) => {
    const m = JSON.parse(data);
    wire[transport].push({ type, draft_id: m.draft_id, index: m.index, reason: m.reason, seq: m.unit_seq });
  };
  const NativeWebSocket = window.WebSocket;
  window.WebSocket = class extends NativeWebSocket {
    constructor(...args) {
      super(...args);
      this.addEventListener('message', (m) => {
        const type = JSON.parse(m.data).type;
        if (type === 'delta' || type === 'draft' || type === 'draft_end') note('ws', type, m.data);
      });
    }
  };
  const NativeEventSource = window.EventSource;
  window.EventSource = class extends NativeEventSource {
    constructor(...args) {
      super(...args);
      for (const type of ['delta', 'draft', 'draft_end']) this.addEventListener(type, (m) => note('sse', type, m.data));
    }
  };
}

// What the user sees in each list: the draft rows and the unit rows.
const dom = (page) => page.evaluate(() => {
  const read = (id) => {
    const list = document.getElementById(id);
    const rows = [...list.querySelectorAll('li')];
    return {
      drafts: rows.filter((li) => li.classList.contains('draft')).map((li) => ({
        id: li.dataset.draft, text: li.textContent, ended: li.classList.contains('ended'),
        visible: li.checkVisibility(), last: li === rows[rows.length - 1] })),
      units: rows.filter((li) => !li.classList.contains('draft')).map((li) => ({ seq: li.value, text: li.textContent })),
    };
  };
  return { ws: read('ws-list'), sse: read('sse-list') };
});

// Waits until the draft `id` shows exactly `text` (after "writer: "), visible, in
// both lists of the page, and window.engram agrees.
async function waitForDraft(name, view, id, text) {
  const want = `${agent}: ${text}`;
  let seen;
  try {
    await waitFor(`${name} to show draft ${id} as ${JSON.stringify(want)} in both lists`, async () => {
      const d = await dom(view.page);
      const s = await view.state();
      seen = { dom: d, drafts: s.drafts };
      return ['ws', 'sse'].every((t) => {
        const rows = d[t].drafts.filter((r) => r.id === id);
        return rows.length === 1 && rows[0].text === want && rows[0].visible && !rows[0].ended &&
               s.drafts[t][id] === text;
      });
    });
  } catch (e) {
    console.error(`${name} last showed: ${JSON.stringify(seen)}`);
    throw e;
  }
}

async function openLive(browser, name) {
  const view = await openPage(browser);
  view.name = name;
  await view.page.addInitScript(recordWire);
  await view.page.goto(pageUrl);
  await waitFor(`${name}: both transports to connect`, async () => {
    const s = await view.state();
    return s.wsOpens >= 1 && s.sseOpens >= 1;
  });
  return view;
}

let server = startServer(binary, port, join(work, 'data'));
let browser;
try {
  await ready(base);
  browser = await launchBrowser();
  const first = await openLive(browser, 'page 1');

  // 1. The draft forms: after 5 deltas both lists show the text so far, and
  // nothing has been committed.
  for (let i = 0; i < 5; i++) await delta('answer-1', i);
  await waitForDraft('page 1', first, 'answer-1', soFar(5));
  {
    const d = await dom(first.page);
    const s = await first.state();
    if (d.ws.units.length || d.sse.units.length || s.ws.length || s.sse.length) {
      fail(`units shown before any commit: ${JSON.stringify({ dom: d, ws: s.ws, sse: s.sse })}`);
    }
  }
  for (let i = 5; i < 10; i++) await delta('answer-1', i);
  await waitForDraft('page 1', first, 'answer-1', soFar(10));

  // 2. A late joiner, mid-draft: it shows the 10 words at once, with no delta sent
  // since it opened, so they came from the server's "draft" snapshot.
  const late = await openLive(browser, 'page 2 (late joiner)');
  await waitForDraft('page 2 (late joiner)', late, 'answer-1', soFar(10));
  {
    const wire = await late.page.evaluate(() => window.__wire);
    for (const t of ['ws', 'sse']) {
      const opening = wire[t].find((m) => m.draft_id === 'answer-1');
      if (!opening || opening.type !== 'draft' || opening.index !== 9) {
        fail(`late joiner's first ${t} message for answer-1 is not the draft snapshot up to index 9: ${JSON.stringify(wire[t])}`);
      }
    }
  }

  // 3. The rest of the words, one by one; both pages follow on both transports.
  for (let i = 10; i < 15; i++) await delta('answer-1', i);
  await waitForDraft('page 2 (late joiner)', late, 'answer-1', soFar(15));
  for (let i = 15; i < words.length; i++) await delta('answer-1', i);
  for (const view of [first, late]) await waitForDraft(view.name, view, 'answer-1', soFar(words.length));
  {
    const wire = await late.page.evaluate(() => window.__wire);
    for (const t of ['ws', 'sse']) {
      const got = wire[t].filter((m) => m.draft_id === 'answer-1' && m.type === 'delta').map((m) => m.index);
      if (JSON.stringify(got) !== JSON.stringify([...Array(10).keys()].map((i) => i + 10))) {
        fail(`late joiner's ${t} deltas after the snapshot are ${JSON.stringify(got)}, want 10..19`);
      }
    }
  }

  // 4. Commit: the draft row goes, the unit (with the final text) takes its place.
  const committed = await call('POST', `${drafts}/answer-1/commit`, { agent_id: agent, text: finalText }, 201);
  const seq = committed.work_unit?.seq;
  if (!Number.isInteger(seq) || committed.work_unit.meta?.draft_id !== 'answer-1' || committed.draft_ended !== true) {
    fail(`unexpected commit answer: ${JSON.stringify(committed)}`);
  }
  for (const view of [first, late]) {
    let seen;
    try {
      await waitFor(`${view.name}: the committed unit ${seq} in place of the draft`, async () => {
        const d = await dom(view.page);
        const s = await view.state();
        seen = { dom: d, state: s };
        return ['ws', 'sse'].every((t) =>
          d[t].drafts.length === 0 && s[t].includes(seq) && !(('answer-1') in s.drafts[t]) &&
          s.draftEnds[t].some((e) => e.draft_id === 'answer-1' && e.reason === 'committed' && e.seq === seq) &&
          d[t].units.some((u) => u.seq === seq && u.text === `${agent}: ${finalText}`));
      });
    } catch (e) {
      console.error(`${view.name} last showed: ${JSON.stringify(seen)}`);
      throw e;
    }
  }

  // 5. Abort: a second draft shows, is struck through when deleted, and goes ~2 s later.
  for (let i = 0; i < 2; i++) await delta('answer-2', i);
  for (const view of [first, late]) await waitForDraft(view.name, view, 'answer-2', soFar(2));
  for (const view of [first, late]) {
    // Records the draft rows' class changes and removals, with times, so a busy
    // machine cannot make the test miss the 2 s the struck-through row is shown.
    await view.page.evaluate(() => {
      const log = window.__draftRows = [];
      for (const id of ['ws-list', 'sse-list']) {
        new MutationObserver((records) => {
          for (const r of records) {
            if (r.type === 'attributes' && r.target.matches('li.draft.ended')) {
              log.push({ list: id, draft: r.target.dataset.draft, what: 'ended', text: r.target.textContent,
                         t: performance.now() });
            }
            for (const n of r.removedNodes) {
              if (n.dataset?.draft) log.push({ list: id, draft: n.dataset.draft, what: 'removed', t: performance.now() });
            }
          }
        }).observe(document.getElementById(id), { subtree: true, childList: true, attributes: true, attributeFilter: ['class'] });
      }
    });
  }
  const aborted = await call('DELETE', `${drafts}/answer-2`, undefined, 200);
  if (aborted.aborted !== true) fail(`unexpected abort answer: ${JSON.stringify(aborted)}`);
  for (const view of [first, late]) {
    let seen;
    try {
      await waitFor(`${view.name}: the aborted draft struck through, then removed, in both lists`, async () => {
        const d = await dom(view.page);
        const s = await view.state();
        const rows = await view.page.evaluate(() => window.__draftRows);
        seen = { dom: d, draftEnds: s.draftEnds, rows };
        return ['ws', 'sse'].every((t) =>
          d[t].drafts.length === 0 &&
          s.draftEnds[t].some((e) => e.draft_id === 'answer-2' && e.reason === 'aborted') &&
          rows.some((r) => r.list === `${t}-list` && r.draft === 'answer-2' && r.what === 'removed'));
      });
      const rows = await view.page.evaluate(() => window.__draftRows);
      for (const t of ['ws', 'sse']) {
        const mine = rows.filter((r) => r.list === `${t}-list` && r.draft === 'answer-2');
        const ended = mine.find((r) => r.what === 'ended');
        const removed = mine.find((r) => r.what === 'removed');
        if (!ended || mine.indexOf(ended) > mine.indexOf(removed)) fail(`${t}: the aborted draft was not struck through before it went: ${JSON.stringify(mine)}`);
        if (ended.text !== `${agent}: ${soFar(2)}`) fail(`${t}: the struck-through draft shows ${JSON.stringify(ended.text)}`);
        const shown = removed.t - ended.t;
        if (shown < 1500 || shown > 10000) fail(`${t}: the aborted draft was struck through for ${Math.round(shown)} ms, want about 2000`);
      }
    } catch (e) {
      console.error(`${view.name} last showed: ${JSON.stringify(seen)}`);
      throw e;
    }
  }

  // 6. Nothing else changed: one unit on each transport, no page errors.
  for (const view of [first, late]) {
    const s = await view.state();
    if (JSON.stringify(s.ws) !== JSON.stringify([seq]) || JSON.stringify(s.sse) !== JSON.stringify([seq])) {
      fail(`${view.name}: units ws ${JSON.stringify(s.ws)} sse ${JSON.stringify(s.sse)}, want [${seq}]`);
    }
    if (view.errors.length) fail(`${view.name}: page errors: ${view.errors.join('; ')}`);
  }
  console.log(`PASS: a 20-delta draft showed while forming on WebSocket and SSE (a page opened mid-draft got ` +
              `the snapshot and the rest), its commit became unit ${seq}, and an aborted draft was struck through then removed`);
} catch (e) {
  reportFailure(e, server);
} finally {
  if (browser) await browser.close();
  if (server.exitCode === null && server.signalCode === null) {
    const exited = new Promise((r) => server.once('exit', r));
    server.kill('SIGKILL');
    await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);  // then remove its data
  }
  rmSync(work, { recursive: true, force: true });
}
