// What the Node.js tests (tests/browser, tests/mcp) share without dependencies:
// failing loudly, polling with a deadline, a free loopback port, starting the real
// engram binary, and signing tokens.
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { createServer } from 'node:net';

// A free loopback port: a restarted server must keep the page's origin.
export async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
    srv.on('error', reject);
  });
}

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

// A second engram with auth on (HS256 with `secret`), ready: { proc, base }.
export async function startAuthServer(binary, dataDir, secret) {
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const proc = startServer(binary, port, dataDir, ['--set', 'auth.enabled=true', '--set', `auth.secret=${secret}`]);
  await ready(base);
  return { proc, base };
}

// An HS256 JWT with these claims, for a server started with auth.secret=`secret`.
export function hs256Token(secret, claims) {
  const b64url = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const body = `${b64url({ alg: 'HS256', typ: 'JWT' })}.${b64url(claims)}`;
  return `${body}.${createHmac('sha256', secret).update(body).digest('base64url')}`;
}
