// The whole loader driven by a Kubernetes watch: `ambpf run --kubeconfig` inside a testbed node, the
// fake API server (a child process in that node's netns, reached on 127.0.0.1) seeded with the
// testbed's own Namespaces and Pods, real pods, the ztunnel stand-in, real curl. Every change is made
// through the API server and checked in the pinned maps (read from the pins) and in the stand-in's
// connection log (which way the bytes went). Subtests run in order and share the cluster.
import t from 'tap';
import { readFileSync } from 'node:fs';
import { startTestbed, type Testbed, type TestbedSpec, type ZtunnelLogEntry } from '../../src/testbed/index.ts';
import { startHttpServer } from '../../src/testbed/helpers.ts';
import { command as runCommand } from '../../src/cli/commands/run.ts';
import { testPrefix } from '../helpers/prefix.ts';
import { AMBPF_BIN, startLoader, waitReady, metrics, type Loader } from '../helpers/loader.ts';
import { tracedCurl } from '../helpers/standin.ts';
import { eventually, observeFor, waitUntil } from '../helpers/wait.ts';
import {
  inboundLinkPinned,
  keyOf,
  loaderHttp,
  metricValue,
  readMaps,
  startClusterApi,
  type ClusterApi,
  type KubeItem,
} from './loader-harness.ts';

const PORT = 8080;
const AMBIENT = 'istio.io/dataplane-mode';
const OPT_OUT = 'ambient.istio.io/redirection';
const NODE = 'node1';
// The staleness bound is tested only once `ambpf run` can be told a short one (see the report of
// issue 6's loader tests); the flag's presence in the usage switches the test on.
const STALE_FLAG_NAME = '--watch-stale-ms';
const STALE_FLAG = runCommand.usage.includes(STALE_FLAG_NAME);
const STALE_MS = 5000;
// How long a change may take to reach the maps: generous, the machine is shared (never a speed claim).
const CONVERGE_MS = 10_000;
/** How long a probe polled until a change takes effect waits for its line before it says "not yet". */
const PROBE_MS = 2000;

const spec: TestbedSpec = {
  nodes: [{ name: NODE }],
  namespaces: [{ name: 'mesh', labels: { [AMBIENT]: 'ambient' } }, { name: 'plain' }],
  pods: [
    { name: 'app1', namespace: 'mesh', node: NODE },
    { name: 'app2', namespace: 'mesh', node: NODE },
    { name: 'gone', namespace: 'mesh', node: NODE }, // deleted through the API
    { name: 'victim', namespace: 'mesh', node: NODE }, // deleted during an outage that ends in 410 Gone
    { name: 'late', namespace: 'mesh', node: NODE }, // deleted while the loader is down
    { name: 'job', namespace: 'mesh', node: NODE }, // completes (phase Succeeded)
    { name: 'client', namespace: 'plain', node: NODE },
    // ztunnel's replacement: a second ztunnel pod (own netns, IP, stand-in) the API learns of later,
    // as a DaemonSet rollout creates the new pod and then deletes the old one.
    {
      name: 'ztunnel-new',
      namespace: 'istio-system',
      node: NODE,
      labels: { app: 'ztunnel' },
      containers: ['istio-proxy'],
    },
  ],
};

let tb: Testbed;
let api: ClusterApi;
let loader: Loader | undefined;

const node = () => tb.node(NODE);
const ip = (name: string): string => tb.pod(name).ip;
const ambientIps = (): string[] => [...readMaps(node()).pods.keys()].sort();
const sorted = (names: readonly string[]): string[] => names.map(ip).sort();

function obj(kind: 'Pod' | 'Namespace', name: string, namespace?: string): KubeItem {
  const o = api.objects.get(keyOf(kind, namespace, name));
  if (!o) throw new Error(`no seeded ${kind} ${namespace ?? ''}/${name}`);
  return structuredClone(o);
}

/** Writes a changed object through the API and remembers it as the new baseline. */
async function update(item: KubeItem): Promise<void> {
  const key = keyOf(item.kind, item.metadata.namespace, item.metadata.name);
  if (item.kind === 'Pod') await api.server.updatePod(item);
  else await api.server.updateNamespace(item);
  api.objects.set(key, structuredClone(item));
}

function withLabels(item: KubeItem, labels: Record<string, string>): KubeItem {
  item.metadata.labels = labels;
  return item;
}

