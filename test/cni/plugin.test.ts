// The chained CNI plugin (cni/ambpf-cni.c) run the way a container runtime runs it (CNI_* env, the
// config on stdin, prevResult from the plugin before it), against a real `ambpf run --mode inpod
// --cni-socket` on a one-node testbed with the ZDS ztunnel stand-in. The testbed builds each pod's
// netns and veth (the primary CNI's part); the pods file shows the CNI pods as Kubernetes does before
// their sandbox exists: Pending, no IP; a pod it does not show yet (cni-late) is captured from its
// namespace alone (provisional) and confirmed or released later. What the plugin must guarantee: ADD
// of an ambient pod returns only when ztunnel has it, so the pod's first connection already goes
// through ztunnel; a failed ADD leaves nothing behind. The race over 200 sandboxes: race.test.ts.
import t from 'tap';
import type * as Tap from 'tap';
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Testbed, TestbedPod } from '../../src/testbed/index.ts';
import { stopZtunnel, startExtraZtunnel } from '../../src/testbed/ztunnel/launch.ts';
import type { StateFile } from '../../src/state/state-file.ts';
import { startLoader, waitReady, editPodsFile, type Loader } from '../helpers/loader.ts';
import { tracedCurl } from '../helpers/standin.ts';
import { eventually } from '../helpers/wait.ts';
import { CniChain, DEBIAN_CNI_BIN, runPlugin as exec, type ChainSandbox, type PluginRun } from '../../src/cni/chain.ts';
import { netnsCookie } from '../../src/libbpf/index.ts';
import { inpodLinkName, linkNames } from '../../src/bpf/pins.ts';
import {
  PLUGIN,
  PORT,
  cniChain,
  cniSpec,
  pendingPod,
  sandboxPod,
  startCniAgent,
  startCniTestbed,
  stopCniNode,
  type CniNode,
} from './env.ts';

const CNI_BIN = DEBIAN_CNI_BIN;
const TIMEOUT_MS = 3000;
/** A pod ADD captured that the source never shows is released after this (--cni-grace-ms). */
const GRACE_MS = 4000;
/** ADDs of the latency loop (each followed by DEL and its release). */
const LATENCY_LOOP = Number(process.env['AMBPF_CNI_LATENCY_LOOP'] ?? 20);

const spec = cniSpec([
  { name: 'cni-mesh', namespace: 'mesh', node: 'node1' },
  { name: 'cni-plain', namespace: 'plain', node: 'node1' },
  { name: 'cni-late', namespace: 'mesh', node: 'node1' },
  { name: 'cni-gone', namespace: 'mesh', node: 'node1' },
  { name: 'cni-none', namespace: 'mesh', node: 'node1' },
  { name: 'cni-restart', namespace: 'mesh', node: 'node1' },
  { name: 'cni-own', namespace: 'plain', node: 'node1', labels: { 'istio.io/dataplane-mode': 'ambient' } },
  { name: 'cni-own2', namespace: 'plain', node: 'node1', labels: { 'istio.io/dataplane-mode': 'ambient' } },
]);
/** Pods the source does not show until a test says so; one each, so that no ADD races the agent's
 * reading of a pods file that just took its pod away. */
const LATE = ['cni-late', 'cni-gone', 'cni-none', 'cni-restart', 'cni-own', 'cni-own2'];
/** Pods the runtime creates through the plugin: in the pods file without IPs. */
const CNI_PODS = ['cni-mesh', 'cni-plain', ...LATE];

let node: CniNode;
let tb: Testbed;
let loader: Loader;
let podsFile: string;
let socket: string;
/** Pod objects the test adds to the pods file beside the testbed's (the chained pod). */
const extraPods: Array<Record<string, unknown>> = [];

/** Runs the plugin binary as a runtime does: env + stdin, stdout and exit code back. */
const runPlugin = (
  env: Record<string, string>,
  stdin: string,
  argv: readonly string[] = [PLUGIN],
): Promise<PluginRun> => exec(argv, env, stdin);

function prevResult(version: string, ip: string): Record<string, unknown> {
  return {
    cniVersion: version,
    interfaces: [{ name: 'eth0', sandbox: '/var/run/netns/x' }],
    ips: [{ ...(version === '0.3.1' ? { version: '4' } : {}), address: `${ip}/32`, interface: 0 }],
  };
}

