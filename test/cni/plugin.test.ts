// The chained CNI plugin (cni/ambpf-cni.c) run the way a container runtime runs it (CNI_* env, the
// config on stdin, prevResult from the plugin before it), against a real `ambpf run --mode inpod
// --cni-socket` on a one-node testbed with the ZDS ztunnel stand-in. The testbed builds each pod's
// netns and veth (the primary CNI's part); the pods file shows the CNI pods as Kubernetes does before
// their sandbox exists: Pending, no IP. What the plugin must guarantee: ADD of an ambient pod returns
// only when ztunnel has it, so the pod's first connection already goes through ztunnel.
import t from 'tap';
import type * as Tap from 'tap';
import { execFileSync, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startTestbed, type Testbed, type TestbedPod, type TestbedSpec } from '../../src/testbed/index.ts';
import { startHttpServer } from '../../src/testbed/helpers.ts';
import { startZtunnels, stopZtunnel, startExtraZtunnel } from '../../src/testbed/ztunnel/launch.ts';
import { zdsSocketPath } from '../../src/testbed/loader.ts';
import type { StateFile } from '../../src/state/state-file.ts';
import { testPrefix } from '../helpers/prefix.ts';
import { startLoader, waitReady, editPodsFile, type Loader } from '../helpers/loader.ts';
import { tracedCurl } from '../helpers/standin.ts';
import { eventually } from '../helpers/wait.ts';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const PLUGIN = join(ROOT, 'build/cni/ambpf-cni');
/** Debian's containernetworking-plugins (the Makefile's APT_PACKAGES). */
const CNI_BIN = '/usr/lib/cni';
const PORT = 8080;
const TIMEOUT_MS = 3000;
/** The issue asks for 200 (AMBPF_CNI_RACE_PODS=200); each costs ~0.3 s here (four plugin runs and a
 * curl), so by default 20 keep the file fast. */
const RACE_PODS = Number(process.env['AMBPF_CNI_RACE_PODS'] ?? 20);

const spec: TestbedSpec = {
  nodes: [{ name: 'node1', ztunnel: true }],
  namespaces: [{ name: 'mesh', labels: { 'istio.io/dataplane-mode': 'ambient' } }, { name: 'plain', labels: {} }],
  pods: [
    { name: 'server', namespace: 'plain', node: 'node1' },
    { name: 'cni-mesh', namespace: 'mesh', node: 'node1' },
    { name: 'cni-plain', namespace: 'plain', node: 'node1' },
    { name: 'cni-late', namespace: 'mesh', node: 'node1' },
  ],
};
/** Pods the runtime creates through the plugin: in the pods file without IPs (cni-late: not yet). */
const CNI_PODS = ['cni-mesh', 'cni-plain', 'cni-late'];

let tb: Testbed;
let loader: Loader;
let podsFile: string;
let socket: string;
/** Pod objects the test adds to the pods file beside the testbed's (the chained pod). */
const extraPods: Array<Record<string, unknown>> = [];

interface PluginRun {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
  readonly ms: number;
}

/** Runs the plugin binary as a runtime does: env + stdin, stdout and exit code back. */
function runPlugin(env: Record<string, string>, stdin: string, argv: readonly string[] = [PLUGIN]):
  Promise<PluginRun> {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const p = spawn(argv[0]!, argv.slice(1), { env: { PATH: process.env['PATH'] ?? '', ...env }, stdio: 'pipe' });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    p.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    p.on('error', reject);
    // The plugin may exit before reading all of stdin (a config over its bound): not an error here.
    p.stdin.on('error', () => undefined);
    p.on('close', (code) => resolve({ code, stdout, stderr, ms: performance.now() - started }));
    p.stdin.end(stdin);
  });
}

function prevResult(version: string, ip: string): Record<string, unknown> {
  return {
    cniVersion: version,
    interfaces: [{ name: 'eth0', sandbox: '/var/run/netns/x' }],
    ips: [{ ...(version === '0.3.1' ? { version: '4' } : {}), address: `${ip}/32`, interface: 0 }],
  };
}

function config(version: string, extra: Record<string, unknown> = {}, ip?: string): string {
  return JSON.stringify({
    cniVersion: version, name: 'k8s-pod-network', type: 'ambpf-cni', socketPath: socket,
    ...(ip ? { prevResult: prevResult(version, ip) } : {}), ...extra,
  });
}

