// What the Node.js tests (tests/browser, tests/mcp) share without dependencies.
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