function withOptOut(item: KubeItem, on: boolean): KubeItem {
  const annotations = { ...item.metadata.annotations };
  if (on) annotations[OPT_OUT] = 'disabled';
  else delete annotations[OPT_OUT];
  item.metadata.annotations = annotations;
  return item;
}

/**
 * curl from one pod to another and the stand-in's log lines it produced (both ztunnels log to one
 * file), once the `expect`ed ones are there (see linesSince; none expected: a window is observed).
 */
async function request(
  from: string,
  to: string,
  expect?: readonly ZtunnelLogEntry['direction'][],
  timeoutMs?: number,
): Promise<ZtunnelLogEntry[]> {
  const r = await tracedCurl(tb, from, ip(to), PORT, [NODE], expect && { [NODE]: expect }, timeoutMs);
  if (!r.body.includes(`hello from ${to}`))
    throw new Error(`curl ${from} -> ${to} answered by someone else: ${r.body}`);
  return r.lines[NODE] ?? [];
}

/** Which ztunnel `from`'s request went out through; `expected` (a ztunnel, or none) says whether to wait for a line. */
const outboundVia = async (from: string, to: string, expected: string | undefined): Promise<string | undefined> =>
  (await request(from, to, expected === undefined ? undefined : ['outbound'])).find(
    (e) => e.direction === 'outbound' && e.source.split(':')[0] === ip(from),
  )?.where;

/** The loader's exit code, or a SIGKILL and 'hung' when it did not exit within the bound. */
async function exitWithin(l: Loader, ms: number): Promise<number | null | 'hung'> {
  let timer: NodeJS.Timeout | undefined;
  const hung = new Promise<'hung'>((res) => {
    timer = setTimeout(() => res('hung'), ms);
  });
  const code = await Promise.race([l.proc.exited, hung]);
  clearTimeout(timer);
  if (code === 'hung') {
    l.proc.kill('SIGKILL');
    await l.proc.exited;
  }
  return code;
}

const metric = async (name: string): Promise<number> => metricValue(await metrics(tb, loader!), name);
const logCount = (msg: string): number => loader!.logLines().filter((l) => l['msg'] === msg).length;

t.before(async () => {
  tb = await startTestbed(spec, { topology: 'node', prefix: testPrefix() });
  api = await startClusterApi(tb, node(), ['ztunnel-new']);
  for (const pod of ['app1', 'client']) await startHttpServer(tb, pod, PORT);
});
t.teardown(async () => {
  if (loader) {
    loader.proc.kill('SIGTERM');
    await exitWithin(loader, 10_000);
  }
  await api?.server.stop();
  await tb?.down();
});

t.test('/readyz is 503 until the first full sync and reconcile, and then the maps are complete', async (t) => {
  await api.server.down();
  loader = startLoader(
    tb,
    node(),
    { kubeconfig: api.kubeconfig },
    STALE_FLAG ? [STALE_FLAG_NAME, String(STALE_MS)] : [],
  );
  const notReady = await eventually(
    async () => {
      const r = await loaderHttp(tb, node(), '/readyz');
      return r.status === 0 ? undefined : r;
    },
    20_000,
    'the loader to serve /readyz',
  );
  t.equal(notReady?.status, 503, 'not ready while the API server is unreachable');
  t.match(notReady?.body, /pod source not synced/);
  // The DaemonSet's liveness and startup probes hit /healthz: alive while it waits for the API
  // server, or the kubelet would restart a loader that is only waiting.
  t.equal((await loaderHttp(tb, node(), '/healthz')).status, 200, '/healthz is 200 while not ready');
  t.same(ambientIps(), [], 'nothing in the ambient-pod map before the first sync');
  t.equal(readMaps(node()).ztunnelIp, undefined, 'ztunnel unknown before the first sync: nothing redirected');
  // Both lists (pods, namespaces) failed twice (the loader logs each), and it is still not ready.
  await eventually(() => logCount('watch restart after error') >= 4, 20_000, 'the loader to retry its lists');
  t.equal((await loaderHttp(tb, node(), '/readyz')).status, 503, 'still not ready while the server stays away');
  await api.server.up();
  await waitReady(tb, loader);
  // Ready means reconciled: no waiting here.
  t.same(
    ambientIps(),
    sorted(['app1', 'app2', 'gone', 'victim', 'late', 'job']),
    'every ambient pod is in the map once ready',
  );
  t.equal(readMaps(node()).ztunnelIp, ip('ztunnel-node1'));
  t.ok((await metric('ambpf_watch_restarts_total')) >= 1, 'the failed first lists were counted as watch restarts');
});

