// What the browser tests share: failing loudly, polling with a deadline, a free
// loopback port, starting the real engram binary, and launching Debian's chromium.
import { spawn } from 'node:child_process';
import { chromium } from 'playwright-core';

export { freePort } from '../support/node.mjs';

export const chromiumPath = process.env.CHROMIUM || '/usr/bin/chromium';

export function fail(message) {
  console.error(`FAIL: ${message}`);
  process.exitCode = 1;
  throw new Error(message);
}

export async function waitFor(what, check, ms = 20000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 50));  // poll interval
  }
  fail(`timed out waiting for ${what}`);
}

// The engram binary on 127.0.0.1:port with its data in dataDir; `proc.log()` is
// what it wrote to stderr.
export function startServer(binary, port, dataDir, extraArgs = []) {
  const proc = spawn(binary, ['--addr', `127.0.0.1:${port}`, '--data-dir', dataDir,
    '--set', 'server.stream_heartbeat_ms=500', ...extraArgs], { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  proc.stderr.on('data', (d) => { log += d; });
  // A binary that cannot be started (being relinked: EACCES) must fail the test, not
  // crash node before its cleanup runs.
  proc.on('error', (e) => { log += `could not start ${binary}: ${e.message}\n`; });
  proc.log = () => log;
  return proc;
}

export async function ready(base) {
  await waitFor('the server to be ready', async () => {
    try { return (await fetch(`${base}/readyz`)).status === 200; } catch { return false; }
  });
}

// Chromium, or exit code 77 (skipped) when it cannot start at all.
export async function launchBrowser() {
  try {
    return await chromium.launch({
      executablePath: chromiumPath,
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
             '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
  } catch (e) {
    console.log(`SKIP: chromium cannot start (${chromiumPath}): ${e.message.split('\n')[0]}`);
    process.exitCode = 77;
    throw e;
  }
}

// A new page that records uncaught page errors; `state()` reads window.engram, what
// the live page exposes for tests.
export async function openPage(browser) {
  const page = await browser.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  return { page, errors, state: () => page.evaluate(() => window.engram) };
}

// Ends a test: reports an unexpected exception as a failure, with the server's log.
export function reportFailure(e, server) {
  if (!process.exitCode) {
    console.error(e);
    process.exitCode = 1;
  }
  if (process.exitCode === 1 && server) console.error(`server log:\n${server.log()}`);
}
