// The fast path (src/reconcile/scope.ts, the scoped pass of src/reconcile/reconciler.ts and
// topology-inpod.ts): a change to one pod resolves, pins, writes and announces that pod only, and
// leaves the kernel exactly as a full pass would (a full pass after a burst of them finds nothing to
// do). The reconciler runs for real over the inpod topology, with a datapath double that records which
// pins and map keys each pass looked at, and a discovery double that records which pods it resolved.
import t from 'tap';
import type * as Tap from 'tap';
import { Reconciler, type Discovery } from '../../src/reconcile/reconciler.ts';
import { InpodTopology } from '../../src/reconcile/topology-inpod.ts';
import { isEmptyPlan } from '../../src/reconcile/plan.ts';
import { changedPods, memoOf } from '../../src/reconcile/scope.ts';
import { DNS_CAPTURE_ANNOTATION, computeDesiredState, type DesiredState } from '../../src/state/desired.ts';
import type { ResolvedPod } from '../../src/node/discovery.ts';
import type { ClusterSnapshot, KubeObjectLike } from '../../src/sources/types.ts';
import { fakeDatapath, handoff } from './fake-inpod.ts';

const NODE = 'n1';

interface PodSpec {
  readonly name: string;
  readonly ip: string;
  readonly labels?: Record<string, string>;
  readonly annotations?: Record<string, string>;
  readonly namespace?: string;
}

function podObject(p: PodSpec): KubeObjectLike {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: {
      name: p.name,
      namespace: p.namespace ?? 'mesh',
      uid: `uid-${p.name}`,
      labels: p.labels ?? {},
      annotations: p.annotations ?? {},
    },
    spec: { nodeName: NODE, containers: [{ name: 'app' }] },
    status: { phase: 'Running', podIP: p.ip, podIPs: [{ ip: p.ip }] },
  };
}

const ZTUNNEL: PodSpec = {
  name: 'ztunnel-n1',
  namespace: 'istio-system',
  ip: '198.18.0.2',
  labels: { app: 'ztunnel' },
};

function snapshot(pods: readonly PodSpec[]): ClusterSnapshot {
  return {
    pods: [ZTUNNEL, ...pods].map(podObject),
    namespaces: [
      { kind: 'Namespace', metadata: { name: 'mesh', labels: { 'istio.io/dataplane-mode': 'ambient' } } },
      { kind: 'Namespace', metadata: { name: 'istio-system', labels: {} } },
    ],
  };
}

const many = (n: number, from = 1): PodSpec[] =>
  Array.from({ length: n }, (_, i) => ({ name: `app-${from + i}`, ip: `198.18.1.${from + i}` }));

/**
 * Discovery without /proc: pod name -> netns cookie (the pod's sandbox, re-created with a new cookie by
 * changing it); records which pods each call resolved and whether it scanned.
 */
function fakeDiscovery(): Discovery & {
  cookies: Map<string, bigint>;
  calls: Array<{ pods: string[]; scan: boolean }>;
  gate: { hold?: Promise<void>; fail?: Error };
} {
  const cookies = new Map<string, bigint>();
  let next = 100n;
  const cookieOf = (name: string): bigint => {
    if (!cookies.has(name)) cookies.set(name, next++);
    return cookies.get(name)!;
  };
  const resolved = (d: DesiredState['ambientPods'][number]): ResolvedPod => ({
    ...d,
    pid: 1000 + Number(cookieOf(d.name)),
    pids: [1000 + Number(cookieOf(d.name))],
    netnsPath: `/nonexistent/${d.name}`,
    netnsCookie: cookieOf(d.name),
    hostLink: undefined,
  });
  const self = {
    cookies,
    calls: [] as Array<{ pods: string[]; scan: boolean }>,
    gate: {} as { hold?: Promise<void>; fail?: Error },
    async resolve(desired: DesiredState, o: { scanProcesses?: boolean }) {
      self.calls.push({ pods: desired.ambientPods.map((p) => p.name), scan: o.scanProcesses !== false });
      await self.gate.hold;
      if (self.gate.fail) throw self.gate.fail;
      return {
        pods: desired.ambientPods.map(resolved),
        ztunnel: desired.ztunnel ? { ...resolved(desired.ztunnel), podLink: undefined } : undefined,
        ztunnelWanted: desired.ztunnel !== undefined,
        unresolved: [],
      };
    },
    stillResolved: (p: ResolvedPod) => cookies.get(p.name) === p.netnsCookie,
  };
  return self;
}

function setup(o: { podsCapacity?: number } = {}) {
  const fake = fakeDatapath(o);
  const synced: Array<readonly string[]> = [];
  const scopes: Array<ReadonlySet<string> | undefined> = [];
  const discovery = fakeDiscovery();
  const topology = new InpodTopology(fake.dp, { handoff: handoff(synced, scopes) });
  const reconciler = new Reconciler({ node: NODE, topology, discovery });
  return { ...fake, synced, scopes, discovery, reconciler };
}

