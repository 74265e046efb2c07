// ambpf as the node agent of today's ztunnel, end to end: two nodes in netns, one `ambpf run --mode
// inpod` per node serving ZDS, one ztunnel stand-in per node (ztunnel >= 1.23: a ZDS client that opens
// its listeners inside each pod's netns, spoofs the client's address on inbound legs). Zero iptables
// rules anywhere. What a real node sees: arm -> Add -> ack -> listeners; refusal while ztunnel is away;
// a ztunnel rolling upgrade and an agent restart without a failed connection.
import t from 'tap';
import { readFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { startTestbed, defaultSpec, type Testbed } from '../../src/testbed/index.ts';
import { startHttpServer, curl } from '../../src/testbed/helpers.ts';
import { startZtunnels, startExtraZtunnel, stopZtunnel, ztunnelsOn } from '../../src/testbed/ztunnel/launch.ts';
import { zdsSocketPath } from '../../src/testbed/loader.ts';
import type { StateFile } from '../../src/state/state-file.ts';
import { testPrefix } from '../helpers/prefix.ts';
import { startLoader, waitReady, editPodsFile, metrics, AMBPF_BIN, type Loader } from '../helpers/loader.ts';
import { tracedCurl } from '../helpers/standin.ts';
import { eventually } from '../helpers/wait.ts';

const PORT = 8080;
let tb: Testbed;
let podsFile: string;
const loaders: Loader[] = [];

const ip = (name: string): string => tb.pod(name).ip;
const loaderOf = (node: string): Loader => loaders.find((l) => l.node.name === node)!;

/** Each mesh pod of the node as the loader's state file names it, with its ZDS state. */
function zdsStates(node: string): Map<string, string> {
  try {
    const state = JSON.parse(readFileSync(loaderOf(node).stateFile, 'utf8')) as StateFile;
    return new Map(state.pods.map((p) => [p.name, p.zds?.state ?? 'none']));
  } catch {
    return new Map();
  }
}

const meshPods = (node: string): string[] => tb.info.pods.filter((p) => p.node === node && p.mesh).map((p) => p.name);
const allAcked = (node: string): boolean => {
  const s = zdsStates(node);
  return meshPods(node).every((p) => s.get(p) === 'acked');
};

/** Entries of the node's ambpf_inpod_listen (3 per pod with one ztunnel, 6 while two listen). */
function listenEntries(node: string): number {
  const out = execFileSync(
    'bpftool',
    ['-j', 'map', 'dump', 'pinned', join(tb.node(node).bpffsDir, 'ambpf_inpod_listen')],
    { encoding: 'utf8' },
  );
  return (JSON.parse(out) as unknown[]).length;
}

/** curl's exit code when the connection was refused (a reset, not a timeout: 28). */
const CURL_COULDNT_CONNECT = 7;

/** curl's exit code (0 = answered) from a pod. */
async function tryCurl(from: string, to: string, timeoutMs = 3000): Promise<number> {
  return (await curl(tb, from, ip(to), PORT, { timeoutMs })).exitCode;
}

/** Waits until a request really goes through ztunnel (acked and listeners registered by a pass). */
async function waitServed(): Promise<void> {
  await eventually(() => allAcked('node1') && allAcked('node2'), 20_000, 'every mesh pod acked by ztunnel');
  await eventually(
    async () =>
      (await tryCurl('app2-node1', 'app1-node2')) === 0 && (await tryCurl('client-node2', 'app1-node1')) === 0,
    20_000,
    'requests through ztunnel to succeed',
  );
}

t.before(async () => {
  tb = await startTestbed(defaultSpec(), { topology: 'inpod', prefix: testPrefix(), standIn: false });
  podsFile = join(tb.info.runDir, 'pods.json');
  tb.writePodsList(podsFile);
  for (const node of tb.info.nodes) loaders.push(startLoader(tb, node, podsFile, [], true));
  await Promise.all(loaders.map((l) => waitReady(tb, l)));
  await startZtunnels(tb, { zdsSocket: (node) => zdsSocketPath(tb, tb.node(node)) });
  for (const pod of ['app1-node1', 'app2-node1', 'app1-node2', 'client-node1', 'client-node2'])
    await startHttpServer(tb, pod, PORT);
  await waitServed();
});
t.teardown(async () => {
  for (const l of loaders) l.proc.kill('SIGTERM');
  await Promise.all(loaders.map((l) => l.proc.exited));
  await tb?.down();
});

t.test('no iptables rule exists in any netns of the cluster', async (t) => {
  for (const target of [...tb.info.nodes.map((n) => n.name), ...tb.info.pods.map((p) => `${p.namespace}/${p.name}`)]) {
    const r = await tb.exec(target, ['iptables-save'], { check: false });
    t.notMatch(r.stdout, /^-A /m, `no rules in ${target}`);
  }
});

t.test('the state file shows every mesh pod acked by ztunnel over ZDS', async (t) => {
  for (const node of ['node1', 'node2']) {
    for (const pod of meshPods(node)) t.equal(zdsStates(node).get(pod), 'acked', `${node}: ${pod}`);
  }
});

t.test("`ambpf pods` shows each pod's ZDS state", async (t) => {
  const l = loaderOf('node1');
  const r = await tb.exec('node1', [AMBPF_BIN, 'pods', '--bpffs', l.node.bpffsDir, '--state-file', l.stateFile]);
  t.match(r.stdout, /ZTUNNEL \(ZDS\)/, 'a ZTUNNEL column');
  for (const pod of meshPods('node1')) t.match(r.stdout, new RegExp(`mesh/${pod} .* acked`), `${pod} acked`);
});

t.test(
  "mesh -> mesh across nodes: from the pod's IP to 15001, SO_ORIGINAL_DST, HBONE, spoofed inbound leg",
  async (t) => {
    const r = await tracedCurl(tb, 'app2-node1', ip('app1-node2'), PORT, ['node1', 'node2'], {
      node1: ['outbound'],
      node2: ['inbound-hbone'],
    });
    const out = r.lines['node1']?.find((e) => e.direction === 'outbound');
    t.equal(out?.source.split(':')[0], ip('app2-node1'), "ztunnel sees the pod's IP as source");
    t.equal(out?.originalDst, `${ip('app1-node2')}:${PORT}`);
    t.equal(out?.dstFrom, 'SO_ORIGINAL_DST');
    t.equal(out?.upstream, `${ip('app1-node2')}:15008`);
    // ztunnel's 15001 is IP_TRANSPARENT (ENABLE_ORIG_SRC unset): the connection kept its destination,
    // sk_lookup handed its SYN to 15001, and nothing was recorded or handed over (inpod_keep_dst).
    const m = await metrics(tb, loaderOf('node1'));
    t.match(m, /outcome="kept_dst"\} [1-9]/, 'connect4 kept the destination');
    t.match(m, /hook="sklookup",outcome="outbound"\} [1-9]/, "sk_lookup handed the SYN to ztunnel's 15001");
    t.notMatch(m, /outcome="handed"\} [1-9]/, 'no original was handed over');
    const inb = r.lines['node2']?.find((e) => e.direction === 'inbound-hbone');
    t.ok(inb, "the server node's ztunnel terminated HBONE");
    t.match(
      r.body,
      new RegExp(`hello from app1-node2 peer=${ip('app2-node1').replaceAll('.', '\\.')} `),
      "the app sees the client pod's address",
    );
  },
);