function envFor(command: string, pod: string): Record<string, string> {
  const p = tb.pod(pod);
  return {
    CNI_COMMAND: command, CNI_CONTAINERID: p.containerId, CNI_NETNS: p.netnsPath, CNI_IFNAME: 'eth0',
    CNI_PATH: '/opt/cni/bin',
    CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAMESPACE=${p.namespace};K8S_POD_NAME=${p.name};`
      + `K8S_POD_INFRA_CONTAINER_ID=${p.containerId};K8S_POD_UID=${p.uid}`,
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
function writePods(absent: readonly string[]): void {
  tb.writePodsList(podsFile);
  editPodsFile(podsFile, (list) => {
    list.items = list.items.filter((o) => !(o.kind === 'Pod' && absent.includes(o.metadata.name)));
    list.items.push(...(extraPods as typeof list.items));
    for (const o of list.items) {
      if (o.kind !== 'Pod' || !CNI_PODS.includes(o.metadata.name)) continue;
      o['status'] = { phase: 'Pending' };
    }
  });
}

t.before(async () => {
  execFileSync('make', ['-s', '-C', ROOT, 'cni'], { stdio: 'inherit' });
  tb = await startTestbed(spec, { topology: 'inpod', prefix: testPrefix(), standIn: false });
  podsFile = join(tb.info.runDir, 'pods.json');
  socket = join(tb.info.runDir, 'cni.sock');
  writePods(['cni-late']);
  const flags = ['--cni-socket', socket, '--cni-timeout-ms', String(TIMEOUT_MS)];
  loader = startLoader(tb, tb.node('node1'), podsFile, flags, true);
  await waitReady(tb, loader);
  await startZtunnels(tb, { zdsSocket: (node) => zdsSocketPath(tb, tb.node(node)) });
  await startHttpServer(tb, 'server', PORT);
});
t.teardown(async () => {
  if (loader) {
    loader.proc.kill('SIGTERM');
    await loader.proc.exited;
  }
  await tb?.down();
});

t.test('VERSION is answered by the plugin itself', async (t) => {
  const r = await runPlugin({ CNI_COMMAND: 'VERSION' }, '{"cniVersion":"1.0.0"}');
  t.equal(r.code, 0);
  t.same(JSON.parse(r.stdout), { cniVersion: '1.0.0', supportedVersions: ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'] });
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
  t.equal(out?.source.split(':')[0], tb.pod('cni-mesh').ip, 'ztunnel proxied the pod\'s connection');
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

t.test('0.4.0 and 0.3.1 configs: ADD of the ambient pod, result in the config\'s version', async (t) => {
  for (const version of ['0.4.0', '0.3.1']) {
    const r = await add('cni-mesh', version);
    t.equal(r.code, 0, r.stdout + r.stderr);
    t.same(JSON.parse(r.stdout), prevResult(version, tb.pod('cni-mesh').ip), `${version}: prevResult unchanged`);
    t.equal((await runPlugin(envFor('DEL', 'cni-mesh'), config(version))).code, 0, `${version}: DEL`);
    await eventually(() => zdsState('cni-mesh') === undefined, 10_000, 'cni-mesh to leave the state file');
  }
});

t.test('a pod the source learns of while ADD waits is served; one it never shows fails ADD', async (t) => {
  const waiting = (): number =>
    loader.logLines().filter((l) => String(l['msg']).startsWith('CNI ADD waits for the pod')).length;
  const before = waiting();
  const pending = add('cni-late');
  await eventually(() => waiting() > before, 5_000, 'ADD to wait for the pod');
  writePods([]);
  const r = await pending;
  t.equal(r.code, 0, `ADD waited for the pod: ${r.stdout}${r.stderr}`);
  t.equal((await runPlugin(envFor('DEL', 'cni-late'), config('1.0.0'))).code, 0);

  writePods(['cni-late']);
  await eventually(async () => (await add('cni-late')).code === 1, 5 * TIMEOUT_MS,
    'ADD of a pod the source lost to fail');
  const r2 = await add('cni-late');
  t.equal(r2.code, 1);
  const err = JSON.parse(r2.stdout) as { code: number; msg: string };
  t.equal(err.code, 11, 'try again later');
  t.match(err.msg, /not known to the agent's pod source/);
  t.ok(r2.ms >= TIMEOUT_MS * 0.9, `it waited its bound (${r2.ms.toFixed(0)} ms)`);
});

/** A pod sandbox as a runtime makes it: a netns with no process, the pod's cgroup, its Pod object. */
interface Sandbox {
  readonly name: string;
  readonly uid: string;
  readonly netnsName: string;
  readonly pod: TestbedPod;
  readonly env: Record<string, string>;
}

const NET = { cniVersion: '1.0.0', name: 'ambpf-chain' };
const bridgeConf = (): Record<string, unknown> => ({
  ...NET, type: 'bridge', bridge: 'ambcni0', isGateway: true, ipMasq: false,
  ipam: { type: 'host-local', ranges: [[{ subnet: '198.19.200.0/24' }]], routes: [{ dst: '0.0.0.0/0' }],
    dataDir: join(tb.info.runDir, 'ipam') },
});
const ours = (): Record<string, unknown> => ({ ...NET, type: 'ambpf-cni', socketPath: socket });
/** The primary CNI runs in the node's netns (it creates the bridge and the host side of the veth). */
const bridgeArgv = (): string[] => ['nsenter', `--net=${tb.node('node1').netnsPath}`, '--', join(CNI_BIN, 'bridge')];

/** Sandboxes for these pod names, their Pod objects in the pods file (Pending, no IP). */
function makeSandboxes(names: readonly string[]): Sandbox[] {
  const boxes = names.map((name) => {
    const uid = randomUUID();
    const netnsName = `${tb.info.prefix}-${name}`;
    execFileSync('ip', ['netns', 'add', netnsName]);
    const cgroup = join(tb.node('node1').kubepodsCgroup, 'besteffort', `pod${uid}`, 'c1');
    mkdirSync(cgroup, { recursive: true });
    extraPods.push({
      apiVersion: 'v1', kind: 'Pod',
      metadata: { name, namespace: 'mesh', uid, labels: {}, annotations: {}, resourceVersion: '9000' },
      spec: { nodeName: 'node1', containers: [{ name: 'app', image: 'registry.local/ambtb/pause:1' }] },
      status: { phase: 'Pending' },
    });
    const pod: TestbedPod = {
      ...tb.pod('cni-mesh'), name, uid, netnsPath: `/run/netns/${netnsName}`, containerCgroupPath: cgroup, ip: '',
    };
    const env = {
      ...envFor('ADD', 'cni-mesh'), CNI_NETNS: pod.netnsPath, CNI_PATH: CNI_BIN, CNI_CONTAINERID: name,
      CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAMESPACE=mesh;K8S_POD_NAME=${name};K8S_POD_UID=${uid}`,
    };
    return { name, uid, netnsName, pod, env };
  });
  writePods(['cni-late']);
  return boxes;
}