t.test('ambpf pods names what the watch-driven loader redirects', async (t) => {
  const node1 = node();
  const r = await tb.exec(NODE, [
    AMBPF_BIN,
    'pods',
    '-j',
    '--bpffs',
    node1.bpffsDir,
    '--state-file',
    loader!.stateFile,
  ]);
  const report = JSON.parse(r.stdout) as {
    drift: number;
    pods: Array<{ ip: string; name: string | null; namespace: string | null; node: string | null }>;
  };
  const named = report.pods.map((p) => `${p.namespace}/${p.name}@${p.node}=${p.ip}`).sort();
  const expected = ['app1', 'app2', 'gone', 'victim', 'late', 'job'].map((n) => `mesh/${n}@${NODE}=${ip(n)}`).sort();
  t.same(named, expected, 'every redirected pod by namespace/name, node and IP');
  t.equal(report.drift, 0, "map and the loader's state agree");
});

t.test("an ambient namespace redirects its pods' traffic; a plain one does not", async (t) => {
  t.equal(await outboundVia('app2', 'app1', 'ztunnel-node1'), 'ztunnel-node1', 'mesh -> mesh goes out through ztunnel');
  const inbound = (await request('client', 'app1', ['inbound-plaintext'])).find(
    (e) => e.direction === 'inbound-plaintext',
  );
  t.equal(inbound?.originalDst, `${ip('app1')}:${PORT}`, 'non-mesh -> mesh is steered into ztunnel');
  t.notOk(readMaps(node()).pods.has(ip('client')), "the plain namespace's pod is not in the map");
  t.equal(
    await outboundVia('client', 'app1', undefined),
    undefined,
    "a plain pod's outbound traffic is not redirected",
  );
});

t.test('removing the namespace label stops redirection; restoring it brings it back', async (t) => {
  await update(withLabels(obj('Namespace', 'mesh'), { 'kubernetes.io/metadata.name': 'mesh' }));
  await eventually(() => ambientIps().length === 0, CONVERGE_MS, 'the mesh pods to leave the map');
  t.equal(await outboundVia('app2', 'app1', undefined), undefined, 'no longer redirected');
  await update(withLabels(obj('Namespace', 'mesh'), { 'kubernetes.io/metadata.name': 'mesh', [AMBIENT]: 'ambient' }));
  await eventually(() => ambientIps().length === 6, CONVERGE_MS, 'the mesh pods to be back');
  t.equal(await outboundVia('app2', 'app1', 'ztunnel-node1'), 'ztunnel-node1', 'redirected again');
});

t.test('the opt-out annotation stops redirection of that pod only', async (t) => {
  await update(withOptOut(obj('Pod', 'app2', 'mesh'), true));
  await eventually(() => !ambientIps().includes(ip('app2')), CONVERGE_MS, 'app2 to leave the map');
  t.equal(await outboundVia('app2', 'app1', undefined), undefined, 'the opted-out pod is not redirected');
  t.ok(ambientIps().includes(ip('app1')), 'its neighbour stays');
  await update(withOptOut(obj('Pod', 'app2', 'mesh'), false));
  await eventually(() => ambientIps().includes(ip('app2')), CONVERGE_MS, 'app2 to be back');
  t.equal(await outboundVia('app2', 'app1', 'ztunnel-node1'), 'ztunnel-node1');
});

