// Browser test: headless Chromium (Debian's chromium, driven by playwright-core)
// loads /ui/live from the real engram binary; the page subscribes with WebSocket and
// EventSource. The test appends units over REST, SIGKILLs and restarts the server
// (dropping both connections), appends more, and checks that each transport ended
// with every seq exactly once, in order.
//
//   node tests/browser/stream.test.mjs <path to engram binary>
// Exit codes: 0 pass, 1 fail, 77 skipped (chromium cannot start at all).
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const binary = process.argv[2];
const chromiumPath = process.env.CHROMIUM || '/usr/bin/chromium';
const work = mkdtempSync(join(tmpdir(), 'engram-browser-'));
const deadline = (ms) => Date.now() + ms;

function fail(message) {
  console.error(`FAIL: ${message}`);
  process.exitCode = 1;
  throw new Error(message);
}

async function waitFor(what, check, ms = 20000) {
  const end = deadline(ms);
  while (Date.now() < end) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 50));  // poll interval
  }
  fail(`timed out waiting for ${what}`);
}

// A free loopback port: the restarted server must keep the page's origin.
async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
    srv.on('error', reject);
  });
}

function startServer(port) {
  const proc = spawn(binary, ['--addr', `127.0.0.1:${port}`, '--data-dir', join(work, 'data'),
    '--set', 'server.stream_heartbeat_ms=500'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  proc.stderr.on('data', (d) => { log += d; });
  proc.log = () => log;
  return proc;
}

async function ready(base) {
  await waitFor('the server to be ready', async () => {
    try { return (await fetch(`${base}/readyz`)).status === 200; } catch { return false; }
  });
}

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
let server = startServer(port);
let browser;
try {
  await ready(base);
  try {
    browser = await chromium.launch({
      executablePath: chromiumPath,
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
             '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
  } catch (e) {
    console.log(`SKIP: chromium cannot start (${chromiumPath}): ${e.message.split('\n')[0]}`);
    process.exitCode = 77;
    throw e;
  }
  const page = await browser.newPage();
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(e.message));
  await page.goto(`${base}/ui/live?context=browser/demo&since=0`);
  const state = () => page.evaluate(() => window.engram);
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
  server = startServer(port);
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
  if (!process.exitCode) {
    console.error(e);
    process.exitCode = 1;
  }
  if (process.exitCode === 1) console.error(`server log:\n${server.log()}`);
} finally {
  if (browser) await browser.close();
  server.kill('SIGKILL');
  rmSync(work, { recursive: true, force: true });
}
