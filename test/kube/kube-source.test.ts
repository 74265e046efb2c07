// The Kubernetes pod source against the fake API server: sync, changes, and every way a watch can
// go wrong (dropped, server down, stalled, expired, failing, refusing the token).
import t from 'tap';
import {
  createKubeSource,
  sameButRedirection,
  type KubeSource,
  type KubeSourceOptions,
} from '../../src/sources/kube.ts';
import { PatchStrategy, PodsApi } from '../../src/kube/pods.ts';
import { OwnWrites } from '../../src/kube/own-writes.ts';
import type { KubeConfig } from '../../src/kube/config.ts';
import { REDIRECTION_ANNOTATION } from '../../src/state/desired.ts';
import type { KubeObjectLike } from '../../src/sources/types.ts';
import { KubeAuthError } from '../../src/kube/errors.ts';
import type { FakeApiServer, FakeApiServerOptions } from '../../src/testbed/apiserver/server.ts';
import {
  SnapshotRecorder,
  kubeConfigFor,
  namespace,
  namespaceLabels,
  pod,
  podIp,
  podNames,
  startFakeServer,
  type TestContext,
} from './fixtures.ts';
import { eventually, observeFor, waitUntil } from '../helpers/wait.ts';
import { captureLog } from '../helpers/log.ts';
import { INVALID_NAMESPACE, INVALID_PODS } from '../sources/invalid-objects.ts';

const NODE = 'node-a';

function seed(server: FakeApiServer): void {
  server.addNamespace(namespace('istio-system'));
  server.addNamespace(namespace('shop', { 'istio.io/dataplane-mode': 'ambient' }));
  server.addPod(pod('ztunnel-x1', 'istio-system', NODE, '198.18.1.2', { app: 'ztunnel' }));
  server.addPod(pod('web-1', 'shop', NODE, '198.18.1.10'));
  server.addPod(pod('web-2', 'shop', 'node-b', '198.18.2.10'));
}

function makeSource(t: TestContext, server: FakeApiServer, extra: Partial<KubeSourceOptions> = {}): KubeSource {
  const source = createKubeSource({
    kubeConfig: kubeConfigFor(server),
    nodeName: NODE,
    coalesceMs: 20,
    staleAfterMs: 60_000,
    backoffBaseMs: 40,
    backoffMaxMs: 300,
    ...extra,
  });
  t.teardown(() => source.stop());
  return source;
}

/** Resolves once the pod and the namespace watch are open on the server (they follow the lists). */
async function watching(server: FakeApiServer): Promise<void> {
  await eventually(() => server.openWatches === 2, 5000, 'the pod and namespace watches to be open');
}

/** A seeded server and a source that finished its initial sync, with its watches open. */
async function synced(
  t: TestContext,
  extra: Partial<KubeSourceOptions> = {},
  serverOptions: FakeApiServerOptions = {},
) {
  const server = await startFakeServer(t, serverOptions);
  seed(server);
  const rec = new SnapshotRecorder();
  const source = makeSource(t, server, extra);
  rec.note = () => source.counters().relists;
  await source.start(rec.onSnapshot);
  await watching(server);
  return { server, rec, source };
}

t.test("initial sync delivers this node's pods and all namespaces, once, before start resolves", async (t) => {
  const server = await startFakeServer(t);
  seed(server);
  const rec = new SnapshotRecorder();
  const source = makeSource(t, server);
  t.equal(source.health().synced, false);
  await source.start(rec.onSnapshot);
  t.equal(rec.snapshots.length, 1, 'exactly one snapshot by the time start resolves');
  t.same(podNames(rec.last), ['istio-system/ztunnel-x1', 'shop/web-1'], "node-b's pod is not delivered");
  t.same(namespaceLabels(rec.last, 'shop'), { 'istio.io/dataplane-mode': 'ambient' });
  t.equal(rec.last?.namespaces.length, 2);
  const h = source.health();
  t.equal(h.synced, true);
  t.equal(h.restarts, 0);
  t.ok(h.lastEventAgeMs !== undefined && h.lastEventAgeMs >= 0);
  t.type(source.counters().lastEventAt, 'number', 'the completed list counts as heard, for the age metric');
  const podList = server.requests.find((r) => r.path === '/api/v1/pods' && !r.watch);
  t.equal(podList?.query['fieldSelector'], `spec.nodeName=${NODE}`, 'pods are listed with the node field selector');
  // The watch follows the list shortly after start.
  const podWatch = await eventually(
    () => server.requests.find((r) => r.path === '/api/v1/pods' && r.watch),
    5000,
    'the pod watch',
  );
  t.equal(podWatch?.query['fieldSelector'], `spec.nodeName=${NODE}`, 'pods are watched with the node field selector');
  t.equal(podWatch?.query['allowWatchBookmarks'], 'true', 'the watch asks for bookmarks');
  t.equal(podWatch?.query['resourceVersion'], '1005', "the watch resumes from the list's resourceVersion");
  t.ok(Number(podWatch?.query['timeoutSeconds']) > 0, 'the watch has a server-side timeout');
});