/** The chain's ADD as containerd runs it: loopback (go-cni's WithLoNetwork), bridge, then ambpf-cni. */
async function chainAdd(t: Tap.Test, b: Sandbox):
  Promise<{ ours: PluginRun; prev: Record<string, unknown>; ip: string }> {
  const loConf = JSON.stringify({ cniVersion: '1.0.0', name: 'cni-loopback', type: 'loopback' });
  const lo = await runPlugin({ ...b.env, CNI_IFNAME: 'lo' }, loConf, [join(CNI_BIN, 'loopback')]);
  t.equal(lo.code, 0, `${b.name}: loopback ADD ${lo.stderr}`);
  const bridge = await runPlugin(b.env, JSON.stringify(bridgeConf()), bridgeArgv());
  t.equal(bridge.code, 0, `${b.name}: bridge ADD ${bridge.stderr}`);
  const prev = JSON.parse(bridge.stdout) as Record<string, unknown>;
  const r = await runPlugin(b.env, JSON.stringify({ ...ours(), prevResult: prev }));
  if (r.code !== 0) {
    // What the agent said about the pod, for the failure's report.
    const lines = loader.logLines().map((l) => JSON.stringify(l)).filter((l) => l.includes(`mesh/${b.name}`));
    t.comment(lines.slice(-15).join('\n'));
  }
  const ip = ((prev['ips'] as Array<{ address: string }>)[0]!.address).split('/')[0]!;
  return { ours: r, prev, ip };
}

/** DEL down the chain in reverse, as the runtime does, then the netns goes. */
async function chainDel(t: Tap.Test, b: Sandbox): Promise<void> {
  const del = { ...b.env, CNI_COMMAND: 'DEL' };
  t.equal((await runPlugin(del, JSON.stringify(ours()))).code, 0, `${b.name}: ambpf-cni DEL`);
  t.equal((await runPlugin(del, JSON.stringify(bridgeConf()), bridgeArgv())).code, 0, `${b.name}: bridge DEL`);
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
  t.same(JSON.parse(r.stdout), prev, 'the chain\'s result is the bridge\'s, unchanged');
  t.comment(`ambient ADD after bridge (no process in the pod yet): ${r.ms.toFixed(0)} ms`);
  const out = traced.lines['node1']?.find((e) => e.direction === 'outbound');
  t.equal(out?.source.split(':')[0], ip, `ztunnel proxied the first connection of the pod (${ip})`);
  await chainDel(t, b!);
  extraPods.length = 0;
  writePods(['cni-late']);
});

