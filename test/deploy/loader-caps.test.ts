// The DaemonSet's capability list is enough: `ambpf run` on the local testbed (two nodes in netns,
// the ztunnel stand-in), each loader started with exactly the loader container's capabilities
// (read from deploy/daemonset.yaml, applied as the bounding set the way a container runtime does for
// a root process), becomes ready and redirects real connections on every path: outbound through
// SO_ORIGINAL_DST, HBONE across nodes, and plaintext inbound steered by tc + sk_lookup onto the
// listener sockets copied out of ztunnel with pidfd_getfd.
import t from 'tap';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { startTestbed, defaultSpec, type Testbed, type TestbedProcess, type ZtunnelLogEntry } from '../../src/testbed/index.ts';
import { startHttpServer } from '../../src/testbed/helpers.ts';
import { testPrefix } from '../helpers/prefix.ts';
import { loaderArgs, LOADER_PORT } from '../helpers/loader.ts';
import { tracedCurl, type Expect } from '../helpers/standin.ts';
import { waitUntil } from '../helpers/wait.ts';
import { at, containersOf, loadManifests, only } from './manifests.ts';

const PORT = 8080;
/** Linux capability numbers (include/uapi/linux/capability.h) of the names the manifest may use. */
const CAP_NUMBERS: Record<string, number> = {
  NET_ADMIN: 12, NET_RAW: 13, SYS_CHROOT: 18, SYS_PTRACE: 19, SYS_ADMIN: 21, SYS_RESOURCE: 24, PERFMON: 38, BPF: 39,
};

const ds = only(loadManifests(), 'DaemonSet');
const loaderContainer = containersOf(ds).main.find((c) => c.name === 'loader')!;
const caps = (at(loaderContainer, 'securityContext.capabilities.add') ?? []) as string[];
const bounding = ['-all', ...caps.map((c) => `+${c.toLowerCase()}`)].join(',');

let tb: Testbed;
const loaders: Array<{ node: string; proc: TestbedProcess; logFile: string }> = [];

async function waitReady(node: string, logFile: string, timeoutMs = 30_000): Promise<void> {
  const ready = async (): Promise<boolean> =>
    (await tb.exec(node, ['curl', '-sf', '--max-time', '1', `http://127.0.0.1:${LOADER_PORT}/readyz`], { check: false, timeoutMs: 3000 })).code === 0;
  if (!(await waitUntil(ready, timeoutMs))) {
    throw new Error(`loader on ${node} not ready after ${timeoutMs} ms; log:\n${readFileSync(logFile, 'utf8').slice(-3000)}`);
  }
}

t.before(async () => {
  tb = await startTestbed(defaultSpec(), { topology: 'node', prefix: testPrefix() });
  const podsFile = join(tb.info.runDir, 'pods.json');
  tb.writePodsList(podsFile);
  for (const node of tb.info.nodes) {
    const logFile = join(tb.info.runDir, `loader-caps-${node.name}.log`);
    // For a root process the bounding set decides what exec grants: P' = E' = bounding set.
    const argv = ['setpriv', `--bounding-set=${bounding}`, '--', ...loaderArgs(tb, node, podsFile)];
    const proc = tb.spawn(node.name, argv, { logFile, env: { ...process.env, AMBPF_LOG_FORMAT: 'json', AMBPF_LOG_LEVEL: 'debug' } });
    loaders.push({ node: node.name, proc, logFile });
  }
  await Promise.all(loaders.map((l) => waitReady(l.node, l.logFile)));
  for (const pod of ['app1-node1', 'app1-node2']) await startHttpServer(tb, pod, PORT);
});

t.teardown(async () => {
  for (const l of loaders) l.proc.kill('SIGTERM');
  await Promise.all(loaders.map((l) => l.proc.exited));
  await tb?.down();
});

/** curl and the stand-in's log lines that request produced on each node, once `expect`ed ones are there. */
async function request(from: string, to: string, expect: Expect): Promise<{ body: string; node1: ZtunnelLogEntry[]; node2: ZtunnelLogEntry[] }> {
  const r = await tracedCurl(tb, from, tb.pod(to).ip, PORT, ['node1', 'node2'], expect);
  return { body: r.body, node1: r.lines['node1'] ?? [], node2: r.lines['node2'] ?? [] };
}

t.test('each loader runs with exactly the manifest\'s capabilities', async (t) => {
  t.ok(caps.every((c) => c in CAP_NUMBERS), `known capabilities: ${caps.join(', ')}`);
  // A process cannot grant what its own bounding set lacks: where this test runs without one of the
  // manifest's capabilities (this machine's sandbox has no SYS_RESOURCE), the loader runs without it
  // too, which still shows the rest is enough on this kernel.
  const own = BigInt(`0x${/^CapBnd:\s*([0-9a-f]+)/m.exec(readFileSync('/proc/self/status', 'utf8'))?.[1] ?? '0'}`);
  const unavailable = caps.filter((c) => (own & (1n << BigInt(CAP_NUMBERS[c] ?? 0))) === 0n);
  if (unavailable.length) t.comment(`not grantable here, so not granted: ${unavailable.join(', ')}`);
  const granted = caps.filter((c) => !unavailable.includes(c));
  const want = granted.reduce((m, c) => m | (1n << BigInt(CAP_NUMBERS[c] ?? 0)), 0n);
  for (const l of loaders) {
    const status = readFileSync(`/proc/${l.proc.pid}/status`, 'utf8');
    const eff = BigInt(`0x${/^CapEff:\s*([0-9a-f]+)/m.exec(status)?.[1] ?? '0'}`);
    const cmd = readFileSync(`/proc/${l.proc.pid}/cmdline`, 'utf8').split('\0').join(' ');
    t.match(cmd, /cli\/main\.ts run/, `pid ${l.proc.pid} is the loader itself`);
    t.equal(eff.toString(16), want.toString(16), `${l.node}: CapEff is exactly ${granted.join(', ')}`);
  }
});

t.test('mesh -> mesh across nodes: outbound via SO_ORIGINAL_DST, HBONE, inbound at the other node', async (t) => {
  const r = await request('app2-node1', 'app1-node2', { node1: ['outbound'], node2: ['inbound-hbone'] });
  t.match(r.body, /hello from app1-node2/);
  const out = r.node1.find((e) => e.direction === 'outbound');
  t.equal(out?.dstFrom, 'SO_ORIGINAL_DST', 'ztunnel on node1 learned the destination from getsockopt');
  t.equal(out?.originalDst, `${tb.pod('app1-node2').ip}:${PORT}`);
  t.ok(r.node2.some((e) => e.direction === 'inbound-hbone' && e.result === 'ok'), 'node2\'s ztunnel terminated HBONE');
});

t.test('non-mesh -> mesh: steered onto ztunnel\'s copied 15006 listener', async (t) => {
  const r = await request('client-node1', 'app1-node1', { node1: ['inbound-plaintext'] });
  t.match(r.body, /hello from app1-node1/);
  const inbound = r.node1.find((e) => e.direction === 'inbound-plaintext');
  t.ok(inbound, 'ztunnel on node1 accepted it on 15006 (sk_lookup + the socket from pidfd_getfd)');
  t.equal(inbound?.originalDst, `${tb.pod('app1-node1').ip}:${PORT}`);
});
