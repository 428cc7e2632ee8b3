// Browser test: the live page on a server with auth on. Without a token the page must
// say why the streams were refused (the server's 401 message) and stop reconnecting;
// with a token outside the grants it says 403; with a good token, entered in the
// page's form (it becomes the engram_token cookie), both transports deliver units.
//
//   node tests/browser/auth.test.mjs <path to engram binary>
// Exit codes: 0 pass, 1 fail, 77 skipped (chromium cannot start at all).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fail, freePort, hs256Token, launchBrowser, openPage, ready, reportFailure, startServer, waitFor } from './support.mjs';

const binary = process.argv[2];
const work = mkdtempSync(join(tmpdir(), 'engram-browser-auth-'));
const secret = 'browser-test-secret-of-at-least-32-bytes!';

const token = (claims) => hs256Token(secret, claims);
const exp = () => Math.floor(Date.now() / 1000) + 600;

const port = await freePort();
const base = `http://127.0.0.1:${port}`;
const server = startServer(binary, port, join(work, 'data'),
  ['--set', 'auth.enabled=true', '--set', `auth.secret=${secret}`]);
let browser;
try {
  await ready(base);
  browser = await launchBrowser();
  const { page, errors: pageErrors, state } = await openPage(browser);
  const problem = () => page.locator('#problem-text').textContent();

  // No token: a 401 with the server's message, the token form, and no more attempts.
  await page.goto(`${base}/ui/live?context=secure/ctx&since=0`);
  await waitFor('the page to show the refusal', async () => (await state()).refused !== null);
  let s = await state();
  if (s.refused.status !== 401) fail(`expected a 401 refusal, got ${JSON.stringify(s.refused)}`);
  const text = await problem();
  if (!text.includes('401') || !text.includes(s.refused.error) || !s.refused.error)
    fail(`the page says "${text}" for ${JSON.stringify(s.refused)}`);
  if (!await page.locator('#problem').isVisible()) fail('the refusal is not visible');
  if (!await page.locator('#login').isVisible()) fail('no token form on a 401');
  const attempts = s.wsAttempts;
  await new Promise((r) => setTimeout(r, 2000));  // four reconnect intervals
  s = await state();
  if (s.wsAttempts !== attempts) fail(`the page kept reconnecting (${attempts} → ${s.wsAttempts} attempts)`);
  if (s.wsOpens !== 0 || s.sseOpens !== 0) fail('a stream opened without a token');

  // A token for other contexts only: 403, named as such.
  await page.fill('#token', token({ sub: 'viewer', exp: exp(), contexts: { 'other/*': ['read'] } }));
  await page.click('#login button');
  await page.waitForLoadState();
  await waitFor('the page to show the 403', async () => (await state())?.refused?.status === 403);

  // A good token: both transports open and deliver.
  await page.fill('#token', token({ sub: 'viewer', exp: exp(), contexts: { 'secure/*': ['read'] } }));
  await page.click('#login button');
  await page.waitForLoadState();
  await waitFor('both transports to connect', async () => {
    const st = await state();
    return st && st.wsOpens >= 1 && st.sseOpens >= 1;
  });
  const writer = token({ sub: 'writer', exp: exp(), contexts: ['secure/*'] });
  const r = await fetch(`${base}/workunit`, {
    method: 'POST', headers: { Authorization: `Bearer ${writer}` },
    body: JSON.stringify({ context_id: 'secure/ctx', type: 'MESSAGE', text: 'seen with a token' }),
  });
  if (r.status !== 201) fail(`append got ${r.status}: ${await r.text()}`);
  await waitFor('the unit on both transports', async () => {
    const st = await state();
    return st.ws.length === 1 && st.sse.length === 1;
  });
  s = await state();
  if (s.refused !== null) fail(`refused with a good token: ${JSON.stringify(s.refused)}`);
  if (await page.locator('#problem').isVisible()) fail('the refusal is still shown with a good token');
  if (pageErrors.length) fail(`page errors: ${pageErrors.join('; ')}`);
  console.log(`PASS: 401 shown and reconnecting stopped (${attempts} attempt(s)); 403 shown; a token from the form streams`);
} catch (e) {
  reportFailure(e, server);
} finally {
  if (browser) await browser.close();
  server.kill('SIGKILL');
  rmSync(work, { recursive: true, force: true });
}