/** What a full pass on this snapshot would still change: nothing, if the fast paths left it exact. */
async function fullPassFindsNothing(t: Tap.Test, s: ReturnType<typeof setup>, snap: ClusterSnapshot): Promise<void> {
  const log = s.log.length;
  const r = await s.reconciler.reconcile(snap, { full: true });
  t.ok(r && isEmptyPlan(r.plan), 'a full pass finds no map entry to write or delete');
  t.same(s.log.slice(log), [], 'nor a pod to arm or release');
  t.same(r?.errors, []);
}

t.test('a change to one pod looks at that pod only', async (t) => {
  const s = setup();
  const pods = many(20);
  const first = await s.reconciler.reconcile(snapshot(pods));
  t.equal(first?.plan.podsSet.size, 20, 'the first pass is a full one');
  t.same(s.discovery.calls.at(-1)?.pods.length, 20);
  s.looks.length = 0;
  s.discovery.calls.length = 0;

  const added = { name: 'app-21', ip: '198.18.1.21' };
  const r = await s.reconciler.reconcile(snapshot([...pods, added]));
  t.same(s.discovery.calls, [{ pods: ['app-21'], scan: true }], 'only the new pod is resolved');
  const cookie = s.discovery.cookies.get('app-21')!;
  const ztCookie = s.discovery.cookies.get('ztunnel-n1')!;
  t.same(
    new Set(s.looks),
    new Set([
      `isArmed ${cookie}`,
      `get ${added.ip}`,
      `get ${cookie}`,
      `get ${ztCookie}`,
      `set ${cookie}`,
      `set ${added.ip}`,
    ]),
    'its pin, its map keys (and ztunnel entry) only: no walk of the maps, no list of the pins',
  );
  t.same([...(r?.plan.podsSet.keys() ?? [])], [added.ip]);
  t.same(s.scopes.at(-1), new Set(['uid-app-21']), 'the handoff hears of that pod only');
  t.same(s.synced.at(-1), ['app-21']);

  s.looks.length = 0;
  const gone = await s.reconciler.reconcile(snapshot(pods));
  t.same(gone?.plan.podsDelete, [added.ip], 'a pod that left: its entries go');
  t.same(s.log.at(-1), `release ${cookie}`, 'and then its capture');
  t.notOk(s.looks.includes('attachedPods') || s.looks.includes('walk'), 'still no walk');
  t.same(s.synced.at(-1), [], 'Del for that pod only (the scope names it, the armed list does not)');
  t.same(s.scopes.at(-1), new Set(['uid-app-21']));

  s.discovery.calls.length = 0;
  const none = await s.reconciler.reconcile(snapshot([...pods, { name: 'plain', ip: '198.18.1.99', namespace: 'x' }]));
  t.same(s.discovery.calls, [], 'a pod outside the mesh changed: nothing to resolve');
  t.ok(none && isEmptyPlan(none.plan));
  await fullPassFindsNothing(t, s, snapshot(pods));
});

t.test('a burst of fast-path changes leaves what a full pass would', async (t) => {
  const s = setup();
  let pods = many(30);
  await s.reconciler.reconcile(snapshot(pods));
  // Added, removed, opted out, re-IPed, re-created sandbox: one snapshot each, a scoped pass each.
  const steps: Array<(p: PodSpec[]) => PodSpec[]> = [
    (p) => [...p, { name: 'new-1', ip: '198.18.2.1' }],
    (p) => p.filter((x) => x.name !== 'app-3'),
    (p) => p.map((x) => (x.name === 'app-4' ? { ...x, labels: { 'istio.io/dataplane-mode': 'none' } } : x)),
    (p) => p.map((x) => (x.name === 'app-5' ? { ...x, ip: '198.18.2.5' } : x)),
    (p) => [...p, { name: 'new-2', ip: '198.18.1.3' }], // app-3's old IP
    (p) => p.map((x) => (x.name === 'app-4' ? { ...x, labels: {} } : x)),
    // An optional field set, then gone: the scoped pass must not keep the old value.
    (p) => p.map((x) => (x.name === 'app-7' ? { ...x, annotations: { [DNS_CAPTURE_ANNOTATION]: 'false' } } : x)),
    (p) => p.map((x) => (x.name === 'app-7' ? { ...x, annotations: {} } : x)),
  ];
  for (const step of steps) {
    pods = step(pods);
    const before = s.discovery.calls.length;
    await s.reconciler.reconcile(snapshot(pods));
    t.ok(
      s.discovery.calls.slice(before).every((c) => c.pods.length <= 1),
      `scoped: ${JSON.stringify(s.discovery.calls.slice(before))}`,
    );
  }
  // A sandbox re-created behind the pod's back (new netns, nothing announced): a retry of that pod.
  s.discovery.cookies.set('app-6', 999n);
  await s.reconciler.resync({ scope: ['uid-app-6'] });
  t.ok(s.log.includes('arm 999'), 'the new sandbox is armed');
  await fullPassFindsNothing(t, s, snapshot(pods));
  const expected = pods.filter((p) => p.name !== 'app-3').map((p) => p.name);
  t.same(new Set(s.synced.at(-1)), new Set(expected), 'ztunnel has every mesh pod');
});

