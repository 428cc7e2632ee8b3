// What the browser tests share: launching Debian's chromium (or firefox-esr) and
// watching a page, plus the helpers every Node.js test shares (../support/node.mjs).
import { chromium, firefox } from 'playwright-core';

export { fail, freePort, hs256Token, ready, startAuthServer, startServer, waitFor } from '../support/node.mjs';

export const chromiumPath = process.env.CHROMIUM || '/usr/bin/chromium';
export const firefoxPath = process.env.FIREFOX || '/usr/bin/firefox-esr';

// The browser (`chromium` or `firefox`), or exit code 77 (skipped) when it cannot
// start at all. Stock Firefox is driven over WebDriver BiDi (playwright's
// `moz-firefox` channel), not playwright's patched build, which is not in Debian.
export async function launchBrowser(name = 'chromium') {
  const path = name === 'firefox' ? firefoxPath : chromiumPath;
  try {
    if (name === 'firefox') return await firefox.launch({ channel: 'moz-firefox', executablePath: path, headless: true });
    return await chromium.launch({
      executablePath: path,
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
             '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
  } catch (e) {
    console.log(`SKIP: ${name} cannot start (${path}): ${e.message.split('\n')[0]}`);
    process.exitCode = 77;
    throw e;
  }
}

// A new page that records uncaught page errors; `state()` reads window.engram, what
// the live page exposes for tests.
export async function openPage(browser) {
  const page = await browser.newPage();
  const errors = [];
  // Firefox also reports each refused WebSocket connection as a page error; while a
  // test has the server down, the page's reconnect attempts are refused by design.
  const expected = /^Firefox can’t establish a connection to the server at ws:/;
  page.on('pageerror', (e) => { if (!expected.test(e.message)) errors.push(e.message); });
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
