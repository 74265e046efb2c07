// The eBPF datapath end to end, inpod topology (Istio 1.21+): two nodes in netns, the ztunnel stand-in
// listening inside every mesh pod's netns, one `ambpf run --mode inpod` per node fed from a pods file,
// real curl and real HTTP servers. No iptables anywhere, and nothing of ours in the nodes' netns.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import {
  startTestbed,
  defaultSpec,
  startStandIns,
  stopStandIns,
  type Testbed,
  type ZtunnelLogEntry,
} from '../../src/testbed/index.ts';
import { startHttpServer, curl } from '../../src/testbed/helpers.ts';
import { INPOD_CGROUP_HOOKS } from '../../src/bpf/names.ts';
import { testPrefix } from '../helpers/prefix.ts';
import { startLoader, waitReady, editPodsFile, metrics, AMBPF_BIN, type Loader } from '../helpers/loader.ts';
import { tracedCurl, type Expect } from '../helpers/standin.ts';
import { eventually, observeFor } from '../helpers/wait.ts';

const PORT = 8080;
const EXCLUDED = 8081;
/** How long a probe polled until a change takes effect waits for its line before it says "not yet". */
const PROBE_MS = 2000;

let tb: Testbed;
let podsFile: string;
const loaders: Loader[] = [];
/** `ip rule` of each node netns before any loader ran. */
const rulesBefore = new Map<string, string>();

const ip = (name: string): string => tb.pod(name).ip;
const where = (name: string): string => `${tb.pod(name).namespace}/${name}`;
const newLogs = (node: string, since: number): ZtunnelLogEntry[] => tb.ztunnelLog(node).slice(since);

t.before(async () => {
  tb = await startTestbed(defaultSpec(), { topology: 'inpod', prefix: testPrefix() });
  podsFile = join(tb.info.runDir, 'pods.json');
  tb.writePodsList(podsFile);
  for (const node of tb.info.nodes)
    rulesBefore.set(node.name, (await tb.exec(node.name, ['ip', 'rule', 'show'])).stdout);
  for (const node of tb.info.nodes)
    loaders.push(startLoader(tb, node, podsFile, ['--mode', 'inpod', '--exclude-ports', String(EXCLUDED)]));
  await Promise.all(loaders.map((l) => waitReady(tb, l)));
  for (const pod of ['app1-node1', 'app2-node1', 'app1-node2', 'client-node1', 'client-node2']) {
    await startHttpServer(tb, pod, PORT);
  }
  await startHttpServer(tb, 'app1-node1', EXCLUDED);
  // Ready means the first pass ran; a pod is captured once the stand-in's listeners were found in it.
  await eventually(
    () => capturedPods(loaders[0]!).length === 2 && capturedPods(loaders[1]!).length === 2,
    10_000,
    'every mesh pod to be captured',
  ).catch((err: unknown) => {
    const tail = loaders.map((l) =>
      l
        .logLines()
        .slice(-6)
        .map((e) => JSON.stringify(e))
        .join('\n'),
    );
    throw new Error(`${(err as Error).message}; last loader log lines:\n${tail.join('\n')}`);
  });
});
t.teardown(async () => {
  for (const l of loaders) l.proc.kill('SIGTERM');
  await Promise.all(loaders.map((l) => l.proc.exited));
  await tb?.down();
});

/** The per-pod sk_lookup pins of a node's loader. */
function capturedPods(l: Loader): string[] {
  const dir = join(l.node.bpffsDir, 'links');
  if (!existsSync(dir)) return [];
  return execFileSync('ls', [dir], { encoding: 'utf8' })
    .split('\n')
    .filter((n) => /^inpod-\d+$/.test(n));
}

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