t.test('ADDED, MODIFIED and DELETED pods and a namespace label change are reflected', async (t) => {
  const { server, rec, source } = await synced(t);

  server.addPod(pod('web-3', 'shop', NODE, undefined));
  await rec.waitFor((s) => podNames(s).includes('shop/web-3'), 5000, 'web-3 added');
  server.updatePod(pod('web-3', 'shop', NODE, '198.18.1.11'));
  await rec.waitFor((s) => podIp(s, 'shop', 'web-3') === '198.18.1.11', 5000, 'web-3 got its IP');
  server.deletePod('shop', 'web-1');
  await rec.waitFor((s) => !podNames(s).includes('shop/web-1'), 5000, 'web-1 deleted');
  server.addPod(pod('web-4', 'shop', 'node-b', '198.18.2.11'));
  server.updateNamespace(namespace('shop'));
  const s = await rec.waitFor(
    (s) => namespaceLabels(s, 'shop')?.['istio.io/dataplane-mode'] === undefined,
    5000,
    'label removed',
  );
  t.same(podNames(s), ['istio-system/ztunnel-x1', 'shop/web-3'], "another node's pod never shows up");
  server.addNamespace(namespace('late', { 'istio.io/dataplane-mode': 'ambient' }));
  await rec.waitFor((s) => namespaceLabels(s, 'late') !== undefined, 5000, 'new namespace');
  t.equal(source.health().restarts, 0, 'no restart on a healthy stream');
  t.ok(source.counters().events >= 5, 'events are counted');
});

t.test('a burst of changes is coalesced into few snapshots', async (t) => {
  const { server, rec, source } = await synced(t, { coalesceMs: 100 });
  for (let i = 0; i < 30; i++) server.addPod(pod(`burst-${i}`, 'shop', NODE, `198.18.3.${i + 1}`));
  await rec.waitFor((s) => s.pods.length === 32, 5000, 'all 30 burst pods');
  t.ok(rec.snapshots.length <= 4, `30 events made ${rec.snapshots.length - 1} snapshots after the first`);
});

t.test(
  'watch dropped and server down: restarts with backoff and catches up on the changes made meanwhile',
  async (t) => {
    const { server, rec, source } = await synced(t);
    await server.down();
    server.addPod(pod('while-down', 'shop', NODE, '198.18.1.20'));
    server.deletePod('shop', 'web-1');
    server.updateNamespace(namespace('shop', { 'istio.io/dataplane-mode': 'ambient', extra: 'yes' }));
    // Both watches were cut (2 restarts), then reconnect attempts fail (connection refused), each counted.
    t.ok(
      await waitUntil(() => source.health().restarts >= 4, 5000),
      `restarts counted while the server is down (${source.health().restarts})`,
    );
    await server.up();
    const s = await rec.waitFor(
      (s) =>
        podNames(s).includes('shop/while-down') &&
        !podNames(s).includes('shop/web-1') &&
        namespaceLabels(s, 'shop')?.['extra'] === 'yes',
      5000,
      'changes made while down',
    );
    t.same(podNames(s), ['istio-system/ztunnel-x1', 'shop/while-down']);
    t.equal(source.counters().relists, 0, 'history was still there: resumed by watch, no relist needed');

    // An abrupt drop of the open streams (no server outage) also restarts and resumes.
    await watching(server);
    const before = source.health().restarts;
    server.dropWatches();
    server.addPod(pod('after-drop', 'shop', NODE, '198.18.1.21'));
    await rec.waitFor((s) => podNames(s).includes('shop/after-drop'), 5000, 'change made at the drop');
    t.ok(source.health().restarts > before, 'the drop counted as a restart');
  },
);

