// The DaemonSet's capability list is enough for the node agent of in-pod ztunnel: `ambpf run` with the
// DaemonSet's mode (inpod, serving ZDS) on the local testbed (two nodes in netns, one ztunnel stand-in
// per node connected over ZDS), each loader started with exactly the loader container's capabilities
// (read from deploy/daemonset.yaml, applied as the bounding set the way a container runtime does for a
// root process), becomes ready and: enters every mesh pod's netns (arming its capture, the return
// route and sysctl of spoofed inbound legs), hands each pod's netns fd to ztunnel (acked), and
// redirects real connections on every path: outbound through SO_ORIGINAL_DST from the pod's IP, HBONE
// across nodes, plaintext inbound with the client's address kept.
import t from 'tap';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  startTestbed,
  defaultSpec,
  type Testbed,
  type TestbedProcess,
  type ZtunnelLogEntry,
} from '../../src/testbed/index.ts';
import { startHttpServer } from '../../src/testbed/helpers.ts';
import { startZtunnels } from '../../src/testbed/ztunnel/launch.ts';
import type { StateFile } from '../../src/state/state-file.ts';
import { ORIG_SRC_ROUTE_TABLE, ORIG_SRC_RULE_PREF } from '../../src/bpf/datapath-inpod.ts';
import { testPrefix } from '../helpers/prefix.ts';
import { loaderArgs, zdsSocketPath, LOADER_PORT } from '../helpers/loader.ts';
import { tracedCurl, type Expect } from '../helpers/standin.ts';
import { eventually, waitUntil } from '../helpers/wait.ts';
import { at, containersOf, loadManifests, only } from './manifests.ts';

const PORT = 8080;
/** Linux capability numbers (include/uapi/linux/capability.h) of the names the manifest may use. */
const CAP_NUMBERS: Record<string, number> = {
  NET_ADMIN: 12,
  NET_RAW: 13,
  SYS_CHROOT: 18,
  SYS_PTRACE: 19,
  SYS_ADMIN: 21,
  SYS_RESOURCE: 24,
  PERFMON: 38,
  BPF: 39,
};

const ds = only(loadManifests(), 'DaemonSet');
const loaderContainer = containersOf(ds).main.find((c) => c.name === 'loader')!;
const caps = (at(loaderContainer, 'securityContext.capabilities.add') ?? []) as string[];
const bounding = ['-all', ...caps.map((c) => `+${c.toLowerCase()}`)].join(',');

let tb: Testbed;
let podsFile: string;
const loaders: Array<{ node: string; proc: TestbedProcess; logFile: string }> = [];

async function waitReady(node: string, logFile: string, timeoutMs = 30_000): Promise<void> {
  const ready = async (): Promise<boolean> =>
    (
      await tb.exec(node, ['curl', '-sf', '--max-time', '1', `http://127.0.0.1:${LOADER_PORT}/readyz`], {
        check: false,
        timeoutMs: 3000,
      })
    ).code === 0;
  if (!(await waitUntil(ready, timeoutMs))) {
    throw new Error(
      `loader on ${node} not ready after ${timeoutMs} ms; log:\n${readFileSync(logFile, 'utf8').slice(-3000)}`,
    );
  }
}

const meshPods = (node: string): string[] => tb.info.pods.filter((p) => p.node === node && p.mesh).map((p) => p.name);

/** Each pod of the node's state file with its ZDS state. */
function zdsStates(node: string): Map<string, string> {
  try {
    const state = JSON.parse(readFileSync(join(tb.info.runDir, `state-${node}.json`), 'utf8')) as StateFile;
    return new Map(state.pods.map((p) => [p.name, p.zds?.state ?? 'none']));
  } catch {
    return new Map();
  }
}