t.test("non-mesh -> mesh: plaintext inbound to 15006, the app sees the client's address", async (t) => {
  const r = await tracedCurl(tb, 'client-node2', ip('app1-node1'), PORT, ['node1'], { node1: ['inbound-plaintext'] });
  const inb = r.lines['node1']?.find((e) => e.direction === 'inbound-plaintext');
  t.equal(inb?.originalDst, `${ip('app1-node1')}:${PORT}`, 'the original destination is the local address');
  t.match(
    inb?.upstreamLocal ?? '',
    new RegExp(`^(::ffff:)?\\[?${ip('client-node2').replaceAll('.', '\\.')}\\]?:`),
    `ztunnel's leg to the app is bound to the client's address (${inb?.upstreamLocal})`,
  );
  t.match(
    r.body,
    new RegExp(`peer=${ip('client-node2').replaceAll('.', '\\.')} `),
    'the app sees the client, its reply found the way back',
  );
});

t.test("a connection the node itself opens (kubelet's probe) reaches the app directly", async (t) => {
  const r = await tracedCurl(tb, 'node1', ip('app1-node1'), PORT, ['node1']);
  t.equal(r.lines['node1']?.length ?? 0, 0, 'ztunnel saw nothing');
  t.match(r.body, /hello from app1-node1/);
});