function config(version: string, extra: Record<string, unknown> = {}, ip?: string): string {
  return JSON.stringify({
    cniVersion: version,
    name: 'k8s-pod-network',
    type: 'ambpf-cni',
    socketPath: socket,
    ...(ip ? { prevResult: prevResult(version, ip) } : {}),
    ...extra,
  });
}

function envFor(command: string, pod: string): Record<string, string> {
  const p = tb.pod(pod);
  return {
    CNI_COMMAND: command,
    CNI_CONTAINERID: p.containerId,
    CNI_NETNS: p.netnsPath,
    CNI_IFNAME: 'eth0',
    CNI_PATH: '/opt/cni/bin',
    CNI_ARGS:
      `IgnoreUnknown=1;K8S_POD_NAMESPACE=${p.namespace};K8S_POD_NAME=${p.name};` +
      `K8S_POD_INFRA_CONTAINER_ID=${p.containerId};K8S_POD_UID=${p.uid}`,
  };
}

const add = (pod: string, version = '1.0.0', extra: Record<string, unknown> = {}): Promise<PluginRun> =>
  runPlugin(envFor('ADD', pod), config(version, extra, tb.pod(pod).ip));

function zdsState(pod: string): string | undefined {
  try {
    const state = JSON.parse(readFileSync(loader.stateFile, 'utf8')) as StateFile;
    const p = state.pods.find((x) => x.name === pod);
    return p ? (p.zds?.state ?? 'none') : undefined;
  } catch {
    return undefined;
  }
}

/** The pods file as Kubernetes shows a pod before its sandbox: Pending, no IP; `absent` not at all. */
function writePods(shown: readonly string[] = [], labels: Record<string, Record<string, string>> = {}): void {
  const absent = LATE.filter((name) => !shown.includes(name));
  tb.writePodsList(podsFile);
  editPodsFile(podsFile, (list) => {
    list.items = list.items.filter((o) => !(o.kind === 'Pod' && absent.includes(o.metadata.name)));
    list.items.push(...(extraPods as typeof list.items));
    for (const o of list.items) {
      if (o.kind !== 'Pod' || !CNI_PODS.includes(o.metadata.name)) continue;
      o['status'] = { phase: 'Pending' };
      const extra = labels[o.metadata.name];
      if (extra) o.metadata.labels = { ...(o.metadata.labels ?? {}), ...extra };
    }
  });
}

/** The pods the agent keeps for CNI ADD across restarts (cni-pods.json beside the state file). */
function cniPods(): Array<{ uid: string; name: string; seen: boolean }> {
  try {
    return (
      JSON.parse(readFileSync(join(tb.info.runDir, 'cni-pods.json'), 'utf8')) as {
        pods: Array<{ uid: string; name: string; seen: boolean }>;
      }
    ).pods;
  } catch {
    return [];
  }
}

/** Whether the capture of this netns is pinned (its sk_lookup link). */
function armedAt(netnsPath: string): boolean {
  return linkNames(tb.node('node1').bpffsDir).includes(inpodLinkName(netnsCookie(netnsPath)));
}

/** Nothing of the pod left: not in the state file, not kept for CNI, its netns not captured. */
async function nothingLeft(t: Tap.Test, pod: string, netnsPath: string, kept = false): Promise<void> {
  await eventually(() => zdsState(pod) === undefined && !armedAt(netnsPath), 10_000, `nothing left of ${pod}`);
  // A pod the source shows outside the mesh stays known (its netns, should it join later) until DEL.
  if (!kept)
    t.notOk(
      cniPods().some((p) => p.name === pod),
      `${pod} is not kept for CNI`,
    );
}

/** ztunnel acked the pod, as the state file tells (written by the pass after the ack). */
const acked = (pod: string): Promise<unknown> =>
  eventually(() => zdsState(pod) === 'acked', 10_000, `the state file to show ${pod} acked`);

const flags = (graceMs: number): string[] => [
  '--cni-socket',
  socket,
  '--cni-timeout-ms',
  String(TIMEOUT_MS),
  '--cni-grace-ms',
  String(graceMs),
];

/** The loader logged a line whose message contains this. */
const logged = (text: string): boolean => loader.logLines().some((l) => String(l['msg']).includes(text));

const del = (pod: string): Promise<PluginRun> => runPlugin(envFor('DEL', pod), config('1.0.0'));

t.before(async () => {
  node = await startCniTestbed(spec);
  ({ tb, podsFile, socket } = node);
  writePods();
  loader = await startCniAgent(node, flags(GRACE_MS));
});
t.teardown(() => stopCniNode(tb, loader));