t.test(
  '(a) mesh -> mesh on the same node: <pod IP>:15001 in the client pod, SO_ORIGINAL_DST, HBONE into the server pod',
  async (t) => {
    const r = await request('app2-node1', 'app1-node1', PORT, { node1: ['outbound', 'inbound-hbone'] });
    t.match(r.body, /hello from app1-node1/);
    const out = r.node1.find((e) => e.direction === 'outbound');
    t.ok(out, 'ztunnel saw the outbound connection');
    t.equal(out?.where, where('app2-node1'), "inside the client pod's netns");
    t.equal(out?.source.split(':')[0], ip('app2-node1'), "from the pod's own IP, as with Istio's REDIRECT");
    t.equal(out?.originalDst, `${ip('app1-node1')}:${PORT}`);
    t.equal(out?.dstFrom, 'SO_ORIGINAL_DST', 'ztunnel learned the destination from getsockopt');
    t.equal(out?.upstream, `${ip('app1-node1')}:15008`);
    // These stand-ins run as ztunnel with ENABLE_ORIG_SRC=false: no IP_TRANSPARENT on 15001, so the
    // connection cannot keep its destination; it is recorded and rewritten to the pod's IP:15001.
    const m = await metrics(tb, loaders[0]!);
    t.match(m, /outcome="handed"\} [1-9]/, "the original was handed to ztunnel's accepted socket");
    t.notMatch(m, /outcome="kept_dst"\} [1-9]/, 'no destination kept without a transparent 15001');
    const inbound = r.node1.find((e) => e.direction === 'inbound-hbone');
    t.equal(inbound?.where, where('app1-node1'), 'HBONE terminated inside the server pod');
    t.equal(inbound?.originalDst, `${ip('app1-node1')}:${PORT}`);
    t.equal(inbound?.result, 'ok');
  },
);

t.test("(b) mesh -> mesh across nodes: outbound in the client pod -> HBONE -> the server pod's 15008", async (t) => {
  const r = await request('app1-node1', 'app1-node2', PORT, { node1: ['outbound'], node2: ['inbound-hbone'] });
  t.match(r.body, /hello from app1-node2/);
  const out = r.node1.find((e) => e.direction === 'outbound');
  t.equal(out?.where, where('app1-node1'));
  t.equal(out?.originalDst, `${ip('app1-node2')}:${PORT}`);
  t.equal(out?.upstream, `${ip('app1-node2')}:15008`, 'HBONE goes to the destination pod IP on 15008');
  const inbound = r.node2.find((e) => e.direction === 'inbound-hbone');
  t.equal(inbound?.where, where('app1-node2'));
  t.equal(inbound?.originalDst, `${ip('app1-node2')}:${PORT}`);
  t.equal(inbound?.result, 'ok');
});

