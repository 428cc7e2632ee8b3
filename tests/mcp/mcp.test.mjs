// /mcp driven by the official MCP TypeScript SDK client over Streamable HTTP: the
// real engram binary on a loopback port. Initialize, list and call tools, read a
// context as a resource and subscribe to it, complete a prompt argument, get the
// catch_up prompt; bad arguments and unknown tools are tool errors; a bad Origin
// and a bad protocol version are refused. Then the same client through `engramctl
// mcp` (stdio), and a server with auth on: refusals by token and grants.
//
//   node tests/mcp/mcp.test.mjs <engram binary> [<engramctl binary>]
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fail as check_failed, freePort, hs256Token, ready, startAuthServer, startServer, waitFor } from '../support/node.mjs';

// The SDK is installed by `make test-deps` (npm ci here); without it the test is
// skipped (exit 77), not failed.
let Client, StreamableHTTPClientTransport, StdioClientTransport, ResourceUpdatedNotificationSchema;
try {
  ({ Client } = await import('@modelcontextprotocol/sdk/client/index.js'));
  ({ StreamableHTTPClientTransport } = await import('@modelcontextprotocol/sdk/client/streamableHttp.js'));
  ({ StdioClientTransport } = await import('@modelcontextprotocol/sdk/client/stdio.js'));
  ({ ResourceUpdatedNotificationSchema } = await import('@modelcontextprotocol/sdk/types.js'));
} catch (e) {
  console.error(`SKIP: @modelcontextprotocol/sdk is not installed (make test-deps): ${e.message}`);
  process.exit(77);
}

function check(cond, message) {
  if (!cond) check_failed(message);
}

const binary = process.argv[2];
const ctl = process.argv[3];  // engramctl, for the stdio bridge
const dir = mkdtempSync(join(tmpdir(), 'engram-mcp-'));
const port = await freePort();
const base = `http://127.0.0.1:${port}`;
const proc = startServer(binary, port, join(dir, 'data'));
let authProc = null;

// An MCP client of `url` sending these headers.
async function connect(url, headers = {}) {
  const client = new Client({ name: 'engram-test', version: '1.0.0' });
  await client.connect(new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers } }));
  return client;
}