t.test('a burst of changes ends in its last state; a completed pod leaves the map', async (t) => {
  // 21 flips of the namespace label, each burst ending opposite to where it started: only a
  // loader that applies the newest state ends right.
  const flip = (i: number, startWithout: boolean) =>
    update(
      withLabels(
        obj('Namespace', 'mesh'),
        (i % 2 === 0) === startWithout
          ? { 'kubernetes.io/metadata.name': 'mesh' }
          : { 'kubernetes.io/metadata.name': 'mesh', [AMBIENT]: 'ambient' },
      ),
    );
  for (let i = 0; i < 21; i++) await flip(i, true);
  await eventually(() => ambientIps().length === 0, CONVERGE_MS, 'the burst to end with no ambient pod');
  for (let i = 0; i < 21; i++) await flip(i, false);
  await eventually(() => ambientIps().length === 6, CONVERGE_MS, 'the burst to end with every mesh pod back');
  await observeFor(300); // what is tested: no late flip within the window
  t.equal(ambientIps().length, 6, 'and it stays there');

  const done = obj('Pod', 'job', 'mesh');
  done['status'] = { ...(done['status'] as Record<string, unknown>), phase: 'Succeeded' };
  await update(done);
  await eventually(
    () => !ambientIps().includes(ip('job')),
    CONVERGE_MS,
    'the completed pod to leave the map (its IP may be reused)',
  );
  t.same(ambientIps(), sorted(['app1', 'app2', 'gone', 'victim', 'late']));
});

t.test('deleting a pod removes its ambient-pod entry, its netns entry and its inbound link', async (t) => {
  const gone = tb.pod('gone');
  const entry = readMaps(node()).pods.get(gone.ip);
  t.ok(entry, 'the pod is in the map first');
  const cookie = entry!.netnsCookie;
  t.ok(readMaps(node()).netns.has(cookie), 'its netns cookie is known');
  t.ok(inboundLinkPinned(node(), gone.hostIfname), 'its host veth has a pinned inbound link');
  await api.server.deletePod('mesh', 'gone');
  await eventually(() => !readMaps(node()).pods.has(gone.ip), CONVERGE_MS, 'the pod entry to go');
  await eventually(
    () => !readMaps(node()).netns.has(cookie) && !inboundLinkPinned(node(), gone.hostIfname),
    CONVERGE_MS,
    'netns entry and link to go',
  );
  t.same(ambientIps(), sorted(['app1', 'app2', 'victim', 'late']), 'the others stay');
});

t.test('ztunnel replaced by a new pod with a new IP: the ztunnel map and the traffic follow', async (t) => {
  const fresh = api.heldBack.get(keyOf('Pod', 'istio-system', 'ztunnel-new'))!;
  const pending = structuredClone(fresh);
  pending['status'] = { phase: 'Pending' };
  const passes = await metric('ambpf_reconcile_passes_total');
  await api.server.addPod(pending);
  await eventually(
    async () => (await metric('ambpf_reconcile_passes_total')) > passes,
    CONVERGE_MS,
    'a pass that saw the pending pod',
  );
  t.equal(
    readMaps(node()).ztunnelIp,
    ip('ztunnel-node1'),
    'a new ztunnel without an IP does not replace the running one',
  );
  await api.server.updatePod(fresh);
  api.objects.set(keyOf('Pod', 'istio-system', 'ztunnel-new'), structuredClone(fresh));
  await api.server.deletePod('istio-system', 'ztunnel-node1');
  await eventually(
    () => readMaps(node()).ztunnelIp === ip('ztunnel-new'),
    CONVERGE_MS,
    'the ztunnel map to name the new pod',
  );
  t.equal(
    readMaps(node()).ztunnelHostIfindex,
    tb.pod('ztunnel-new').hostIfindex,
    "inbound steering targets the new pod's veth",
  );
  t.equal(await outboundVia('app2', 'app1', 'ztunnel-new'), 'ztunnel-new', 'outbound goes to the new ztunnel');
  const inbound = await eventually(
    async () =>
      (await request('client', 'app1', ['inbound-plaintext'], PROBE_MS)).find(
        (e) => e.direction === 'inbound-plaintext',
      ),
    CONVERGE_MS,
    'inbound to be steered into the new ztunnel',
  );
  t.equal(inbound?.where, 'ztunnel-new', 'inbound is captured by the new ztunnel');
  t.same(ambientIps(), sorted(['app1', 'app2', 'victim', 'late']), 'pods unchanged');
});

