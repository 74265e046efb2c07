// The eBPF datapath end to end, node topology: two nodes in netns, one `ambpf run` per node fed
// from a pods file, the ztunnel stand-in, real curl and real HTTP servers. No iptables anywhere.
import t from 'tap';
import { join } from 'node:path';
import { startTestbed, defaultSpec, type Testbed, type ZtunnelLogEntry } from '../../src/testbed/index.ts';
import { startHttpServer } from '../../src/testbed/helpers.ts';
import { startStandIns, stopStandIns } from '../../src/testbed/ztunnel/launch.ts';
import { testPrefix } from '../helpers/prefix.ts';
import { openPinnedMaps } from '../../src/bpf/datapath-maps.ts';
import { startLoader, waitReady, editPodsFile, metrics, type Loader } from '../helpers/loader.ts';
import { tracedCurl, type Expect } from '../helpers/standin.ts';
import { eventually, observeFor } from '../helpers/wait.ts';

const PORT = 8080;
const EXCLUDED = 8081;
/** How long a probe polled until a change takes effect waits for its line before it says "not yet". */
const PROBE_MS = 2000;

let tb: Testbed;
let podsFile: string;
const loaders: Loader[] = [];

const ip = (name: string): string => tb.pod(name).ip;
const newLogs = (node: string, since: number): ZtunnelLogEntry[] => tb.ztunnelLog(node).slice(since);

t.before(async () => {
  tb = await startTestbed(defaultSpec(), { topology: 'node', prefix: testPrefix() });
  podsFile = join(tb.info.runDir, 'pods.json');
  tb.writePodsList(podsFile);
  for (const node of tb.info.nodes)
    loaders.push(startLoader(tb, node, podsFile, ['--exclude-ports', String(EXCLUDED)]));
  await Promise.all(loaders.map((l) => waitReady(tb, l)));
  for (const pod of ['app1-node1', 'app2-node1', 'app1-node2', 'client-node1', 'client-node2']) {
    await startHttpServer(tb, pod, PORT);
  }
  await startHttpServer(tb, 'app1-node1', EXCLUDED);
});
t.teardown(async () => {
  for (const l of loaders) l.proc.kill('SIGTERM');
  await Promise.all(loaders.map((l) => l.proc.exited));
  await tb?.down();
});

/** curl and the stand-in's log lines that request produced on each node (see linesSince for `expect`). */
async function request(
  from: string,
  toPod: string,
  port = PORT,
  expect?: Expect,
  timeoutMs?: number,
): Promise<{ body: string; node1: ZtunnelLogEntry[]; node2: ZtunnelLogEntry[] }> {
  const r = await tracedCurl(tb, from, ip(toPod), port, ['node1', 'node2'], expect, timeoutMs);
  return { body: r.body, node1: r.lines['node1'] ?? [], node2: r.lines['node2'] ?? [] };
}

t.test('no iptables rule exists in any netns of the cluster', async (t) => {
  for (const target of [...tb.info.nodes.map((n) => n.name), ...tb.info.pods.map((p) => `${p.namespace}/${p.name}`)]) {
    const r = await tb.exec(target, ['iptables-save'], { check: false });
    t.notMatch(r.stdout, /^-A /m, `no rules in ${target}`);
  }
});

t.test('(a) mesh -> mesh on the same node: outbound via SO_ORIGINAL_DST, then HBONE, then the pod', async (t) => {
  const r = await request('app2-node1', 'app1-node1', PORT, { node1: ['outbound', 'inbound-hbone'] });
  t.match(r.body, /hello from app1-node1/);
  const out = r.node1.find((e) => e.direction === 'outbound');
  t.ok(out, 'ztunnel on node1 saw the outbound connection');
  t.equal(out?.source.split(':')[0], ip('app2-node1'), 'source at ztunnel is the client pod IP');
  t.equal(out?.originalDst, `${ip('app1-node1')}:${PORT}`);
  t.equal(out?.dstFrom, 'SO_ORIGINAL_DST', 'ztunnel learned the destination from getsockopt');
  t.ok(r.node1.some((e) => e.direction === 'inbound-hbone' && e.originalDst === `${ip('app1-node1')}:${PORT}`));
});

t.test('(b) mesh -> mesh across nodes: outbound -> HBONE -> inbound at the other node', async (t) => {
  const r = await request('app1-node1', 'app1-node2', PORT, { node1: ['outbound'], node2: ['inbound-hbone'] });
  t.match(r.body, /hello from app1-node2/);
  const out = r.node1.find((e) => e.direction === 'outbound');
  t.equal(out?.source.split(':')[0], ip('app1-node1'));
  t.equal(out?.originalDst, `${ip('app1-node2')}:${PORT}`);
  t.equal(out?.upstream, `${ip('app1-node2')}:15008`, 'HBONE goes to the destination pod IP on 15008');
  const inbound = r.node2.find((e) => e.direction === 'inbound-hbone');
  t.ok(inbound, 'ztunnel on node2 terminated the HBONE connection');
  t.equal(inbound?.originalDst, `${ip('app1-node2')}:${PORT}`);
  t.equal(inbound?.result, 'ok');
});