t.test('VERSION is answered by the plugin itself', async (t) => {
  const r = await runPlugin({ CNI_COMMAND: 'VERSION' }, '{"cniVersion":"1.0.0"}');
  t.equal(r.code, 0);
  const supportedVersions = ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'];
  t.same(JSON.parse(r.stdout), { cniVersion: '1.0.0', supportedVersions });
});

t.test('ADD of a non-ambient pod hands prevResult on at once', async (t) => {
  const r = await add('cni-plain');
  t.equal(r.code, 0, r.stdout + r.stderr);
  t.same(JSON.parse(r.stdout), prevResult('1.0.0', tb.pod('cni-plain').ip), 'prevResult unchanged');
  t.equal(zdsState('cni-plain'), undefined, 'not a mesh pod');
  t.comment(`non-ambient ADD: ${r.ms.toFixed(0)} ms`);
});

t.test('ADD of an ambient pod returns once ztunnel acked; its first connect goes through ztunnel', async (t) => {
  t.equal(zdsState('cni-mesh'), undefined, 'before ADD the agent does not capture the pod (no IP in the source)');
  const r = await add('cni-mesh');
  t.equal(r.code, 0, r.stdout + r.stderr);
  t.same(JSON.parse(r.stdout), prevResult('1.0.0', tb.pod('cni-mesh').ip), 'prevResult unchanged');
  t.comment(`ambient ADD with ztunnel ready: ${r.ms.toFixed(0)} ms (plugin exec to exit)`);
  // The first connection of the pod, right after ADD: through ztunnel, never direct.
  const traced = await tracedCurl(tb, 'cni-mesh', tb.pod('server').ip, PORT, ['node1'], { node1: ['outbound'] });
  const out = traced.lines['node1']?.find((e) => e.direction === 'outbound');
  t.equal(out?.source.split(':')[0], tb.pod('cni-mesh').ip, "ztunnel proxied the pod's connection");
  await eventually(() => zdsState('cni-mesh') === 'acked', 10_000, 'the state file to show cni-mesh acked');
  const served = loader.logLines().filter((l) => l['msg'] === 'CNI request served');
  t.ok(served.length >= 2, 'the agent logged each ADD');
});

t.test('ADD again (the runtime retries) is idempotent', async (t) => {
  const r = await add('cni-mesh');
  t.equal(r.code, 0, r.stdout + r.stderr);
  t.comment(`repeated ambient ADD: ${r.ms.toFixed(0)} ms`);
});

t.test('DEL succeeds and is idempotent; the pod is released', async (t) => {
  for (let i = 0; i < 2; i++) {
    const r = await runPlugin(envFor('DEL', 'cni-mesh'), config('1.0.0'));
    t.equal(r.code, 0, `DEL #${i + 1}: ${r.stdout}${r.stderr}`);
    t.equal(r.stdout, '', 'DEL prints nothing');
  }
  await eventually(() => zdsState('cni-mesh') === undefined, 10_000, 'cni-mesh to leave the state file');
  const r = await runPlugin(envFor('CHECK', 'cni-mesh'), config('1.0.0', {}, tb.pod('cni-mesh').ip));
  t.equal(r.code, 0, 'CHECK succeeds');
});

t.test("0.4.0 and 0.3.1 configs: ADD of the ambient pod, result in the config's version", async (t) => {
  for (const version of ['0.4.0', '0.3.1']) {
    const r = await add('cni-mesh', version);
    t.equal(r.code, 0, r.stdout + r.stderr);
    t.same(JSON.parse(r.stdout), prevResult(version, tb.pod('cni-mesh').ip), `${version}: prevResult unchanged`);
    t.equal((await runPlugin(envFor('DEL', 'cni-mesh'), config(version))).code, 0, `${version}: DEL`);
    await eventually(() => zdsState('cni-mesh') === undefined, 10_000, 'cni-mesh to leave the state file');
  }
});

