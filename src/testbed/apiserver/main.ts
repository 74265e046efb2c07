// The fake API server as a process: for `ambpf run --kubeconfig` by hand, and for tests whose loader
// runs in another network namespace (start this under `nsenter --net=...` so 127.0.0.1 is the
// loader's). Seeds objects from a Kubernetes List file, writes a kubeconfig, prints
// "ready <url>" on stdout, and, when started with an IPC channel, takes commands from the parent
// (see process.ts). Stops on SIGTERM/SIGINT or when the parent goes away.
//
//   node src/testbed/apiserver/main.ts --kubeconfig-out /tmp/kc.yaml [--seed pods.yaml] [--port 0] [--bookmark-ms 0]
import { readFileSync, writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { parseAllDocuments } from 'yaml';
import { FakeApiServer } from './server.ts';

export interface Command {
  readonly id: number;
  readonly op: string;
  readonly args: readonly unknown[];
}

const { values } = parseArgs({
  options: {
    'kubeconfig-out': { type: 'string' },
    seed: { type: 'string' },
    port: { type: 'string', default: '0' },
    'bookmark-ms': { type: 'string', default: '0' },
    token: { type: 'string' },
  },
});

const server = await FakeApiServer.start({
  bookmarkIntervalMs: Number(values['bookmark-ms']),
  ...(values.token ? { token: values.token } : {}),
  port: Number(values.port),
});

if (values.seed) {
  for (const doc of parseAllDocuments(readFileSync(values.seed, 'utf8'))) {
    const js = doc.toJS() as { items?: unknown[]; kind?: string } | null;
    const items = Array.isArray(js?.items) ? js.items : js ? [js] : [];
    for (const item of items as Array<Record<string, unknown>>) {
      if (item['kind'] === 'Namespace') server.addNamespace(item);
      else if (item['kind'] === 'Pod') server.addPod(item);
    }
  }
}
if (values['kubeconfig-out']) writeFileSync(values['kubeconfig-out'], server.kubeconfigYaml(), { mode: 0o600 });

// Every public method of the server is a command; results must be structured-clonable.
const ops: Record<string, (...args: never[]) => unknown> = {
  addPod: (p: Record<string, unknown>) => server.addPod(p),
  updatePod: (p: Record<string, unknown>) => server.updatePod(p),
  deletePod: (ns: string, name: string) => server.deletePod(ns, name),
  // null, not undefined: the IPC reply must carry it.
  getPod: (ns: string, name: string) => server.getPod(ns, name) ?? null,
  addNamespace: (n: Record<string, unknown>) => server.addNamespace(n),
  updateNamespace: (n: Record<string, unknown>) => server.updateNamespace(n),
  deleteNamespace: (name: string) => server.deleteNamespace(name),
  dropWatches: (o: { graceful?: boolean } = {}) => server.dropWatches(o),
  stall: (o: { headers?: boolean } = {}) => server.stall(o),
  unstall: () => server.unstall(),
  compact: () => server.compact(),
  expireWatches: () => server.expireWatches(),
  failNext: (count: number, code?: number) => server.failNext(count, code),
  sendBookmarks: () => server.sendBookmarks(),
  setToken: (token: string) => server.setToken(token),
  down: () => server.down(),
  up: () => server.up(),
  requests: () => server.requests,
  openWatches: () => server.openWatches,
  kubeconfigYaml: () => server.kubeconfigYaml(),
};

let closing = false;
async function shutdown(): Promise<void> {
  if (closing) return;
  closing = true;
  await server.close();
  process.exit(0);
}
process.on('SIGTERM', () => void shutdown());
process.on('SIGINT', () => void shutdown());

if (process.send) {
  process.on('message', (msg: Command) => {
    void (async () => {
      const fn = ops[msg.op];
      try {
        if (!fn) throw new Error(`unknown command ${msg.op}`);
        const result = await (fn as (...a: unknown[]) => unknown)(...msg.args);
        process.send?.({ id: msg.id, ok: true, result });
      } catch (err) {
        process.send?.({ id: msg.id, ok: false, error: (err as Error).message });
      }
    })();
  });
  // The parent died or let go: nothing should outlive it.
  process.on('disconnect', () => void shutdown());
}

process.stdout.write(`ready ${server.url}\n`);