t.before(async () => {
  tb = await startTestbed(defaultSpec(), { topology: 'inpod', prefix: testPrefix(), standIn: false });
  podsFile = join(tb.info.runDir, 'pods.json');
  tb.writePodsList(podsFile);
  for (const node of tb.info.nodes) {
    const logFile = join(tb.info.runDir, `loader-caps-${node.name}.log`);
    // For a root process the bounding set decides what exec grants: P' = E' = bounding set.
    const argv = ['setpriv', `--bounding-set=${bounding}`, '--', ...loaderArgs(tb, node, podsFile, [], true)];
    const proc = tb.spawn(node.name, argv, {
      logFile,
      env: { ...process.env, AMBPF_LOG_FORMAT: 'json', AMBPF_LOG_LEVEL: 'debug' },
    });
    loaders.push({ node: node.name, proc, logFile });
  }
  await Promise.all(loaders.map((l) => waitReady(l.node, l.logFile)));
  await startZtunnels(tb, { zdsSocket: (node) => zdsSocketPath(tb, tb.node(node)) });
  for (const pod of ['app1-node1', 'app1-node2']) await startHttpServer(tb, pod, PORT);
  await eventually(
    () => ['node1', 'node2'].every((n) => meshPods(n).every((p) => zdsStates(n).get(p) === 'acked')),
    30_000,
    "every mesh pod acked by its node's ztunnel",
  );
});

t.teardown(async () => {
  for (const l of loaders) l.proc.kill('SIGTERM');
  await Promise.all(loaders.map((l) => l.proc.exited));
  await tb?.down();
});

/** curl and the stand-in's log lines that request produced on each node, once `expect`ed ones are there. */
async function request(
  from: string,
  to: string,
  expect: Expect,
): Promise<{ body: string; node1: ZtunnelLogEntry[]; node2: ZtunnelLogEntry[] }> {
  const r = await tracedCurl(tb, from, tb.pod(to).ip, PORT, ['node1', 'node2'], expect);
  return { body: r.body, node1: r.lines['node1'] ?? [], node2: r.lines['node2'] ?? [] };
}

t.test("each loader runs with exactly the manifest's capabilities", async (t) => {
  t.ok(
    caps.every((c) => c in CAP_NUMBERS),
    `known capabilities: ${caps.join(', ')}`,
  );
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

t.test("the loader entered every mesh pod's netns and ztunnel took each pod over ZDS", async (t) => {
  for (const node of ['node1', 'node2']) {
    const states = zdsStates(node);
    for (const pod of meshPods(node)) {
      t.equal(states.get(pod), 'acked', `${node}: ${pod} handed to ztunnel with its netns fd, acked`);
      // setns + NET_ADMIN inside the pod: the return path of ztunnel's spoofed inbound legs.
      const rules = await tb.exec(pod, ['ip', 'rule', 'show', 'pref', String(ORIG_SRC_RULE_PREF)]);
      t.match(
        rules.stdout,
        `lookup ${ORIG_SRC_ROUTE_TABLE}`,
        `${pod}: ip rule pref ${ORIG_SRC_RULE_PREF} in the pod's netns`,
      );
      const accept = await tb.exec(pod, ['cat', '/proc/sys/net/ipv4/tcp_fwmark_accept']);
      t.equal(accept.stdout.trim(), '1', `${pod}: tcp_fwmark_accept set in the pod's netns`);
    }
  }
});

t.test(
  "mesh -> mesh across nodes: from the pod's IP via SO_ORIGINAL_DST, HBONE, the app sees the client",
  async (t) => {
    const r = await request('app2-node1', 'app1-node2', { node1: ['outbound'], node2: ['inbound-hbone'] });
    t.match(r.body, /hello from app1-node2/);
    const out = r.node1.find((e) => e.direction === 'outbound');
    t.equal(out?.dstFrom, 'SO_ORIGINAL_DST', 'ztunnel on node1 learned the destination from getsockopt');
    t.equal(out?.originalDst, `${tb.pod('app1-node2').ip}:${PORT}`);
    t.equal(out?.source.split(':')[0], tb.pod('app2-node1').ip, "from the pod's own IP");
    t.ok(
      r.node2.some((e) => e.direction === 'inbound-hbone' && e.result === 'ok'),
      "node2's ztunnel terminated HBONE",
    );
    t.match(r.body, `peer=${tb.pod('app2-node1').ip} `, "the spoofed inbound leg's replies found their way back");
  },
);

t.test("non-mesh -> mesh: plaintext inbound steered to ztunnel's 15006 in the pod", async (t) => {
  const r = await request('client-node1', 'app1-node1', { node1: ['inbound-plaintext'] });
  t.match(r.body, /hello from app1-node1/);
  const inbound = r.node1.find((e) => e.direction === 'inbound-plaintext');
  t.ok(inbound, 'ztunnel on node1 accepted it on 15006');
  t.equal(inbound?.originalDst, `${tb.pod('app1-node1').ip}:${PORT}`);
});