t.test('ADD latency with ztunnel ready: a small loop of ADD, first connect, DEL', async (t) => {
  const times: number[] = [];
  for (let i = 0; i < LATENCY_LOOP; i++) {
    const r = await add('cni-mesh');
    t.equal(r.code, 0, `ADD #${i + 1}: ${r.stdout}`);
    times.push(r.ms);
    t.equal((await del('cni-mesh')).code, 0, `DEL #${i + 1}`);
    await nothingLeft(t, 'cni-mesh', tb.pod('cni-mesh').netnsPath);
  }
  times.sort((a, b) => a - b);
  const q = (p: number): string => times[Math.min(times.length - 1, Math.floor(p * times.length))]!.toFixed(0);
  t.comment(`ambient ADD, ztunnel ready, ${times.length} runs: median ${q(0.5)} ms, p99 ${q(0.99)} ms`);
});

t.test('a pod the source has not shown, in an ambient namespace: captured at once, provisionally', async (t) => {
  const waiting = loader.logLines().filter((l) => String(l['msg']).startsWith('CNI ADD waits')).length;
  const r = await add('cni-late');
  t.equal(r.code, 0, `ADD: ${r.stdout}${r.stderr}`);
  t.comment(`provisional ADD: ${r.ms.toFixed(0)} ms`);
  t.equal(
    loader.logLines().filter((l) => String(l['msg']).startsWith('CNI ADD waits')).length,
    waiting,
    'ADD did not wait for the pod source',
  );
  t.ok(logged('captured provisionally'), 'the agent says provisional');
  const traced = await tracedCurl(tb, 'cni-late', tb.pod('server').ip, PORT, ['node1'], { node1: ['outbound'] });
  const out = traced.lines['node1']?.find((e) => e.direction === 'outbound');
  t.equal(out?.source.split(':')[0], tb.pod('cni-late').ip, 'its first connection went through ztunnel');
  t.same(
    cniPods()
      .filter((p) => p.name === 'cni-late')
      .map((p) => p.seen),
    [false],
    'kept, not confirmed yet',
  );
  // The source shows it (as ambient, with a service account of its own): confirmed, kept past the
  // grace period, and handed to ztunnel again with the right WorkloadInfo (Del, then Add).
  const uid = tb.pod('cni-late').uid;
  const took = (): number =>
    loader.logLines().filter((l) => l['msg'] === 'ztunnel took the pod' && l['uid'] === uid).length;
  t.equal(took(), 1, 'ztunnel took it once, with the default service account');
  writePods(['cni-late']);
  editPodsFile(podsFile, (list) => {
    const pod = list.items.find((o) => o.kind === 'Pod' && o.metadata.name === 'cni-late');
    if (pod) pod['spec'] = { ...(pod['spec'] as object), serviceAccountName: 'late-sa' };
  });
  await eventually(() => cniPods().some((p) => p.name === 'cni-late' && p.seen), 10_000, 'the source to confirm it');
  await eventually(() => took() === 2, 10_000, 'ztunnel to take it again with its own service account');
  t.ok(
    loader.logLines().some((l) => l['msg'] === 'ztunnel released the pod' && l['uid'] === uid),
    'after a Del',
  );
  const confirmedAt = Date.now();
  await eventually(() => Date.now() - confirmedAt > GRACE_MS, GRACE_MS + 2000, 'the grace period to pass');
  t.equal(zdsState('cni-late'), 'acked', 'still captured and served after the grace period');
  t.equal((await del('cni-late')).code, 0, 'DEL');
  await nothingLeft(t, 'cni-late', tb.pod('cni-late').netnsPath);
});

t.test('a provisional pod the source never shows is released after the grace period', async (t) => {
  const r = await add('cni-gone');
  t.equal(r.code, 0, `ADD: ${r.stdout}${r.stderr}`);
  const at = Date.now();
  await acked('cni-gone');
  await nothingLeft(t, 'cni-gone', tb.pod('cni-gone').netnsPath);
  const after = Date.now() - at;
  t.ok(after >= GRACE_MS * 0.9, `released after ${after} ms (grace ${GRACE_MS} ms)`);
  t.ok(logged('the pod source never showed it'), 'the agent says why');
});

t.test('a provisional pod the source then shows outside the mesh is released', async (t) => {
  t.equal((await add('cni-none')).code, 0, 'ADD');
  await acked('cni-none');
  writePods(['cni-none'], { 'cni-none': { 'istio.io/dataplane-mode': 'none' } });
  await nothingLeft(t, 'cni-none', tb.pod('cni-none').netnsPath, true);
  t.equal((await add('cni-none')).code, 0, 'ADD again: not ambient now, prevResult at once');
  t.equal(zdsState('cni-none'), undefined, 'and not captured');
  t.equal((await del('cni-none')).code, 0, 'DEL');
  await eventually(() => !cniPods().some((p) => p.name === 'cni-none'), 5_000, 'DEL to drop what was kept');
});