t.test('stalled watch: the watchdog relists and delivers what the stream never sent', async (t) => {
  const { server, rec, source } = await synced(t, { staleAfterMs: 600 });
  server.stall();
  server.addPod(pod('during-stall', 'shop', NODE, '198.18.1.30'));
  server.deletePod('shop', 'web-1');
  const s = await rec.waitFor(
    (s) => podNames(s).includes('shop/during-stall') && !podNames(s).includes('shop/web-1'),
    5000,
    'relist after stall',
  );
  t.same(podNames(s), ['istio-system/ztunnel-x1', 'shop/during-stall']);
  const first = rec.snapshots.findIndex((x) => podNames(x).includes('shop/during-stall'));
  t.ok(rec.notes[first]! >= 1, 'the stalled stream delivered nothing: the change came with a relist');
  t.ok(source.health().restarts >= 1, 'the watchdog restart is counted');
  server.unstall();
});

t.test('a watch that never even answers (no headers) is also caught by the watchdog', async (t) => {
  const { server, rec, source } = await synced(t, { staleAfterMs: 600 });
  server.stall({ headers: false });
  server.dropWatches({ graceful: true }); // the reconnect lands on the starving server
  server.addPod(pod('unanswered', 'shop', NODE, '198.18.1.31'));
  await rec.waitFor((s) => podNames(s).includes('shop/unanswered'), 5000, 'relist after headerless stall');
  t.ok(source.counters().relists >= 1);
  server.unstall();
});

t.test('invalid objects are each one log line and left out; garbage in the stream is survived', async (t) => {
  const cap = captureLog();
  const { server, rec, source } = await synced(t, { log: cap.log });
  server.addPod(pod('no-ip-yet', 'shop', NODE, undefined));
  server.addPod({
    ...pod('v6-only', 'shop', NODE, undefined),
    status: { podIP: 'fd00::10', podIPs: [{ ip: 'fd00::10' }] },
  });
  // The pods file's cases (test/sources/invalid-objects.ts) with no uid (the server assigns one),
  // less those the node's field selector (spec.nodeName) keeps from the watch altogether.
  const cases = INVALID_PODS.filter((c) => !['metadata.uid', 'spec.nodeName', 'spec'].includes(c.field));
  for (const c of cases) {
    const o = structuredClone(c.object);
    if (o['spec']) o['spec'].nodeName = NODE;
    delete o['metadata'].uid;
    server.addPod(o);
  }
  server.addNamespace(structuredClone(INVALID_NAMESPACE.object));
  server.addPod(pod('after-bad', 'shop', NODE, '198.18.1.51'));
  const s = await rec.waitFor((s) => podNames(s).includes('shop/after-bad'), 5000, 'a valid pod after the bad ones');
  t.same(
    podNames(s),
    ['istio-system/ztunnel-x1', 'shop/after-bad', 'shop/no-ip-yet', 'shop/v6-only', 'shop/web-1'],
    'the valid pods only',
  );
  t.notOk(
    s.namespaces.some((n) => n.metadata?.name === 'odd'),
    'the invalid namespace is left out',
  );
  // The namespace comes by its own watch: its line may follow the pods'.
  await waitUntil(() => cap.with('invalid object skipped').length >= cases.length + 1, 5000);
  const reported = cap.with('invalid object skipped');
  t.equal(reported.length, cases.length + 1, `a line each: ${reported.map((l) => String(l['object'])).join(', ')}`);
  for (const c of [...cases, INVALID_NAMESPACE]) {
    const line = reported.find((l) => l['object'] === c.label);
    t.equal(line?.['field'], c.field, `${c.label}: ${String(line?.['msg'])}`);
    t.match(String(line?.['reason']), c.reason);
  }

  // More snapshots carry the same objects: nothing is said twice. A pod that turns invalid leaves,
  // with a line; fixed, it is back.
  const broken = pod('web-1', 'shop', NODE, '198.18.1.10');
  (broken['spec'] as Record<string, unknown>)['hostNetwork'] = 'yes';
  server.updatePod(broken);
  await rec.waitFor((s) => !podNames(s).includes('shop/web-1'), 5000, 'web-1 left out once invalid');
  server.updatePod(pod('web-1', 'shop', NODE, '198.18.1.10'));
  await rec.waitFor((s) => podNames(s).includes('shop/web-1'), 5000, 'web-1 back once valid');
  const lines = cap.with('invalid object skipped');
  t.equal(lines.length, cases.length + 2, "one more line: web-1's invalid version, nothing repeated");
  t.match(lines.at(-1), { object: 'pod shop/web-1', field: 'spec.hostNetwork', reason: /got string "yes"$/ });
  t.equal(source.counters().invalidObjects, cases.length + 2, 'counted');

  server.injectWatchLine('Pod', 'this is not json');
  server.injectWatchLine('Pod', JSON.stringify({ type: 'ADDED', object: { kind: 'Pod' } }));
  server.injectWatchLine('Pod', JSON.stringify({ type: 'SURPRISE', object: null }));
  server.addPod(pod('after-garbage', 'shop', NODE, '198.18.1.50'));
  const after = await rec.waitFor((s) => podNames(s).includes('shop/after-garbage'), 5000, 'a change after garbage');
  t.equal(after.pods.length, 6, 'nothing invented from the garbage');
  t.equal(source.health().restarts, 0, 'garbage did not break the stream');
});