t.test('a pass that throws, whoever started it, is retried in full at the next tick', async (t) => {
  const s = setup();
  const pods = many(5);
  await s.reconciler.reconcile(snapshot(pods));
  t.notOk(s.reconciler.hasUnresolved);
  s.discovery.gate.fail = new Error('ip: dump interrupted');
  // A watch event's pass: nothing but the reconciler itself can remember that it failed.
  await t.rejects(s.reconciler.reconcile(snapshot([...pods, { name: 'late', ip: '198.18.4.1' }])));
  t.ok(s.reconciler.hasUnresolved, 'the resync tick will retry it');
  delete s.discovery.gate.fail;
  s.discovery.calls.length = 0;
  await s.reconciler.resync({ retry: true });
  t.equal(s.discovery.calls[0]?.pods.length, 6, 'as a full pass');
  t.notOk(s.reconciler.hasUnresolved, 'and then nothing is left');
});

t.test('a pod deleted while its fast path runs', async (t) => {
  const s = setup();
  const pods = many(10);
  await s.reconciler.reconcile(snapshot(pods));
  let open: () => void = () => undefined;
  s.discovery.gate.hold = new Promise<void>((resolve) => (open = resolve));
  const adding = s.reconciler.reconcile(snapshot([...pods, { name: 'brief', ip: '198.18.3.1' }]));
  await new Promise((resolve) => setImmediate(resolve));
  const deleting = s.reconciler.reconcile(snapshot(pods));
  open();
  s.discovery.gate.hold = undefined;
  await Promise.all([adding, deleting]);
  const cookie = s.discovery.cookies.get('brief')!;
  t.notOk(s.pinned.has(cookie), 'its capture is gone');
  t.equal(s.maps.pods.get('198.18.3.1'), undefined, 'so are its map entries');
  t.notOk(s.synced.at(-1)?.includes('brief'), 'and ztunnel was told it went');
  await fullPassFindsNothing(t, s, snapshot(pods));
});

t.test('fail closed: a pod whose entries do not fit is not announced, and is retried alone', async (t) => {
  const s = setup({ podsCapacity: 5 });
  const pods = many(5);
  await s.reconciler.reconcile(snapshot(pods));
  t.notOk(s.reconciler.hasUnresolved, 'all five fit');
  const r = await s.reconciler.reconcile(snapshot([...pods, { name: 'sixth', ip: '198.18.1.6' }]));
  t.match(r?.errors, [/ambpf_pods 198\.18\.1\.6: .*full/]);
  t.same(s.synced.at(-1), [], 'the scoped pass does not announce it');
  t.same(s.scopes.at(-1), new Set(['uid-sixth']));
  t.ok(s.reconciler.hasUnresolved, 'a retry is due');
  s.discovery.calls.length = 0;
  await s.reconciler.resync({ retry: true });
  t.same(
    s.discovery.calls.map((c) => c.pods),
    [],
    'the retry is scoped to that pod (still known, so not even resolved again)',
  );
  t.same(s.synced.at(-1), [], 'and still not announced');
});

t.test('the fingerprint: what changes a pod, and ztunnel changes all', async (t) => {
  const base = snapshot(many(3));
  const memo = (snap: ClusterSnapshot, hints = new Map<string, string>()) =>
    memoOf(snap, computeDesiredState(snap, NODE), hints);
  const m0 = memo(base);
  t.same(changedPods(m0, memo(base)), new Set(), 'the same snapshot again: nothing');
  const relabelled = snapshot(many(3).map((p, i) => (i === 1 ? { ...p, labels: { team: 'x' } } : p)));
  t.same(changedPods(m0, memo(relabelled)), new Set(['uid-app-2']), 'an object that changed');
  t.same(
    changedPods(m0, memo(base, new Map([['uid-app-1', '/run/netns/x']]))),
    new Set(['uid-app-1']),
    'a netns CNI handed over',
  );
  const noMesh = { ...base, namespaces: [] };
  t.same(changedPods(m0, memo(noMesh)), new Set(['uid-app-1', 'uid-app-2', 'uid-app-3']), 'a namespace left the mesh');
  const zt = { ...base, pods: base.pods.map((p) => (p.metadata?.name === 'ztunnel-n1' ? { ...p, status: {} } : p)) };
  t.equal(changedPods(m0, memo(zt)), undefined, 'ztunnel changed: a full pass');
});
