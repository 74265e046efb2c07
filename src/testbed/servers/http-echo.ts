// A tiny HTTP server for testbed pods: answers every request with a body naming the pod and the peer it
// saw, so a test can tell which pod answered and from which source address. Usage:
//   node http-echo.ts <port> <pod name> [host]
// Prints "listening <port>" once bound.
import { createServer } from 'node:http';

const port = Number(process.argv[2] ?? '8080');
const name = process.argv[3] ?? 'unknown';
const host = process.argv[4] ?? '::';

const server = createServer((req, res) => {
  const peer = (req.socket.remoteAddress ?? '').replace(/^::ffff:/, '');
  res.setHeader('content-type', 'text/plain');
  res.end(`hello from ${name} peer=${peer} path=${req.url ?? ''}\n`);
});
server.keepAliveTimeout = 1000;
server.listen(port, host, () => process.stdout.write(`listening ${port}\n`));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