t.test('1,000 pods on the node: listed in pages, all delivered', async (t) => {
  const server = await startFakeServer(t);
  seed(server);
  for (let i = 0; i < 1000; i++) server.addPod(pod(`many-${i}`, 'shop', NODE, `198.18.${16 + (i >> 8)}.${i & 255}`));
  const rec = new SnapshotRecorder();
  const source = makeSource(t, server);
  await source.start(rec.onSnapshot);
  t.equal(rec.last?.pods.length, 1002);
  t.ok(
    server.requests.some((r) => r.path === '/api/v1/pods' && r.query['continue'] !== undefined),
    'the list was paged',
  );
  server.deletePod('shop', 'many-500');
  await rec.waitFor((s) => s.pods.length === 1001, 5000, 'one deleted of 1000');
});

t.test('bookmarks keep a quiet watch alive: no watchdog relist while they arrive', async (t) => {
  // The bound is 12 bookmark intervals: only a loaded machine stalling the event loop for >1 s could flake this.
  const { server, rec, source } = await synced(t, { staleAfterMs: 1200 }, { bookmarkIntervalMs: 100 });
  // What is tested is a stretch of time: twice the staleness bound, with 20 bookmarks heard in it
  // (on a busy machine the bookmarks come later and the wait is longer, not the test red).
  const start = Date.now();
  await eventually(() => Date.now() - start >= 2500 && source.counters().events >= 20, 20_000, '2.5 s of bookmarks');
  t.equal(source.counters().relists, 0, 'no relist: bookmarks proved the stream alive');
  t.equal(source.health().restarts, 0);
  t.ok((source.health().lastEventAgeMs ?? Infinity) < 1200, 'last event age follows the bookmarks');
  t.equal(rec.snapshots.length, 1, 'bookmarks alone deliver no snapshot');
  t.equal(server.requests.filter((r) => r.watch).length, 2, 'still the first pod and namespace watches');
});