t.test('no ztunnel at all: the slot is cleared and traffic flows directly, until one is back', async (t) => {
  await api.server.deletePod('istio-system', 'ztunnel-new');
  await eventually(() => readMaps(node()).ztunnelIp === undefined, CONVERGE_MS, 'the ztunnel slot to be cleared');
  t.equal(
    await outboundVia('app2', 'app1', undefined),
    undefined,
    'nothing is sent to a ztunnel that is not there (and the request still works)',
  );
  await api.server.addPod(obj('Pod', 'ztunnel-new', 'istio-system'));
  await eventually(
    () => readMaps(node()).ztunnelIp === ip('ztunnel-new'),
    CONVERGE_MS,
    'the ztunnel to be known again',
  );
  t.equal(await outboundVia('app2', 'app1', 'ztunnel-new'), 'ztunnel-new', 'redirected again');
});

t.test('watch dropped and the server down while things change: converges after reconnect, nothing stale', async (t) => {
  const restarts = await metric('ambpf_watch_restarts_total');
  await api.server.dropWatches();
  await api.server.down();
  // Meanwhile: the plain namespace joins the mesh, app1 opts out, victim is deleted (the resumed
  // watch replays all three from the server's history).
  await update(withLabels(obj('Namespace', 'plain'), { 'kubernetes.io/metadata.name': 'plain', [AMBIENT]: 'ambient' }));
  await update(withOptOut(obj('Pod', 'app1', 'mesh'), true));
  await api.server.deletePod('mesh', 'victim');
  // The loader noticed the drop of both watches and failed to reconnect at least once.
  await eventually(
    async () => (await metric('ambpf_watch_restarts_total')) >= restarts + 3,
    CONVERGE_MS,
    'a failed reconnect',
  );
  t.ok(ambientIps().includes(ip('app1')), 'nothing changes while the server is away (the maps stay as they were)');
  await api.server.up();
  await eventually(
    () =>
      ambientIps().includes(ip('client')) && !ambientIps().includes(ip('app1')) && !ambientIps().includes(ip('victim')),
    15_000,
    'convergence after reconnect',
  );
  t.same(ambientIps(), sorted(['client', 'app2', 'late']), 'exactly the new membership');
  t.ok((await metric('ambpf_watch_restarts_total')) > restarts, 'the restarts were counted');
  await update(withLabels(obj('Namespace', 'plain'), { 'kubernetes.io/metadata.name': 'plain' }));
  await update(withOptOut(obj('Pod', 'app1', 'mesh'), false));
  await api.server.addPod(obj('Pod', 'victim', 'mesh'));
  await eventually(
    () => ambientIps().join() === sorted(['app1', 'app2', 'victim', 'late']).join(),
    CONVERGE_MS,
    'back to the original membership',
  );
});

t.test('410 Gone after an outage: the relist removes a pod deleted meanwhile', async (t) => {
  const expired = logCount('watch expired (410 Gone); relisting');
  await api.server.down();
  await api.server.deletePod('mesh', 'victim');
  await api.server.compact();
  await api.server.up();
  await eventually(() => !ambientIps().includes(ip('victim')), 15_000, 'the deleted pod to leave the map');
  t.ok(logCount('watch expired (410 Gone); relisting') > expired, 'the resumed watch got 410 and the loader relisted');
  t.same(ambientIps(), sorted(['app1', 'app2', 'late']));
});

t.test('410 mid-stream: the loader relists and keeps following changes', async (t) => {
  const expired = logCount('watch expired (410 Gone); relisting');
  const podLists = async (): Promise<number> =>
    (await api.server.requests()).filter((r) => r.path === '/api/v1/pods' && !r.watch).length;
  const listsBefore = await podLists();
  await api.server.expireWatches();
  await eventually(
    () => logCount('watch expired (410 Gone); relisting') > expired,
    CONVERGE_MS,
    'the 410 event to be seen',
  );
  // The pod comes back (same name, uid and IP: a recreated object): seen through the new watch.
  await api.server.addPod(obj('Pod', 'victim', 'mesh'));
  await eventually(() => ambientIps().includes(ip('victim')), CONVERGE_MS, 'the recreated pod to be in the map');
  // Both watches (pods, namespaces) get the 410; the first relist logged may be the namespaces'.
  t.ok(
    await eventually(async () => (await podLists()) > listsBefore, CONVERGE_MS, 'the pods to be listed again').catch(
      () => false,
    ),
    'the pods were listed again after the 410',
  );
});