t.test('(c) non-mesh -> mesh: steered to 15006 with the pod IP as the local address', async (t) => {
  for (const from of ['client-node1', 'client-node2']) {
    const r = await request(from, 'app1-node1', PORT, { node1: ['inbound-plaintext'] });
    t.match(r.body, /hello from app1-node1/);
    const inbound = r.node1.find((e) => e.direction === 'inbound-plaintext');
    t.ok(inbound, `ztunnel on node1 captured ${from}'s connection`);
    t.equal(inbound?.source.split(':')[0], ip(from));
    t.equal(inbound?.originalDst, `${ip('app1-node1')}:${PORT}`);
    t.equal(inbound?.dstFrom, 'local-address', "the original destination is the socket's local address (sk_lookup)");
  }
});

t.test('(d) mesh -> non-mesh: outbound through ztunnel, then straight to the pod', async (t) => {
  const r = await request('app1-node1', 'client-node2', PORT, { node1: ['outbound'] });
  t.match(r.body, /hello from client-node2/);
  const out = r.node1.find((e) => e.direction === 'outbound');
  t.equal(out?.originalDst, `${ip('client-node2')}:${PORT}`);
  t.same(r.node2, [], 'no ztunnel on the way in to a non-mesh pod');
});

t.test("bypass: non-mesh outbound, excluded port, ztunnel's own upstream", async (t) => {
  const plain = await request('client-node1', 'client-node2');
  t.same([...plain.node1, ...plain.node2], [], 'non-mesh to non-mesh never touches ztunnel');
  const excluded = await request('app2-node1', 'app1-node1', EXCLUDED); // no line expected: observed for a window
  t.match(excluded.body, /hello from app1-node1/);
  t.notOk(
    excluded.node1.some((e) => e.direction === 'outbound'),
    'an excluded port is not redirected',
  );
  // One request through two ztunnels makes exactly one outbound and one inbound line: no loop.
  const r = await request('app2-node1', 'app1-node2', PORT, { node1: ['outbound'], node2: ['inbound-hbone'] });
  t.equal(r.node1.filter((e) => e.direction === 'outbound').length, 1);
  t.equal(r.node2.filter((e) => e.direction === 'inbound-hbone').length, 1);
});

t.test('the probe source 169.254.7.127 is not captured', async (t) => {
  await tb.exec('node1', ['ip', 'addr', 'add', '169.254.7.127/32', 'dev', 'lo']);
  t.teardown(() => tb.exec('node1', ['ip', 'addr', 'del', '169.254.7.127/32', 'dev', 'lo'], { check: false }));
  const before = tb.ztunnelLog('node1').length;
  const r = await tb.exec(
    'node1',
    ['curl', '-sS', '--max-time', '3', '--interface', '169.254.7.127', `http://${ip('app1-node1')}:${PORT}/`],
    { check: false },
  );
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, /peer=169\.254\.7\.127/, 'the pod sees the probe source itself');
  await observeFor(300); // what is tested: no line within the window
  t.same(newLogs('node1', before), []);
});

t.test("the client's getpeername() shows the original destination", async (t) => {
  const script = `import socket; s=socket.create_connection(("${ip('app1-node2')}", ${PORT}), 3); print("%s:%d" % s.getpeername()[:2])`;
  const r = await tb.exec('app1-node1', ['python3', '-c', script]);
  t.equal(r.stdout.trim(), `${ip('app1-node2')}:${PORT}`);
});