t.test('expired resourceVersion: 410 Gone -> relist; a pod deleted during the outage disappears', async (t) => {
  const { server, rec, source } = await synced(t);
  await server.down();
  server.deletePod('shop', 'web-1');
  server.addPod(pod('web-5', 'shop', NODE, '198.18.1.15'));
  server.compact(); // the history the client would resume from is gone
  await server.up();
  const s = await rec.waitFor(
    (s) => !podNames(s).includes('shop/web-1') && podNames(s).includes('shop/web-5'),
    5000,
    'relisted state',
  );
  t.same(podNames(s), ['istio-system/ztunnel-x1', 'shop/web-5']);
  t.ok(source.counters().relists >= 1, 'relisted');
  t.ok(
    server.requests.some(
      (r) =>
        r.watch &&
        r.query['resourceVersion'] !== undefined &&
        Number(r.query['resourceVersion']) < server.store.compactedVersion,
    ),
    'a watch was resumed from a compacted version (and got the 410)',
  );

  // 410 in the middle of an open stream (the server lost the window while we watched).
  await watching(server);
  const relists = source.counters().relists;
  server.expireWatches();
  server.deletePod('shop', 'web-5');
  await rec.waitFor((s) => !podNames(s).includes('shop/web-5'), 5000, 'web-5 gone after mid-stream 410');
  t.ok(source.counters().relists > relists, 'mid-stream 410 made a relist');
});

t.test('500s: backoff restarts are counted and the source converges once the server recovers', async (t) => {
  const server = await startFakeServer(t);
  seed(server);
  server.failNext(3);
  const rec = new SnapshotRecorder();
  const source = makeSource(t, server);
  await source.start(rec.onSnapshot);
  t.ok(source.health().restarts >= 3, `failed initial lists were retried (${source.health().restarts} restarts)`);
  t.same(podNames(rec.last), ['istio-system/ztunnel-x1', 'shop/web-1']);
  t.ok(server.requests.filter((r) => r.status === 500).length === 3, 'the server answered three 500s');

  await watching(server);
  const before = source.health().restarts;
  server.failNext(4);
  server.dropWatches();
  server.addPod(pod('after-500s', 'shop', NODE, '198.18.1.40'));
  await rec.waitFor((s) => podNames(s).includes('shop/after-500s'), 5000, 'change after 500s');
  t.ok(source.health().restarts >= before + 4, `each failed watch counted (${source.health().restarts - before})`);
  t.ok(source.counters().errors >= 7, 'errors counted');
});

