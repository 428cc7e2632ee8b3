// What the browser tests share: launching Debian's chromium and watching a page,
// plus the helpers every Node.js test shares (../support/node.mjs).
import { chromium } from 'playwright-core';

export { fail, freePort, hs256Token, ready, startAuthServer, startServer, waitFor } from '../support/node.mjs';

export const chromiumPath = process.env.CHROMIUM || '/usr/bin/chromium';

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