try {
  await ready(base);

  const client = await connect(`${base}/mcp`, { 'X-Agent-ID': 'mcp-agent' });
  check(client.getServerVersion()?.name === 'engram', 'serverInfo names engram');

  const { tools } = await client.listTools();
  const names = tools.map((t) => t.name).sort();
  for (const want of ['append', 'read', 'contexts', 'search', 'lock_acquire', 'lock_renew', 'lock_release',
    'packet', 'fact_set', 'facts', 'presence', 'heartbeat', 'task_create', 'tasks', 'task_claim', 'task_complete',
    'task_fail']) {
    check(names.includes(want), `tools/list has ${want} (got ${names})`);
  }
  for (const t of tools) check(t.inputSchema?.type === 'object', `${t.name} has an object input schema`);

  const call = (name, args) => client.callTool({ name, arguments: args });

  const appended = await call('append', {
    context_id: 'mcp/demo', units: [{ type: 'MESSAGE', text: 'hello from MCP' }, { text: 'second' }],
    idempotency_key: 'k-1',
  });
  check(!appended.isError, `append: ${JSON.stringify(appended)}`);
  check(appended.structuredContent.work_units[1].seq === 2, 'append returns seqs');
  check(appended.structuredContent.work_units[0].agent_id === 'mcp-agent', 'X-Agent-ID reaches the route');
  const again = await call('append', { context_id: 'mcp/demo', units: [{ type: 'MESSAGE', text: 'hello from MCP' },
    { text: 'second' }], idempotency_key: 'k-1' });
  check(again.structuredContent.work_units[1].seq === 2, 'a retried idempotent append is not stored twice');

  const read = await call('read', { context_id: 'mcp/demo', after_seq: 1 });
  check(read.structuredContent.work_units.length === 1, `read after_seq 1: ${JSON.stringify(read)}`);
  check(read.structuredContent.work_units[0].text === 'second', 'read carries text');

  const ctx = await call('contexts', { action: 'get', context_id: 'mcp/demo' });
  check(ctx.structuredContent.context.head_seq === 2, 'contexts get');
  const renamed = await call('contexts', { action: 'update', context_id: 'mcp/demo', display_name: 'Demo' });
  check(renamed.structuredContent.context.display_name === 'Demo', 'contexts update');
  const listed = await call('contexts', { action: 'list' });
  check(listed.structuredContent.contexts.some((c) => c.id === 'mcp/demo'), 'contexts list');

  const lock = await call('lock_acquire', { resource_path: 'doc/plan.md', ttl_seconds: 30 });
  check(!lock.isError, `lock_acquire: ${JSON.stringify(lock)}`);
  const lockId = lock.structuredContent.lock.lock_id;
  check(typeof lockId === 'string', `lock_acquire returns a lock_id: ${JSON.stringify(lock)}`);
  const renewed = await call('lock_renew', { resource_path: 'doc/plan.md', lock_id: lockId, ttl_seconds: 60 });
  check(renewed.isError === false, `lock_renew: ${JSON.stringify(renewed)}`);
  check((await call('lock_release', { resource_path: 'doc/plan.md', lock_id: lockId })).isError === false,
    'lock_release');

  check(!(await call('fact_set', { context_id: 'mcp/demo', key: 'repo.branch', value: 'main' })).isError, 'fact_set');
  const facts = await call('facts', { context_id: 'mcp/demo' });
  check(facts.structuredContent.facts[0].value === 'main', 'facts');
  const hb = await call('heartbeat', { agent_id: 'mcp-agent', contexts: ['mcp/demo'] });
  check(!hb.isError, `heartbeat: ${JSON.stringify(hb)}`);
  const present = await call('presence', { context_id: 'mcp/demo' });
  check(present.structuredContent.agents.some((a) => a.agent_id === 'mcp-agent'), 'presence');
  const created = await call('task_create', { context_id: 'mcp/demo', task_id: 'report', title: 'Write the report' });
  check(!created.isError, `task_create: ${JSON.stringify(created)}`);
  const claimed = await call('task_claim', { task_id: 'report', ttl_seconds: 30 });
  check(!claimed.isError, `task_claim: ${JSON.stringify(claimed)}`);
  const fence = claimed.structuredContent.task.fencing_token;
  check(Number.isInteger(fence), `task_claim returns the fencing token: ${JSON.stringify(claimed)}`);
  const stale = await call('task_complete', { task_id: 'report', fence: fence + 1 });
  check(stale.isError && /fencing token/.test(stale.content[0].text), `a stale fence is a tool error: ${JSON.stringify(stale)}`);
  check(!(await call('task_complete', { task_id: 'report', fence, result: { pages: 3 } })).isError, 'task_complete');
  const done = await call('tasks', { context_id: 'mcp/demo', status: 'done' });
  check(done.structuredContent.tasks.length === 1, `tasks: ${JSON.stringify(done)}`);
  check(!(await call('task_create', { context_id: 'mcp/demo', task_id: 'other', title: 'x' })).isError, 'task_create 2');
  const other = await call('task_claim', { task_id: 'other' });
  check(!(await call('task_fail', { task_id: 'other', fence: other.structuredContent.task.fencing_token, error: 'no' })).isError,
    'task_fail');
  const packet = await call('packet', { context_id: 'mcp/demo', format: 'text' });
  check(!packet.isError && packet.content[0].text.startsWith('Current time: '), `packet text: ${JSON.stringify(packet)}`);
  const search = await call('search', { query: 'hello', context_id: 'mcp/demo' });
  check(!search.isError, `search: ${JSON.stringify(search)}`);

  // Errors are tool errors with the server's message, not protocol errors.
  const missing = await call('read', {});
  check(missing.isError && /context_id is required/.test(missing.content[0].text), 'missing argument');
  const refused = await call('packet', { context_id: 'mcp/demo', budget: { max_tokens: -1 } });
  check(refused.isError && /budget.max_tokens must be an integer/.test(refused.content[0].text) &&
    /HTTP 400/.test(refused.content[0].text), `route refusal: ${JSON.stringify(refused)}`);
  let unknown = null;
  try { await call('no_such_tool', {}); } catch (e) { unknown = e; }
  check(unknown && /unknown tool/.test(String(unknown.message)), 'unknown tool is a JSON-RPC error');

  // Resources and the prompt.
  const { resources } = await client.listResources();
  check(resources.some((r) => r.uri === 'engram://contexts/mcp%2Fdemo'), `resources/list: ${JSON.stringify(resources)}`);
  const res = await client.readResource({ uri: 'engram://contexts/mcp%2Fdemo' });
  check(JSON.parse(res.contents[0].text).work_units.length === 2, 'resources/read');
  const templates = await client.listResourceTemplates();
  check(templates.resourceTemplates[0].uriTemplate === 'engram://contexts/{context_id}', 'resource template');
  const { prompts } = await client.listPrompts();
  check(prompts[0].name === 'catch_up', 'prompts/list');
  const prompt = await client.getPrompt({ name: 'catch_up', arguments: { context_id: 'mcp/demo', max_tokens: '500' } });
  check(prompt.messages[0].content.text.includes('hello from MCP'), 'prompts/get renders the packet');

  // A subscription: the subscribe's answer is an SSE stream that then carries
  // notifications/resources/updated for each write of new units, until unsubscribed.
  const updates = [];
  client.setNotificationHandler(ResourceUpdatedNotificationSchema, (n) => { updates.push(n.params.uri); });
  const watched = 'engram://contexts/mcp%2Fdemo';
  check(JSON.stringify(await client.subscribeResource({ uri: watched })) === '{}', 'resources/subscribe answers {}');
  const subscribers = async () =>
    (await (await fetch(`${base}/contexts/mcp%2Fdemo/subscribers`)).json()).subscribers.filter((x) => x.transport === 'mcp');
  check((await subscribers()).length === 1, 'the subscription is an open stream');
  check(!(await call('append', { context_id: 'mcp/demo', units: [{ text: 'third' }] })).isError, 'append 3');
  await waitFor('a resources/updated notification', () => updates.length === 1);
  check(updates[0] === watched, `the notification names the resource: ${updates}`);
  const after = await client.readResource({ uri: watched });
  check(JSON.parse(after.contents[0].text).work_units[0].text === 'third', 'the updated resource has the new unit');
  // The same resource spelt with other percent-encoding is the same subscription.
  check(JSON.stringify(await client.unsubscribeResource({ uri: 'engram://contexts/mcp%2fdemo' })) === '{}',
    'resources/unsubscribe');
  await waitFor('the subscription stream to end', async () => (await subscribers()).length === 0);
  check(!(await call('append', { context_id: 'mcp/demo', units: [{ text: 'fourth' }] })).isError, 'append 4');
  // A barrier: a new subscription sees the next write; the ended one would have
  // delivered the fourth unit's notification before it.
  await client.subscribeResource({ uri: watched });
  check(!(await call('append', { context_id: 'mcp/demo', units: [{ text: 'fifth' }] })).isError, 'append 5');
  await waitFor('the new subscription notified', () => updates.length >= 2);
  check(updates.length === 2, `no notification after unsubscribing: ${updates}`);
  await client.unsubscribeResource({ uri: watched });
  let badSub = null;
  try { await client.subscribeResource({ uri: 'engram://contexts/' }); } catch (e) { badSub = e; }
  check(badSub && /resource not found/.test(badSub.message), `subscribe to a bad URI: ${badSub}`);

  // Completion of context ids (the catch_up prompt), and logging/setLevel.
  const completed = await client.complete({ ref: { type: 'ref/prompt', name: 'catch_up' },
    argument: { name: 'context_id', value: 'mcp/d' } });
  check(JSON.stringify(completed.completion.values) === '["mcp/demo"]', `completion: ${JSON.stringify(completed)}`);
  check(JSON.stringify(await client.setLoggingLevel('warning')) === '{}', 'logging/setLevel');
  await client.close();

  // Transport rules, raw.
  const post = (body, headers = {}) => fetch(`${base}/mcp`, {
    method: 'POST', headers: { 'Content-Type': 'application/json', Accept: 'application/json, text/event-stream', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  check((await post({ jsonrpc: '2.0', id: 1, method: 'ping' }, { Origin: 'http://evil.example' })).status === 403,
    'a foreign Origin is refused');
  check((await post({ jsonrpc: '2.0', id: 1, method: 'ping' }, { 'MCP-Protocol-Version': '1999-01-01' })).status === 400,
    'an unsupported protocol version is refused');
  check((await post('{not json')).status === 400, 'a parse error');
  const batch = await post([{ jsonrpc: '2.0', id: 1, method: 'ping' }]);
  check(batch.status === 400 && (await batch.json()).error.code === -32600, 'batches are refused');
  check((await post({ jsonrpc: '2.0', method: 'notifications/initialized' })).status === 202, 'a notification is 202');
  const nope = await (await post({ jsonrpc: '2.0', id: 'x', method: 'no/such' })).json();
  check(nope.error.code === -32601 && nope.id === 'x', 'unknown method');
  check((await fetch(`${base}/mcp`)).status === 405, 'GET /mcp is 405 (no server-initiated stream)');
  // The stdio bridge: the same SDK client launching `engramctl mcp`.
  if (ctl) {
    const viaStdio = new Client({ name: 'engram-stdio-test', version: '1.0.0' });
    await viaStdio.connect(new StdioClientTransport({
      command: ctl, args: ['--server', base, '--agent', 'stdio-agent', 'mcp'], stderr: 'pipe',
    }));
    check(viaStdio.getServerVersion()?.name === 'engram', 'stdio: initialize');
    check(viaStdio.getServerCapabilities()?.resources?.subscribe === false,
      'stdio: subscriptions are not offered through the bridge');
    check((await viaStdio.listTools()).tools.length === tools.length, 'stdio: tools/list');
    const put = await viaStdio.callTool({ name: 'append', arguments: { context_id: 'mcp/stdio', units: [{ text: 'over stdio' }] } });
    check(!put.isError && put.structuredContent.work_units[0].agent_id === 'stdio-agent', `stdio: append ${JSON.stringify(put)}`);
    const back = await viaStdio.callTool({ name: 'read', arguments: { context_id: 'mcp/stdio' } });
    check(back.structuredContent.work_units[0].text === 'over stdio', 'stdio: read');
    const bad = await viaStdio.callTool({ name: 'read', arguments: {} });
    check(bad.isError, 'stdio: a tool error comes back as one');
    await viaStdio.close();
  }

  // Auth on: the same bearer tokens and grants as REST.
  const secret = 'mcp-test-secret-of-at-least-32-bytes!!';
  let authBase;
  ({ proc: authProc, base: authBase } = await startAuthServer(binary, join(dir, 'auth-data'), secret));
  const exp = Math.floor(Date.now() / 1000) + 600;
  const anonymous = await fetch(`${authBase}/mcp`, { method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'ping' }) });
  check(anonymous.status === 401, `no token: 401 (got ${anonymous.status})`);
  let refusedConnect = null;
  try { await connect(`${authBase}/mcp`); } catch (e) { refusedConnect = e; }
  check(refusedConnect !== null, 'the SDK client cannot initialize without a token');
  const reader = await connect(`${authBase}/mcp`,
    { Authorization: `Bearer ${hs256Token(secret, { sub: 'reader', exp, contexts: { 'team/*': ['read'] } })}` });
  const writer = await connect(`${authBase}/mcp`,
    { Authorization: `Bearer ${hs256Token(secret, { sub: 'writer', exp, contexts: ['team/*'] })}` });
  const wrote = await writer.callTool({ name: 'append', arguments: { context_id: 'team/a', units: [{ text: 'by writer' }] } });
  check(!wrote.isError && wrote.structuredContent.work_units[0].agent_id === 'writer', `writer appends: ${JSON.stringify(wrote)}`);
  const denied = await reader.callTool({ name: 'append', arguments: { context_id: 'team/a', units: [{ text: 'no' }] } });
  check(denied.isError && /not allowed to write/.test(denied.content[0].text) && /HTTP 403/.test(denied.content[0].text),
    `a reader's append is a tool error with the route's 403: ${JSON.stringify(denied)}`);
  const impersonate = await writer.callTool({ name: 'append',
    arguments: { context_id: 'team/a', agent_id: 'someone-else', units: [{ text: 'no' }] } });
  check(impersonate.isError, `writing as another agent is refused: ${JSON.stringify(impersonate)}`);
  const readBack = await reader.callTool({ name: 'read', arguments: { context_id: 'team/a' } });
  check(readBack.structuredContent.work_units[0].text === 'by writer', 'the reader reads');
  const outside = await reader.callTool({ name: 'read', arguments: { context_id: 'private/x' } });
  check(outside.isError && /HTTP 403/.test(outside.content[0].text), `reading outside the grants: ${JSON.stringify(outside)}`);
  let subDenied = null;
  try { await reader.subscribeResource({ uri: 'engram://contexts/private%2Fx' }); } catch (e) { subDenied = e; }
  check(subDenied && /not allowed to read/.test(subDenied.message), `subscribing outside the grants: ${subDenied}`);
  let readDenied = null;
  try { await reader.readResource({ uri: 'engram://contexts/private%2Fx' }); } catch (e) { readDenied = e; }
  check(readDenied && /not allowed to read/.test(readDenied.message), `reading a resource outside the grants: ${readDenied}`);
  const visible = (await reader.listResources()).resources.map((r) => r.name);
  check(JSON.stringify(visible) === '["team/a"]', `resources/list shows only readable contexts: ${visible}`);
  await reader.close();
  await writer.close();
  console.log('ok: MCP over Streamable HTTP and stdio with the official SDK client');
} finally {
  for (const p of [proc, authProc]) {
    if (!p || p.exitCode !== null) continue;
    p.kill('SIGTERM');
    await new Promise((r) => p.on('exit', r));
  }
  rmSync(dir, { recursive: true, force: true });
}