t.test('a refused token fails start with a clear error and delivers nothing', async (t) => {
  const server = await startFakeServer(t);
  seed(server);
  const source = makeSource(t, server); // its kubeconfig carries the token of now...
  server.setToken('a-rotated-token'); // ...which the server no longer accepts
  const rec = new SnapshotRecorder();
  const err = await source.start(rec.onSnapshot).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.ok(err instanceof KubeAuthError, 'a KubeAuthError');
  t.match((err as Error).message, /rejected ambpf's credentials \(401 Unauthorized/);
  t.match((err as Error).message, server.url);
  t.equal(rec.snapshots.length, 0);
  t.equal(source.health().synced, false);
});

t.test('which pod edits differ only in what the agent writes', async (t) => {
  const base = (): KubeObjectLike & Record<string, unknown> => ({
    ...pod('web-1', 'shop', NODE, '198.18.1.10', { app: 'web' }),
    metadata: { name: 'web-1', namespace: 'shop', uid: 'u1', resourceVersion: '7', labels: { app: 'web' } },
  });
  const edit = (f: (p: Record<string, any>) => void): KubeObjectLike => {
    const p = structuredClone(base()) as Record<string, any>;
    f(p);
    return p as KubeObjectLike;
  };
  const redirection = (v: string, more: Record<string, string> = {}) =>
    edit((p) => (p['metadata'].annotations = { [REDIRECTION_ANNOTATION]: v, ...more }));
  const alike: Array<[string, KubeObjectLike, KubeObjectLike]> = [
    ['only the resourceVersion', base(), edit((p) => (p['metadata'].resourceVersion = '8'))],
    ['redirection set', base(), redirection('pending')],
    [
      'redirection pending -> enabled beside another annotation',
      redirection('pending', { x: '1' }),
      redirection('enabled', { x: '1' }),
    ],
    ['managedFields', base(), edit((p) => (p['metadata'].managedFields = [{ manager: 'ambpf' }]))],
    [
      'apiVersion and kind (list items have neither)',
      base(),
      edit((p) => Object.assign(p, { apiVersion: 'v1', kind: 'Pod' })),
    ],
  ];
  for (const [what, a, b] of alike) t.ok(sameButRedirection(a, b), `alike: ${what}`);
  const differ: Array<[string, KubeObjectLike]> = [
    ['another annotation', edit((p) => (p['metadata'].annotations = { 'sidecar.istio.io/status': '{}' }))],
    ['a label', edit((p) => (p['metadata'].labels = { app: 'web', 'istio.io/dataplane-mode': 'none' }))],
    ['the pod IP', edit((p) => (p['status'].podIP = '198.18.1.11'))],
    ['deletionTimestamp', edit((p) => (p['metadata'].deletionTimestamp = '2026-01-01T00:00:00Z'))],
    ['the uid', edit((p) => (p['metadata'].uid = 'u2'))],
  ];
  for (const [what, after] of differ) t.notOk(sameButRedirection(base(), after), `differ: ${what}`);
});

t.test('own writes: an echo is recognised once, in order, and only for a while', async (t) => {
  let now = 1000;
  const w = new OwnWrites(() => now);
  const a = REDIRECTION_ANNOTATION;
  t.notOk(w.takeEcho('shop', 'web', { [a]: 'enabled' }), 'nothing written');
  w.record('shop', 'web', { [a]: 'pending' });
  w.record('shop', 'web', { [a]: 'enabled' });
  t.notOk(w.takeEcho('shop', 'other', { [a]: 'pending' }), 'another pod');
  t.notOk(w.takeEcho('shop', 'web', { [a]: 'disabled' }), 'a value not written');
  t.ok(w.takeEcho('shop', 'web', { [a]: 'pending' }), 'the first echo');
  t.ok(w.takeEcho('shop', 'web', { [a]: 'enabled' }), 'the second');
  t.notOk(w.takeEcho('shop', 'web', { [a]: 'enabled' }), 'each once');
  w.record('shop', 'web', { [a]: null });
  t.ok(w.takeEcho('shop', 'web', {}), 'a removal echoes as an absent annotation');
  w.record('shop', 'web', { [a]: 'pending' });
  now += 120_000;
  t.notOk(w.takeEcho('shop', 'web', { [a]: 'pending' }), 'expired');
});

t.test("the agent's own redirection patches are no change; someone else's are", async (t) => {
  const server = await startFakeServer(t);
  seed(server);
  const kubeConfig = kubeConfigFor(server);
  const rec = new SnapshotRecorder();
  const source = makeSource(t, server, { kubeConfig });
  await source.start(rec.onSnapshot);
  await watching(server);
  const annotate = (kc: KubeConfig, name: string, value: string, namespace = 'shop'): Promise<unknown> =>
    new PodsApi(kc).patchNamespacedPodStatus({
      namespace,
      name,
      body: { metadata: { annotations: { [REDIRECTION_ANNOTATION]: value } } },
      strategy: PatchStrategy.MergePatch,
      fieldManager: 'ambpf-test',
      timeoutMs: 5000,
    });
  const annotationOf = (s: { pods: readonly KubeObjectLike[] }, name: string): unknown =>
    (s.pods.find((p) => p.metadata?.name === name)?.metadata?.annotations as Record<string, string> | undefined)?.[
      REDIRECTION_ANNOTATION
    ];
  const before = rec.snapshots.length;
  const events = source.counters().events;
  await annotate(kubeConfig, 'web-1', 'pending');
  await annotate(kubeConfig, 'web-1', 'enabled');
  await eventually(() => source.counters().events >= events + 2, 5000, 'both echoes heard by the watch');
  await observeFor(200); // ten coalescing windows: an echo taken for a change would be delivered by now
  t.equal(rec.snapshots.length, before, 'no snapshot for the echoes');
  // As an agent that crashed left it, or kubectl: the annotator must see it to put it right.
  await annotate(kubeConfigFor(server), 'ztunnel-x1', 'enabled', 'istio-system');
  const s = await rec.waitFor((s) => annotationOf(s, 'ztunnel-x1') === 'enabled', 5000, "another writer's value");
  t.equal(annotationOf(s, 'web-1'), 'enabled', 'the snapshot carries the stored value of the echoed pod');
  t.equal(rec.snapshots.length, before + 1, "one snapshot, for the other writer's change");
});