t.test(`the race: ${RACE_PODS} sandboxes one after another, each connecting the moment ADD returns`, async (t) => {
  if (!haveBridge) return t.plan(0, noBridge);
  const boxes = makeSandboxes(Array.from({ length: RACE_PODS }, (_, i) => `race-${i}`));
  const times: number[] = [];
  const direct: string[] = [];
  for (const b of boxes) {
    const { ours: r, ip } = await chainAdd(t, b);
    t.equal(r.code, 0, `${b.name}: ambpf-cni ADD ${r.stdout}`);
    times.push(r.ms);
    // No wait, no retry: the connect is attempted right away and must already be captured.
    const traced = await tracedCurl(tb, b.pod, tb.pod('server').ip, PORT, ['node1'], { node1: ['outbound'] });
    const viaZtunnel = traced.lines['node1']?.some((e) => e.direction === 'outbound' && e.source.split(':')[0] === ip);
    if (!viaZtunnel) direct.push(b.name);
  }
  t.same(direct, [], 'every first connection reached ztunnel; none went direct');
  times.sort((a, b) => a - b);
  t.comment(`ADD after bridge, ${times.length} pods: median ${times[times.length >> 1]!.toFixed(0)} ms, `
    + `max ${times.at(-1)!.toFixed(0)} ms`);
  for (const b of boxes) await chainDel(t, b);
  extraPods.length = 0;
  writePods(['cni-late']);
});

t.test('bad input: each a CNI error on stdout and exit 1', async (t) => {
  const cases: Array<[string, Record<string, string>, string, number]> = [
    ['malformed stdin', envFor('ADD', 'cni-mesh'), `{"cniVersion":"1.0.0","socketPath":"${socket}", nope`, 6],
    ['unknown cniVersion', envFor('ADD', 'cni-mesh'), config('9.9.9', {}, tb.pod('cni-mesh').ip), 1],
    ['no CNI_NETNS', { ...envFor('ADD', 'cni-mesh'), CNI_NETNS: '' }, config('1.0.0', {}, tb.pod('cni-mesh').ip), 4],
    ['a netns that does not exist', { ...envFor('ADD', 'cni-mesh'), CNI_NETNS: '/run/netns/ambpf-none' },
      config('1.0.0', {}, tb.pod('cni-mesh').ip), 4],
    ['an ambient pod without prevResult IPs', envFor('ADD', 'cni-mesh'), config('1.0.0'), 7],
    ['a config over 1 MiB', envFor('ADD', 'cni-mesh'), config('1.0.0', { pad: 'x'.repeat(1 << 20) }), 6],
  ];
  for (const [what, env, stdin, code] of cases) {
    const r = await runPlugin(env, stdin);
    t.equal(r.code, 1, `${what}: exit 1`);
    const e = JSON.parse(r.stdout) as { code: number; msg: string };
    t.equal(e.code, code, `${what}: code ${code} (${e.msg})`);
    t.ok(e.msg.length > 0, `${what}: a message`);
  }
  t.equal(zdsState('cni-mesh'), undefined, 'nothing was captured by a failed ADD');
});

t.test('a netns the agent cannot arm: ADD fails at once with the reason, not at the timeout', async (t) => {
  // No loopback plugin ran: lo is down and the pod's local route cannot be added.
  const netnsName = `${tb.info.prefix}-lodown`;
  execFileSync('ip', ['netns', 'add', netnsName]);
  const r = await runPlugin({ ...envFor('ADD', 'cni-mesh'), CNI_NETNS: `/run/netns/${netnsName}` },
    config('1.0.0', {}, tb.pod('cni-mesh').ip));
  execFileSync('ip', ['netns', 'del', netnsName]);
  t.equal(r.code, 1);
  const e = JSON.parse(r.stdout) as { code: number; msg: string; details?: string };
  t.equal(e.code, 11);
  t.match(e.msg, /could not capture/);
  t.match(e.details ?? '', /inpod capture of pod mesh\/cni-mesh/);
  t.ok(r.ms < TIMEOUT_MS, `failed after ${r.ms.toFixed(0)} ms`);
  await eventually(() => zdsState('cni-mesh') === undefined, 10_000, 'nothing left of cni-mesh');
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

t.test('no ztunnel connected: ADD of an ambient pod fails closed; back: it succeeds', async (t) => {
  await stopZtunnel(tb, 'node1', { signal: 'SIGKILL' });
  await eventually(async () => (await add('cni-mesh')).code === 1, 10_000, 'ADD to fail without ztunnel');
  const r = await add('cni-mesh');
  const e = JSON.parse(r.stdout) as { code: number; msg: string };
  t.equal(e.code, 11);
  t.match(e.msg, /no ztunnel is connected/);
  t.equal((await add('cni-plain')).code, 0, 'a non-ambient pod is not held');
  await startExtraZtunnel(tb, 'node1');
  await eventually(async () => (await add('cni-mesh')).code === 0, 20_000, 'ADD to succeed once ztunnel is back');
  await tracedCurl(tb, 'cni-mesh', tb.pod('server').ip, PORT, ['node1'], { node1: ['outbound'] });
  t.pass('the pod is served by the new ztunnel');
});