t.test('ztunnel gone: a captured pod is refused both ways; back: snapshot, captured again', async (t) => {
  await stopZtunnel(tb, 'node1', { signal: 'SIGKILL' });
  await eventually(
    () => [...zdsStates('node1').values()].every((s) => s === 'no-ztunnel'),
    10_000,
    "node1's pods to be no-ztunnel",
  );
  t.not(await tryCurl('app2-node1', 'app1-node2'), 0, 'outbound from a captured pod is refused, not sent direct');
  t.not(await tryCurl('client-node2', 'app1-node1'), 0, 'inbound to a captured pod is refused, not handed to the app');
  // Refused at once (curl 7, connection refused), as under Istio's rules, once the pass after the
  // disconnect took the pod off the kept path: a kept SYN with no 15001 gets no reset and would wait in
  // its retransmits (curl 28, timeout).
  await eventually(
    async () => (await tryCurl('app2-node1', 'app1-node2', 2000)) === CURL_COULDNT_CONNECT,
    15_000,
    'outbound from the pod to be refused at once (ECONNREFUSED), not left to time out',
  );
  t.pass('outbound refused at once while ztunnel is gone');
  await startExtraZtunnel(tb, 'node1');
  await waitServed();
  t.pass('served again after the new ztunnel took the snapshot');
});

t.test('a ztunnel rolling upgrade under a stream of new connections: none fails', async (t) => {
  let stop = false;
  const failures: number[] = [];
  let done = 0;
  const stream = (async () => {
    const deadline = Date.now() + 60_000;
    while (!stop && Date.now() < deadline) {
      const code = await tryCurl('app2-node1', 'app1-node1', 5000);
      if (code !== 0) failures.push(code);
      done++;
    }
  })();
  const old = ztunnelsOn(tb, 'node1')[0]!;
  const logStart = tb.ztunnelLog('node1').length;
  const fresh = await startExtraZtunnel(tb, 'node1');
  // As a DaemonSet rollout does: the old ztunnel is terminated once the new one is ready (it took
  // the snapshot, nothing pending). By then ambpf has registered the new listeners beside the old
  // ones (a pass follows every snapshot): both members of each group are in the sockhash.
  await fresh.waitFor((s) => s.ready, 'the new ztunnel to be ready', 20_000);
  await eventually(
    () => listenEntries('node1') >= 2 * 3 * meshPods('node1').length,
    20_000,
    "both ztunnels' listeners registered",
  );
  await eventually(() => done >= 5, 20_000, 'connections while both ztunnels run');
  await stopZtunnel(tb, 'node1', { handle: old, signal: 'SIGTERM' });
  const mark = done;
  await eventually(() => done >= mark + 5, 20_000, 'connections after the old ztunnel left');
  stop = true;
  await stream;
  const errors = tb
    .ztunnelLog('node1')
    .slice(logStart)
    .filter((e) => e.result !== 'ok')
    .map((e) => `${e.where} ${e.direction} ${e.result}`);
  t.same(
    failures,
    [],
    `${done} connections, none failed (curl exit codes of failures: ${failures.join(',')}; ztunnel: ${errors.join('; ')})`,
  );
});

t.test('agent SIGKILL: an open connection survives, the successor resends the snapshot, nothing doubles', async (t) => {
  const l = loaderOf('node1');
  const zt = ztunnelsOn(tb, 'node1').at(-1)!;
  const drained = (): number =>
    readFileSync(zt.outPath, 'utf8')
      .split('\n')
      .filter((line) => line.includes('proxy drained')).length;
  const drainedBefore = drained();
  l.proc.kill('SIGKILL');
  await l.proc.exited;
  t.equal(
    await tryCurl('app2-node1', 'app1-node2'),
    0,
    "traffic flows while the agent is down (pins and ztunnel's proxies stay)",
  );
  l.restart();
  await waitReady(tb, l);
  await waitServed();
  const lines = l.logLines().filter((e) => e['msg'] === 'snapshot acked');
  t.ok(lines.length >= 1, 'the new agent sent ztunnel a snapshot');
  // The new agent's snapshot names every pod (it waits for its first pass): ztunnel drains none.
  t.equal(drained(), drainedBefore, 'ztunnel kept every proxy across the agent restart');
});

t.test('a pod that leaves the mesh is released (Del) and talks direct within a second', async (t) => {
  editPodsFile(podsFile, (list) => {
    const pod = list.items.find((o) => o.kind === 'Pod' && o.metadata.name === 'app2-node1');
    if (pod) pod.metadata.labels = { ...(pod.metadata.labels ?? {}), 'istio.io/dataplane-mode': 'none' };
  });
  const started = Date.now();
  await eventually(
    () => !zdsStates('node1').has('app2-node1') || zdsStates('node1').get('app2-node1') === 'none',
    5_000,
    'app2-node1 to leave the state',
  );
  await eventually(
    async () => {
      const r = await tracedCurl(tb, 'app2-node1', ip('app1-node2'), PORT, ['node1'], undefined);
      return (r.lines['node1'] ?? []).every((e) => e.direction !== 'outbound');
    },
    5_000,
    'app2-node1 to talk direct',
  );
  t.ok(Date.now() - started < 5_000, `direct after ${Date.now() - started} ms`);
});