t.test(
  'stalled stream: the staleness watchdog relists',
  {
    skip: STALE_FLAG
      ? false
      : `ambpf run has no ${STALE_FLAG_NAME} flag, and its default bound (3 minutes) is too long to wait for here`,
  },
  async (t) => {
    const stalled = 'watch restart: no event or bookmark within the staleness bound; relisting';
    const before = logCount(stalled);
    await api.server.stall();
    t.teardown(() => api.server.unstall());
    // The open watches hear nothing more: only a relist can bring this change in.
    await update(withOptOut(obj('Pod', 'app2', 'mesh'), true));
    await eventually(
      () => !ambientIps().includes(ip('app2')),
      4 * STALE_MS,
      'the watchdog relist to deliver the opt-out',
    );
    t.ok(logCount(stalled) > before, 'the watchdog fired');
    await api.server.unstall();
    await update(withOptOut(obj('Pod', 'app2', 'mesh'), false));
    await eventually(() => ambientIps().includes(ip('app2')), 4 * STALE_MS, 'app2 back once the server streams again');
  },
);

t.test('objects the loader cannot use are logged and skipped; the rest is untouched', async (t) => {
  const before = ambientIps();
  const passes = await metric('ambpf_reconcile_passes_total');
  const base = obj('Pod', 'app1', 'mesh');
  const noIp = {
    ...structuredClone(base),
    metadata: { name: 'no-ip', namespace: 'mesh', uid: 'uid-no-ip' },
    status: { phase: 'Pending' },
  };
  const badIp = {
    ...structuredClone(base),
    metadata: { name: 'bad-ip', namespace: 'mesh', uid: 'uid-bad-ip' },
    status: { phase: 'Running', podIP: '198.19.1.300' },
  };
  // IPv6 only (the node has no such pod: nothing of it can be found on the node) and malformed
  // (fields of the wrong JSON type, which a real API server would refuse but a proxy could mangle).
  const v6Only = {
    ...structuredClone(base),
    metadata: { name: 'v6-only', namespace: 'mesh', uid: 'uid-v6-only' },
    status: { phase: 'Running', podIP: 'fd00:198:18::7', podIPs: [{ ip: 'fd00:198:18::7' }] },
  };
  const malformed = {
    ...structuredClone(base),
    metadata: { name: 'malformed', namespace: 'mesh', uid: 'uid-malformed', labels: 7 },
    spec: { nodeName: NODE, containers: 'garbage' },
    status: { phase: 'Running', podIP: 1234 },
  } as unknown as KubeItem;
  await api.server.addPod(noIp);
  await api.server.addPod(badIp);
  await api.server.addPod(v6Only);
  await api.server.addPod(malformed);
  // Objects that fail the schema are named by the watch (src/sources/validate.ts), pods it cannot
  // place on the node by the reconciler.
  const reported = (name: string) =>
    loader!
      .logLines()
      .find((l) =>
        [`cannot apply pod mesh/${name}`, `invalid object skipped: pod mesh/${name}:`].some((prefix) =>
          String(l['msg']).startsWith(prefix),
        ),
      );
  for (const name of ['bad-ip', 'v6-only', 'malformed']) {
    await eventually(() => reported(name), CONVERGE_MS, `the pod ${name} to be reported`);
    t.pass(`pod ${name}: ${String(reported(name)?.['msg'])}`);
  }
  t.match(reported('bad-ip'), { field: 'status.podIP', reason: '"198.19.1.300" is not an IP address' }, 'bad IP named');
  t.match(
    reported('malformed'),
    { field: 'metadata.labels', reason: 'expected record, got number 7' },
    "the malformed pod's first fault",
  );
  t.match(
    String(reported('malformed')?.['msg']),
    /status\.podIP: expected string, got number 1234/,
    '...and its others, in the same line',
  );
  await eventually(
    async () => (await metric('ambpf_reconcile_passes_total')) > passes,
    CONVERGE_MS,
    'a pass over the bad objects',
  );
  t.same(ambientIps(), before, 'the map holds exactly the good pods');
  t.equal(await outboundVia('app2', 'app1', 'ztunnel-new'), 'ztunnel-new', 'traffic is still redirected');
  for (const name of ['no-ip', 'bad-ip', 'v6-only', 'malformed']) await api.server.deletePod('mesh', name);
});