t.test('(c) non-mesh -> mesh: assigned to 15006 inside the pod, the pod IP as local address', async (t) => {
  for (const from of ['client-node1', 'client-node2']) {
    const r = await request(from, 'app1-node1', PORT, { node1: ['inbound-plaintext'] });
    t.match(r.body, /hello from app1-node1/);
    const inbound = r.node1.find((e) => e.direction === 'inbound-plaintext');
    t.ok(inbound, `ztunnel in app1-node1 captured ${from}'s connection`);
    t.equal(inbound?.where, where('app1-node1'));
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
  t.equal(out?.upstreamProtocol, 'tcp', 'passthrough');
  t.same(r.node2, [], 'no ztunnel on the way in to a non-mesh pod');
});

t.test("bypass: non-mesh outbound, excluded port, ztunnel's own upstream (no loop)", async (t) => {
  const plain = await request('client-node1', 'client-node2');
  t.same([...plain.node1, ...plain.node2], [], 'non-mesh to non-mesh never touches ztunnel');
  const excluded = await request('app2-node1', 'app1-node1', EXCLUDED); // no line expected: observed for a window
  t.match(excluded.body, /hello from app1-node1/);
  t.notOk(
    excluded.node1.some((e) => e.direction === 'outbound'),
    'an excluded port is not redirected',
  );
  // One request through two ztunnels makes exactly one outbound and one inbound line: the stand-in's
  // upstream to the pod's own IP (local == remote) is not steered back into it.
  const r = await request('app2-node1', 'app1-node2', PORT, { node1: ['outbound'], node2: ['inbound-hbone'] });
  t.equal(r.node1.filter((e) => e.direction === 'outbound').length, 1);
  t.equal(r.node2.filter((e) => e.direction === 'inbound-hbone').length, 1);
  t.equal(r.node2.filter((e) => e.direction === 'inbound-plaintext').length, 0);
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

t.test("nothing of ours in the nodes' netns: no program, link, route or rule", async (t) => {
  const links = JSON.parse(execFileSync('bpftool', ['-j', 'link', 'show'], { encoding: 'utf8' })) as Array<{
    type: string;
    netns_ino?: number;
  }>;
  const netnsLinks = new Set(links.filter((l) => l.type === 'netns').map((l) => l.netns_ino));
  for (const node of tb.info.nodes) {
    t.notOk(netnsLinks.has(statSync(node.netnsPath).ino), `no netns-attached program in ${node.name}'s netns`);
    const net = await tb.exec(node.name, ['bpftool', 'net', 'show']);
    t.notMatch(net.stdout, /ambpf/, `no tc/xdp program of ours in ${node.name}'s netns`);
    const tcx = await tb.exec(node.name, ['bpftool', '-j', 'net', 'show'], { check: false });
    t.notMatch(tcx.stdout, /"tc":\[\{/, `no tc attachment at all on ${node.name}'s interfaces`);
    t.equal(
      (await tb.exec(node.name, ['ip', 'rule', 'show'])).stdout,
      rulesBefore.get(node.name),
      `ip rule in ${node.name} unchanged`,
    );
  }
  for (const pod of tb.info.pods.filter((p) => p.mesh)) {
    t.ok(netnsLinks.has(statSync(pod.netnsPath).ino), `sk_lookup sits in ${pod.name}'s own netns`);
  }
  for (const pod of tb.info.pods.filter((p) => !p.mesh && !p.hostNetwork)) {
    t.notOk(netnsLinks.has(statSync(pod.netnsPath).ino), `nothing in non-mesh ${pod.name}'s netns`);
  }
});

t.test('pods leave and rejoin the mesh within a second, their sk_lookup link with them', async (t) => {
  // Which way a request went; `expected` says how to look: wait for the line (up to PROBE_MS) or
  // watch a window for its absence.
  const viaZtunnel = async (expected: boolean): Promise<boolean> =>
    (
      await request('app2-node1', 'app1-node2', PORT, expected ? { node1: ['outbound'] } : undefined, PROBE_MS)
    ).node1.some((e) => e.direction === 'outbound');
  const inboundCaptured = async (expected: boolean): Promise<boolean> =>
    (
      await request(
        'client-node1',
        'app2-node1',
        PORT,
        expected ? { node1: ['inbound-plaintext'] } : undefined,
        PROBE_MS,
      )
    ).node1.some((e) => e.direction === 'inbound-plaintext');
  // The two nodes' loaders apply a change independently; a request caught between them may fail
  // (Istio has the same window). Inside `eventually` such a failure means "not yet".
  const settled = (probe: (expected: boolean) => Promise<boolean>, want: boolean) => async (): Promise<boolean> => {
    try {
      return (await probe(want)) === want;
    } catch {
      return false;
    }
  };
  t.ok(await viaZtunnel(true), 'redirected at first');
  t.ok(await inboundCaptured(true), 'inbound captured at first');
  editPodsFile(podsFile, (list) => {
    const pod = list.items.find((i) => i.kind === 'Pod' && i.metadata.name === 'app2-node1')!;
    pod.metadata.annotations = { ...pod.metadata.annotations, 'ambient.istio.io/redirection': 'disabled' };
  });
  const t0 = Date.now();
  await eventually(settled(viaZtunnel, false), 10_000, 'the opt-out to take effect');
  t.ok(Date.now() - t0 < 2000, 'opt-out applied within the bound');
  await eventually(async () => capturedPods(loaders[0]!).length === 1, 10_000, "app2-node1's link to be removed");
  t.notOk(await inboundCaptured(false), 'inbound to the opted-out pod goes straight to it');
  editPodsFile(podsFile, (list) => {
    const ns = list.items.find((i) => i.kind === 'Namespace' && i.metadata.name === 'mesh')!;
    ns.metadata.labels = {};
  });
  await eventually(
    () => capturedPods(loaders[0]!).length === 0 && capturedPods(loaders[1]!).length === 0,
    10_000,
    'every pod link to be removed',
  );
  tb.writePodsList(podsFile);
  await eventually(settled(viaZtunnel, true), 10_000, 'the pod to be redirected again');
  await eventually(settled(inboundCaptured, true), 10_000, 'inbound to be captured again');
  t.ok(await viaZtunnel(true), 'settled: redirected, and succeeding');
  t.equal(capturedPods(loaders[0]!).length, 2);
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
  t.ok(value('sklookup', 'assigned') > 0, 'sk_lookup assigned');
  t.ok(value('sklookup', 'pass_probe') > 0, 'sk_lookup let the probe through');
  t.equal(value('tc', 'steered'), 0, 'no tc steering in inpod');
  t.match(text, /^ambpf_map_entries\{map="ambpf_pods"\} 2$/m);
});

/** Whether app2-node1 -> app1-node2 went through ztunnel with SO_ORIGINAL_DST answered (its line awaited up to `timeoutMs`). */
async function outboundAnswered(timeoutMs?: number): Promise<boolean> {
  try {
    const r = await request('app2-node1', 'app1-node2', PORT, { node1: ['outbound'] }, timeoutMs);
    return r.node1.some((e) => e.direction === 'outbound' && e.dstFrom === 'SO_ORIGINAL_DST' && e.result === 'ok');
  } catch {
    return false;
  }
}

t.test('ztunnel restarts in every pod: its new listeners are captured again', async (t) => {
  await stopStandIns(tb);
  await startStandIns(tb);
  // Outbound needs nothing from the loader (the pod's own IP:15001 reaches any listener of the
  // group); inbound is refused (fail closed) until the loader noticed the old listeners left
  // ambpf_inpod_listen (resync) and registered the new ones.
  await eventually(() => outboundAnswered(PROBE_MS), 10_000, 'outbound through the new ztunnel with SO_ORIGINAL_DST');
  await eventually(
    async () => (await curl(tb, 'client-node1', ip('app1-node1'), PORT, { timeoutMs: 2000 })).exitCode === 0,
    10_000,
    "inbound through the new ztunnel's listeners",
  );
  const r = await request('client-node1', 'app1-node1', PORT, { node1: ['inbound-plaintext'] });
  t.ok(
    r.node1.some((e) => e.direction === 'inbound-plaintext' && e.where === where('app1-node1')),
    'inbound lands on the new 15006',
  );
});

t.test('a loader killed with SIGKILL leaves traffic flowing; its successor adopts every pin', async (t) => {
  const l = loaders[0]!;
  const before = capturedPods(l).sort();
  l.proc.kill('SIGKILL');
  await l.proc.exited;
  t.ok(await outboundAnswered(), 'redirected while no loader runs');
  // Links on node1's kubepods cgroup and in its pods' netns (other tests on this machine make links too).
  const cgroupId = statSync(l.node.kubepodsCgroup).ino;
  const podInos = new Set(tb.info.pods.filter((p) => p.node === 'node1').map((p) => statSync(p.netnsPath).ino));
  const countLinks = (): number =>
    (
      JSON.parse(execFileSync('bpftool', ['-j', 'link', 'show'], { encoding: 'utf8' })) as Array<{
        cgroup_id?: number;
        netns_ino?: number;
      }>
    ).filter((x) => x.cgroup_id === cgroupId || (x.netns_ino !== undefined && podInos.has(x.netns_ino))).length;
  const linksBefore = countLinks();
  l.restart();
  await waitReady(tb, l);
  t.same(capturedPods(l).sort(), before, 'the same per-pod pins');
  // Every inpod cgroup hook on kubepods, and per pod its sk_lookup link on the pod's netns (bpftool
  // shows a tcx link by ifindex only, so the pods' eth0 links are not in this count).
  const hooks = Object.keys(INPOD_CGROUP_HOOKS).length;
  t.equal(linksBefore, hooks + before.length, `${hooks} cgroup hooks and ${before.length} sk_lookup links`);
  t.equal(countLinks(), linksBefore, 'no duplicate attachment');
  t.ok(await outboundAnswered(), 'still redirected');
});

t.test('ambpf uninstall removes the per-pod links and the inpod maps, and traffic goes direct', async (t) => {
  const l = loaders[0]!;
  l.proc.kill('SIGTERM');
  await l.proc.exited;
  const r = await tb.exec('node1', [AMBPF_BIN, 'uninstall', '--bpffs', l.node.bpffsDir, '-j']);
  const report = JSON.parse(r.stdout) as { links: string[]; maps: string[] };
  t.equal(report.links.filter((n) => /^inpod-\d+$/.test(n)).length, 2, "both pods' sk_lookup links");
  t.ok(
    ['ambpf_inpod_sk', 'ambpf_inpod_closed', 'ambpf_inpod_listen'].every((m) => report.maps.includes(m)),
    'the inpod maps',
  );
  const links = JSON.parse(execFileSync('bpftool', ['-j', 'link', 'show'], { encoding: 'utf8' })) as Array<{
    type: string;
    netns_ino?: number;
  }>;
  for (const pod of ['app1-node1', 'app2-node1']) {
    t.notOk(
      links.some((x) => x.type === 'netns' && x.netns_ino === statSync(tb.pod(pod).netnsPath).ino),
      `nothing left in ${pod}'s netns`,
    );
  }
  const out = await request('app2-node1', 'client-node1'); // no line expected: observed for a window
  t.same(out.node1, [], "node1's pods talk directly again");
});