t.test('opt-out annotation and namespace label removal take effect within a second', async (t) => {
  // Whether a request went out through ztunnel; `expected` says how to look: wait for the line (up
  // to PROBE_MS) or watch a window for its absence.
  const viaZtunnel = async (expected: boolean): Promise<boolean> =>
    (
      await request('app2-node1', 'app1-node2', PORT, expected ? { node1: ['outbound'] } : undefined, PROBE_MS)
    ).node1.some((e) => e.direction === 'outbound');
  // While a change propagates, the two nodes' loaders apply it independently: node1 may still send
  // HBONE to a pod node2 already took out of the mesh (Istio has the same window). Such a request
  // fails and is retried; once both have applied it, requests must succeed.
  const settled = (want: boolean) => async (): Promise<boolean> => {
    try {
      return (await viaZtunnel(want)) === want;
    } catch {
      return false;
    }
  };
  // connect4 decides per connect() from the ambient-pod map: the time until app2-node1's entry
  // changes is the time until its traffic goes the new way. Read through the pin, as any observer.
  const maps = openPinnedMaps(tb.node('node1').bpffsDir);
  t.teardown(() => maps.close());
  const inMap = (): boolean => maps.pods.get(ip('app2-node1')) !== undefined;
  const mapFollowsWithin = async (want: boolean, what: string): Promise<void> => {
    const t0 = performance.now();
    await eventually(() => inMap() === want, 3000, what);
    const ms = performance.now() - t0;
    t.ok(ms < 1000, `${what} in the map within 1 s of the file change (${Math.round(ms)} ms)`);
  };
  t.ok(await viaZtunnel(true), 'redirected at first');
  editPodsFile(podsFile, (list) => {
    const pod = list.items.find((i) => i.kind === 'Pod' && i.metadata.name === 'app2-node1')!;
    pod.metadata.annotations = { ...pod.metadata.annotations, 'ambient.istio.io/redirection': 'disabled' };
  });
  await mapFollowsWithin(false, 'the opt-out');
  await eventually(settled(false), 10_000, 'the opt-out to take effect');
  editPodsFile(podsFile, (list) => {
    const pod = list.items.find((i) => i.kind === 'Pod' && i.metadata.name === 'app2-node1')!;
    delete pod.metadata.annotations?.['ambient.istio.io/redirection'];
  });
  await eventually(settled(true), 10_000, 'the pod to be redirected again');
  editPodsFile(podsFile, (list) => {
    const ns = list.items.find((i) => i.kind === 'Namespace' && i.metadata.name === 'mesh')!;
    ns.metadata.labels = {};
  });
  await mapFollowsWithin(false, 'the namespace label removal');
  await eventually(settled(false), 10_000, 'the namespace label removal to take effect');
  t.notOk(await viaZtunnel(false), 'settled: direct, and succeeding');
  const state = JSON.parse((await tb.exec('node1', ['cat', loaders[0]!.stateFile])).stdout) as { pods: unknown[] };
  t.same(state.pods, [], 'the state file lists no ambient pod');
  tb.writePodsList(podsFile);
  await eventually(settled(true), 10_000, 'the label to be back');
  t.ok(await viaZtunnel(true), 'settled: redirected, and succeeding');
});

t.test('ztunnel restarts in its pod (same sandbox, new listening sockets): inbound is captured again', async (t) => {
  await stopStandIns(tb);
  await startStandIns(tb);
  for (const p of ['app1-node1', 'app1-node2']) await tb.exec(p, ['true']); // the pods are still there
  await eventually(
    async () => {
      try {
        return (
          await request('client-node2', 'app1-node1', PORT, { node1: ['inbound-plaintext'] }, PROBE_MS)
        ).node1.some((e) => e.direction === 'inbound-plaintext');
      } catch {
        return false; // until the loader hands the new listeners over, steered SYNs find none
      }
    },
    10_000,
    'inbound plaintext through the restarted ztunnel',
  );
  const r = await request('app2-node1', 'app1-node2', PORT, { node2: ['inbound-hbone'] });
  t.ok(
    r.node2.some((e) => e.direction === 'inbound-hbone'),
    'cross-node HBONE lands on the restarted ztunnel of node2',
  );
});

t.test('counters and metrics show the datapath at work', async (t) => {
  const text = await metrics(tb, loaders[0]!);
  const value = (hook: string, outcome: string): number =>
    Number(
      new RegExp(`^ambpf_redirected_connections_total\\{hook="${hook}",outcome="${outcome}"\\} (\\d+)`, 'm').exec(
        text,
      )?.[1] ?? 'NaN',
    );
  t.ok(value('connect4', 'redirected') > 0, 'connect4 redirected');
  t.ok(value('getsockopt', 'answered') > 0, 'getsockopt answered SO_ORIGINAL_DST');
  t.ok(value('tc', 'steered') > 0, 'tc steered inbound');
  t.ok(value('sklookup', 'assigned') > 0, 'sk_lookup assigned');
  t.match(text, /^ambpf_map_entries\{map="ambpf_pods"\} 2$/m);
  t.match(text, /^ambpf_reconcile_passes_total \d+/m);
  t.match(text, /^process_resident_memory_bytes \d+/m, 'process defaults are exported');
  // /metrics reads ambpf_stats at scrape time: a scrape before and one after a direct read of the
  // map bracket it (counters only grow; background packets such as IPv6 router solicitations may
  // move the tc ones in between).
  const maps = openPinnedMaps(tb.node('node1').bpffsDir);
  t.teardown(() => maps.close());
  const counter = (text: string, name: string): bigint => {
    const i = name.indexOf('_');
    const m = new RegExp(
      `^ambpf_redirected_connections_total\\{hook="${name.slice(0, i)}",outcome="${name.slice(i + 1)}"\\} (\\d+)`,
      'm',
    ).exec(text);
    return BigInt(m?.[1] ?? '-1');
  };
  const before = await metrics(tb, loaders[0]!);
  const stats = maps.stats();
  const after = await metrics(tb, loaders[0]!);
  for (const [name, v] of Object.entries(stats)) {
    t.ok(
      counter(before, name) <= v && v <= counter(after, name),
      `${name}: /metrics agrees with ambpf_stats (${counter(before, name)} <= ${v} <= ${counter(after, name)})`,
    );
  }
});
