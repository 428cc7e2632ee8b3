// Browser test: headless Chromium (Debian's chromium, driven by playwright-core)
// loads /ui/live from the real engram binary; the page subscribes with WebSocket and
// EventSource. The test appends units over REST, SIGKILLs and restarts the server
// (dropping both connections), appends more, and checks that each transport ended
// with every seq exactly once, in order.
//
//   node tests/browser/stream.test.mjs <path to engram binary>
// Exit codes: 0 pass, 1 fail, 77 skipped (chromium cannot start at all).
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fail, freePort, launchBrowser, openPage, ready, reportFailure, startServer, waitFor } from './support.mjs';

const binary = process.argv[2];
const work = mkdtempSync(join(tmpdir(), 'engram-browser-'));
const start = (port) => startServer(binary, port, join(work, 'data'));

async function append(base, text) {
  const r = await fetch(`${base}/workunit`, {
    method: 'POST',
    body: JSON.stringify({ context_id: 'browser/demo', agent_id: 'node-test', type: 'MESSAGE', text }),
  });
  if (r.status !== 201) fail(`append got ${r.status}: ${await r.text()}`);
  return (await r.json()).work_unit.seq;
}

const port = await freePort();
const base = `http://127.0.0.1:${port}`;
let server = start(port);
let browser;
try {
  await ready(base);
  browser = await launchBrowser();
  const { page, errors: pageErrors, state } = await openPage(browser);
  await page.goto(`${base}/ui/live?context=browser/demo&since=0`);
  await waitFor('both transports to connect', async () => {
    const s = await state();
    return s.wsOpens >= 1 && s.sseOpens >= 1;
  });

  for (let i = 1; i <= 5; i++) await append(base, `before restart ${i}`);
  await waitFor('5 units on both transports', async () => {
    const s = await state();
    return s.ws.length >= 5 && s.sse.length >= 5;
  });

  // Drop both connections the hard way, then bring the server back on the same port.
  server.kill('SIGKILL');
  await new Promise((r) => server.once('exit', r));
  server = start(port);
  await ready(base);
  for (let i = 6; i <= 10; i++) await append(base, `after restart ${i}`);
  await waitFor('10 units on both transports after reconnecting', async () => {
    const s = await state();
    return s.ws.length >= 10 && s.sse.length >= 10;
  }, 30000);

  const s = await state();
  const expected = JSON.stringify([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
  if (JSON.stringify(s.ws) !== expected) fail(`WebSocket saw ${JSON.stringify(s.ws)}`);
  if (JSON.stringify(s.sse) !== expected) fail(`EventSource saw ${JSON.stringify(s.sse)}`);
  if (s.wsOpens < 2) fail(`WebSocket did not reconnect (opens: ${s.wsOpens})`);
  if (s.sseOpens < 2) fail(`EventSource did not reconnect (opens: ${s.sseOpens})`);
  if (pageErrors.length) fail(`page errors: ${pageErrors.join('; ')}`);
  const shot = process.env.ENGRAM_BROWSER_SCREENSHOT;
  if (shot) writeFileSync(shot, await page.screenshot());
  console.log(`PASS: WebSocket and EventSource each received seqs 1..10 exactly once across a server kill (ws opens ${s.wsOpens}, sse opens ${s.sseOpens})`);
} catch (e) {
  reportFailure(e, server);
} finally {
  if (browser) await browser.close();
  server.kill('SIGKILL');
  rmSync(work, { recursive: true, force: true });
}
