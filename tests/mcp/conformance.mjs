// The official MCP conformance suite (@modelcontextprotocol/conformance, server
// mode) against the real engram binary on a loopback port. Scenarios that need the
// suite's own fixtures are expected failures (conformance-baseline.yml, with the
// reason); any other failure, or a listed scenario that starts passing, fails.
//
//   node tests/mcp/conformance.mjs <engram binary>
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort, ready, startServer } from '../support/node.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const cli = join(here, 'node_modules/@modelcontextprotocol/conformance/dist/index.js');
if (!existsSync(cli)) {
  console.error('SKIP: @modelcontextprotocol/conformance is not installed (make test-deps)');
  process.exit(77);
}

const binary = process.argv[2];
const dir = mkdtempSync(join(tmpdir(), 'engram-mcp-conformance-'));
const port = await freePort();
const base = `http://127.0.0.1:${port}`;
const server = startServer(binary, port, join(dir, 'data'));
let code = 1;
try {
  await ready(base);
  const suite = spawn(process.execPath, [cli, 'server', '--url', `${base}/mcp`,
    '--expected-failures', join(here, 'conformance-baseline.yml'), '--output-dir', join(dir, 'results')],
  { cwd: here, stdio: 'inherit' });
  // The suite's own timeouts bound each scenario; this bounds the whole run.
  const timer = setTimeout(() => suite.kill('SIGKILL'), 150000);
  code = await new Promise((resolve) => suite.on('exit', (c, signal) => resolve(signal ? 1 : c)));
  clearTimeout(timer);
  if (code !== 0) console.error(`FAIL: the conformance suite exited ${code}; server log:\n${server.log()}`);
} finally {
  server.kill('SIGTERM');
  await new Promise((r) => server.on('exit', r));
  rmSync(dir, { recursive: true, force: true });
}
process.exit(code);