t.test('metrics: watch restarts, last event age and reconcile duration are there and move', async (t) => {
  const text = await metrics(tb, loader!);
  t.ok(metricValue(text, 'ambpf_reconcile_duration_seconds') > 0, 'reconcile duration is reported');
  t.equal(metricValue(text, 'ambpf_reconcile_errors_total'), 0, 'reconcile errors are reported (none here)');
  const age1 = metricValue(text, 'ambpf_watch_last_event_age_seconds');
  t.ok(age1 >= 0, 'an event was heard');
  let age2 = age1;
  const grew = await waitUntil(
    async () => (age2 = await metric('ambpf_watch_last_event_age_seconds')) >= age1 + 1,
    CONVERGE_MS,
  );
  t.ok(grew, `the age grows on a quiet watch (${age1} -> ${age2})`);
  await update(withLabels(obj('Namespace', 'plain'), { 'kubernetes.io/metadata.name': 'plain', team: 'x' }));
  await eventually(
    async () => (await metric('ambpf_watch_last_event_age_seconds')) < age2 - 0.5,
    CONVERGE_MS,
    'an event to reset the age',
  );
  const restarts = await metric('ambpf_watch_restarts_total');
  await api.server.dropWatches();
  await eventually(
    async () => (await metric('ambpf_watch_restarts_total')) > restarts,
    CONVERGE_MS,
    'the drop to count as a restart',
  );
});

t.test('a restarted loader keeps the pins until it synced, then removes a pod deleted while it was down', async (t) => {
  const late = tb.pod('late');
  const cookie = readMaps(node()).pods.get(late.ip)?.netnsCookie;
  t.ok(cookie !== undefined, 'the pod is in the map first');
  loader!.proc.kill('SIGTERM');
  t.equal(await exitWithin(loader!, 10_000), 0, 'the loader stops cleanly');
  t.equal(
    await outboundVia('app2', 'app1', 'ztunnel-new'),
    'ztunnel-new',
    'traffic keeps being redirected while the loader is down',
  );
  await api.server.deletePod('mesh', 'late');

  // Restarted while the API server is away too: it must not touch the maps before it knows the truth.
  await api.server.down();
  loader!.restart();
  await eventually(
    async () => (await loaderHttp(tb, node(), '/readyz')).status === 503,
    20_000,
    'the restarted loader to answer 503',
  );
  t.ok(readMaps(node()).pods.has(late.ip), 'before its first sync the restarted loader leaves the maps as they are');
  t.equal(await outboundVia('app2', 'app1', 'ztunnel-new'), 'ztunnel-new', 'and traffic keeps flowing');
  // A loader stopped before its first sync (kubelet giving up on it) exits too, without a SIGKILL.
  loader!.proc.kill('SIGTERM');
  t.equal(await exitWithin(loader!, 10_000), 0, 'a loader that never synced stops cleanly on SIGTERM');

  await api.server.up();
  loader!.restart();
  await waitReady(tb, loader!);
  // Ready means reconciled against the pins: the entry is gone already.
  t.notOk(readMaps(node()).pods.has(late.ip), 'the pod deleted while the loader was down is gone');
  t.notOk(readMaps(node()).netns.has(cookie!), 'and so is its netns entry');
  t.notOk(inboundLinkPinned(node(), late.hostIfname), 'and its inbound link');
  t.same(ambientIps(), sorted(['app1', 'app2', 'victim']));
  t.equal(readMaps(node()).ztunnelIp, ip('ztunnel-new'));
});

t.test('credentials the API server refuses: the loader says so and exits, the pins stay', async (t) => {
  loader!.proc.kill('SIGTERM');
  t.equal(await exitWithin(loader!, 10_000), 0);
  const before = ambientIps();
  await api.server.setToken('a-rotated-token-the-kubeconfig-does-not-have');
  loader!.restart();
  const code = await exitWithin(loader!, 30_000);
  t.not(code, 0, 'a non-zero exit');
  t.not(code, 'hung', 'it exits by itself');
  const out = readFileSync(loader!.logFile, 'utf8');
  t.match(
    out,
    /^ambpf: the Kubernetes API server at https:\/\/127\.0\.0\.1:\d+ rejected ambpf's credentials \(401/m,
    'one clear sentence on stderr',
  );
  t.same(ambientIps(), before, 'the maps are left as they were');
  t.equal(await outboundVia('app2', 'app1', 'ztunnel-new'), 'ztunnel-new', 'and traffic keeps flowing');
});
