// The loader's HTTP endpoint: /healthz (the loader can do its job: see health.ts), /readyz
// (the first full reconcile is done: before that the maps may not hold every pod), /metrics
// (Prometheus text from prom-client). Port 0 picks an ephemeral port, which is logged.
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';
import { UsageError } from '../errors.ts';
import { logger } from '../log.ts';

const log = logger('http');

// Not `import ... from 'node:http'`: an ES import of a builtin builds its namespace, which reads every
// export, and node:http's lazy WebSocket/MessageEvent getters then load undici, http2, tls and zlib:
// 2 MiB of the long-lived loader's heap for nothing (issue 20). The CommonJS exports read only this.
const { createServer } = process.getBuiltinModule('node:http');

export interface HealthState {
  ready(): boolean;
  /** Why the loader is not ready, for the /readyz body. */
  notReadyReason(): string;
  /** Why the loader cannot do its job (health.ts); empty or absent: /healthz is 200. */
  problems?(): readonly string[];
}

export function parseListen(value: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(value);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535)
    throw new UsageError(`--listen expects HOST:PORT (e.g. 127.0.0.1:15099, port 0 for any), got '${value}'`);
  return { host: m[1] ?? (m[2] || '0.0.0.0'), port };
}

export async function startHttpServer(
  listen: string,
  health: HealthState,
  registry: Registry,
): Promise<{ server: Server; url: string }> {
  const { host, port } = parseListen(listen);
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (path === '/healthz') {
      const problems = health.problems?.() ?? [];
      if (problems.length === 0) res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
      else res.writeHead(503, { 'content-type': 'text/plain' }).end(`unhealthy: ${problems.join('; ')}\n`);
    } else if (path === '/readyz') {
      if (health.ready()) res.writeHead(200, { 'content-type': 'text/plain' }).end('ready\n');
      else res.writeHead(503, { 'content-type': 'text/plain' }).end(`not ready: ${health.notReadyReason()}\n`);
    } else if (path === '/metrics') {
      registry.metrics().then(
        (text) => res.writeHead(200, { 'content-type': registry.contentType }).end(text),
        (err: unknown) =>
          res.writeHead(500, { 'content-type': 'text/plain' }).end(`metrics failed: ${(err as Error).message}\n`),
      );
    } else {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: try /healthz /readyz /metrics\n');
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) =>
      reject(
        new UsageError(
          `cannot listen on ${listen}: ${err.code === 'EADDRINUSE' ? 'address already in use' : err.message}`,
        ),
      ),
    );
    server.listen(port, host, () => resolve());
  });
  const addr = server.address() as AddressInfo;
  const url = `http://${addr.family === 'IPv6' ? `[${addr.address}]` : addr.address}:${addr.port}`;
  log.info({ url }, 'serving /healthz /readyz /metrics');
  return { server, url };
}