t.test('a pod not shown yet in a namespace that is not ambient: ADD waits for the source', async (t) => {
  // cni-own is ambient by its own label, which only the source can tell.
  const waiting = (): number =>
    loader.logLines().filter((l) => String(l['msg']).startsWith('CNI ADD waits for the pod')).length;
  const before = waiting();
  const pending = add('cni-own');
  await eventually(() => waiting() > before, 5_000, 'ADD to wait for the pod');
  writePods(['cni-none', 'cni-own'], { 'cni-none': { 'istio.io/dataplane-mode': 'none' } });
  const r = await pending;
  t.equal(r.code, 0, `ADD waited for the pod: ${r.stdout}${r.stderr}`);
  await acked('cni-own'); // the pod's label made it ambient
  t.equal((await del('cni-own')).code, 0);
  await nothingLeft(t, 'cni-own', tb.pod('cni-own').netnsPath);

  const r2 = await add('cni-own2');
  t.equal(r2.code, 1);
  const err = JSON.parse(r2.stdout) as { code: number; msg: string };
  t.equal(err.code, 11, 'try again later');
  t.match(err.msg, /not known to the agent's pod source/);
  t.ok(r2.ms >= TIMEOUT_MS * 0.9, `it waited its bound (${r2.ms.toFixed(0)} ms)`);
  t.equal(zdsState('cni-own2'), undefined, 'not captured');
});

/** A pod sandbox as a runtime makes it: a netns with no process, the pod's cgroup, its Pod object. */
interface Sandbox extends ChainSandbox {
  readonly netnsName: string;
  readonly pod: TestbedPod;
}

let chain: CniChain;
const getChain = (): CniChain => (chain ??= cniChain(node, CNI_BIN));

/** Sandboxes for these pod names, their Pod objects in the pods file (Pending, no IP) unless `hidden`. */
function makeSandboxes(names: readonly string[], hidden = false): Sandbox[] {
  const boxes = names.map((name) => {
    const uid = randomUUID();
    const netnsName = `${tb.info.prefix}-${name}`;
    execFileSync('ip', ['netns', 'add', netnsName]);
    const netnsPath = `/run/netns/${netnsName}`;
    const pod = sandboxPod(tb, 'cni-mesh', name, uid, netnsPath);
    mkdirSync(pod.containerCgroupPath, { recursive: true });
    if (!hidden) extraPods.push(pendingPod(name, uid));
    return { name, uid, netnsName, pod, netnsPath, containerId: name, namespace: 'mesh' };
  });
  writePods();
  return boxes;
}

/** The chain's ADD; every plugin before ours must succeed. */
async function chainAdd(
  t: Tap.Test,
  b: Sandbox,
): Promise<{ ours: PluginRun; prev: Record<string, unknown>; ip: string }> {
  const r = await getChain().add(b);
  t.equal(r.loopback.code, 0, `${b.name}: loopback ADD ${r.loopback.stderr}`);
  t.equal(r.bridge.code, 0, `${b.name}: bridge ADD ${r.bridge.stderr}`);
  if (r.ours?.code !== 0) {
    // What the agent said about the pod, for the failure's report.
    const lines = loader
      .logLines()
      .map((l) => JSON.stringify(l))
      .filter((l) => l.includes(`mesh/${b.name}`));
    t.comment(lines.slice(-15).join('\n'));
  }
  return { ours: r.ours!, prev: r.prevResult!, ip: r.ip! };
}

/** DEL down the chain in reverse, as the runtime does, then the netns goes. */
async function chainDel(t: Tap.Test, b: Sandbox): Promise<void> {
  const r = await getChain().del(b);
  t.equal(r.ours.code, 0, `${b.name}: ambpf-cni DEL`);
  t.equal(r.bridge.code, 0, `${b.name}: bridge DEL`);
  execFileSync('ip', ['netns', 'del', b.netnsName]);
}

const haveBridge = existsSync(join(CNI_BIN, 'bridge'));
const noBridge = `skip: ${CNI_BIN}/bridge missing: install containernetworking-plugins (make deps does)`;

t.test('chained after the real bridge + host-local: the first connect after ADD goes through ztunnel', async (t) => {
  if (!haveBridge) return t.plan(0, noBridge);
  const [b] = makeSandboxes(['chained']);
  const { ours: r, prev, ip } = await chainAdd(t, b!);
  // The moment ADD returns, the pod's first connection: through ztunnel, never direct.
  const traced = await tracedCurl(tb, b!.pod, tb.pod('server').ip, PORT, ['node1'], { node1: ['outbound'] });
  t.equal(r.code, 0, `ambpf-cni ADD: ${r.stdout}${r.stderr}`);
  t.same(JSON.parse(r.stdout), prev, "the chain's result is the bridge's, unchanged");
  t.comment(`ambient ADD after bridge (no process in the pod yet): ${r.ms.toFixed(0)} ms`);
  const out = traced.lines['node1']?.find((e) => e.direction === 'outbound');
  t.equal(out?.source.split(':')[0], ip, `ztunnel proxied the first connection of the pod (${ip})`);
  await chainDel(t, b!);
  extraPods.length = 0;
  writePods();
});

t.test('bad input: each a CNI error on stdout and exit 1', async (t) => {
  const cases: Array<[string, Record<string, string>, string, number]> = [
    ['malformed stdin', envFor('ADD', 'cni-mesh'), `{"cniVersion":"1.0.0","socketPath":"${socket}", nope`, 6],
    ['stdin not an object', envFor('ADD', 'cni-mesh'), '[1, 2]', 6],
    ['empty stdin', envFor('ADD', 'cni-mesh'), '', 6],
    ['unknown cniVersion', envFor('ADD', 'cni-mesh'), config('9.9.9', {}, tb.pod('cni-mesh').ip), 1],
    ['no CNI_NETNS', { ...envFor('ADD', 'cni-mesh'), CNI_NETNS: '' }, config('1.0.0', {}, tb.pod('cni-mesh').ip), 4],
    [
      'a netns that does not exist',
      { ...envFor('ADD', 'cni-mesh'), CNI_NETNS: '/run/netns/ambpf-none' },
      config('1.0.0', {}, tb.pod('cni-mesh').ip),
      4,
    ],
    ['an ambient pod without prevResult IPs', envFor('ADD', 'cni-mesh'), config('1.0.0'), 7],
    ['a prevResult whose ips is no list', envFor('ADD', 'cni-mesh'), config('1.0.0', { prevResult: { ips: 'x' } }), 7],
    ['a config over 1 MiB', envFor('ADD', 'cni-mesh'), config('1.0.0', { pad: 'x'.repeat(1 << 20) }), 6],
    ['an unknown CNI_COMMAND', { ...envFor('ADD', 'cni-mesh'), CNI_COMMAND: 'FROB' }, config('1.0.0'), 4],
  ];
  for (const [what, env, stdin, code] of cases) {
    const r = await runPlugin(env, stdin);
    t.equal(r.code, 1, `${what}: exit 1`);
    const e = JSON.parse(r.stdout) as { code: number; msg: string };
    t.equal(e.code, code, `${what}: code ${code} (${e.msg})`);
    t.ok(e.msg.length > 0, `${what}: a message`);
  }
  t.equal(zdsState('cni-mesh'), undefined, 'nothing was captured by a failed ADD');
  t.notOk(armedAt(tb.pod('cni-mesh').netnsPath), "the pod's netns is not captured");
});

t.test('a netns the agent cannot arm: ADD fails at once with the reason, not at the timeout', async (t) => {
  // No loopback plugin ran: lo is down and the pod's local route cannot be added.
  const netnsName = `${tb.info.prefix}-lodown`;
  execFileSync('ip', ['netns', 'add', netnsName]);
  const netnsPath = `/run/netns/${netnsName}`;
  const r = await runPlugin(
    { ...envFor('ADD', 'cni-mesh'), CNI_NETNS: netnsPath },
    config('1.0.0', {}, tb.pod('cni-mesh').ip),
  );
  t.equal(r.code, 1);
  const e = JSON.parse(r.stdout) as { code: number; msg: string; details?: string };
  t.equal(e.code, 11);
  t.match(e.msg, /could not capture/);
  t.match(e.details ?? '', /inpod capture of pod mesh\/cni-mesh/);
  t.ok(r.ms < TIMEOUT_MS, `failed after ${r.ms.toFixed(0)} ms`);
  await nothingLeft(t, 'cni-mesh', netnsPath);
  execFileSync('ip', ['netns', 'del', netnsName]);
});

t.test('agent unreachable: error 11 and exit 1; failOpen: prevResult; DEL still succeeds', async (t) => {
  const env = { ...envFor('ADD', 'cni-mesh') };
  const away = join(tb.info.runDir, 'no-agent.sock');
  const stdin = (extra: Record<string, unknown>): string =>
    config('1.0.0', { socketPath: away, ...extra }, tb.pod('cni-mesh').ip);
  const r = await runPlugin(env, stdin({}));
  t.equal(r.code, 1);
  const e = JSON.parse(r.stdout) as { cniVersion: string; code: number; msg: string; details: string };
  t.equal(e.cniVersion, '1.0.0');
  t.equal(e.code, 11);
  t.match(e.details, /no-agent\.sock: No such file or directory/);
  const open = await runPlugin(env, stdin({ failOpen: true }));
  t.equal(open.code, 0);
  t.same(JSON.parse(open.stdout), prevResult('1.0.0', tb.pod('cni-mesh').ip), 'failOpen hands prevResult on');
  t.equal((await runPlugin({ ...env, CNI_COMMAND: 'DEL' }, stdin({}))).code, 0, 'DEL with the agent away');
});

t.test('agent stopped: ADD fails closed, nothing left; what ADD armed survives the restart', async (t) => {
  // A provisional pod (the source never showed it) armed before the agent stops...
  t.equal((await add('cni-restart')).code, 0, 'ADD of cni-restart before the stop');
  const lateAt = Date.now();
  loader.proc.kill('SIGTERM');
  await loader.proc.exited;
  const r = await add('cni-mesh');
  t.equal(r.code, 1, 'ADD with the agent stopped fails');
  const e = JSON.parse(r.stdout) as { code: number; msg: string; details?: string };
  t.equal(e.code, 11, `try again later (${e.msg}: ${e.details ?? ''})`);
  t.notOk(armedAt(tb.pod('cni-mesh').netnsPath), 'cni-mesh is not captured');
  t.ok(armedAt(tb.pod('cni-restart').netnsPath), 'cni-restart stays captured while the agent is down (pins)');

  // The new agent gets a longer grace period, so what it keeps is not down to timing.
  loader = startLoader(tb, tb.node('node1'), podsFile, flags(GRACE_MS * 5), true);
  await waitReady(tb, loader);
  t.ok(armedAt(tb.pod('cni-restart').netnsPath), "the new agent's first pass kept cni-restart captured");
  t.ok(Date.now() - lateAt < GRACE_MS * 5, 'within its grace period');
  await eventually(async () => (await add('cni-mesh')).code === 0, 20_000, 'the retried ADD to succeed');
  await acked('cni-mesh');
  await eventually(() => zdsState('cni-restart') === 'acked', 10_000, 'the new agent to hand cni-restart to ztunnel');
  t.same(
    cniPods()
      .map((p) => p.name)
      .sort(),
    ['cni-mesh', 'cni-restart'],
    'both kept for CNI',
  );
  t.equal((await del('cni-restart')).code, 0);
  await nothingLeft(t, 'cni-restart', tb.pod('cni-restart').netnsPath);
  t.equal((await del('cni-mesh')).code, 0);
  await nothingLeft(t, 'cni-mesh', tb.pod('cni-mesh').netnsPath);
});

t.test('no ztunnel connected: ADD of an ambient pod fails closed, nothing left; back: it succeeds', async (t) => {
  await stopZtunnel(tb, 'node1', { signal: 'SIGKILL' });
  await eventually(async () => (await add('cni-mesh')).code === 1, 10_000, 'ADD to fail without ztunnel');
  const r = await add('cni-mesh');
  const e = JSON.parse(r.stdout) as { code: number; msg: string };
  t.equal(e.code, 11);
  t.match(e.msg, /no ztunnel is connected/);
  t.equal(zdsState('cni-mesh'), undefined, 'cni-mesh is not in the state file');
  t.notOk(armedAt(tb.pod('cni-mesh').netnsPath), 'cni-mesh is not captured');
  t.equal((await add('cni-plain')).code, 0, 'a non-ambient pod is not held');
  await startExtraZtunnel(tb, 'node1');
  await eventually(async () => (await add('cni-mesh')).code === 0, 20_000, 'ADD to succeed once ztunnel is back');
  await tracedCurl(tb, 'cni-mesh', tb.pod('server').ip, PORT, ['node1'], { node1: ['outbound'] });
  t.pass('the pod is served by the new ztunnel');
});
