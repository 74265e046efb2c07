import t from 'tap';
import { buildTarget, planReconcile, isEmptyPlan } from '../../src/reconcile/plan.ts';
import { POD_AMBIENT, POD_IS_ZTUNNEL } from '../../src/bpf/schema.ts';
import type { Resolution, ResolvedPod } from '../../src/node/discovery.ts';

const link = (ifname: string, ifindex: number) => ({
  ifname,
  ifindex,
  mac: `02:00:00:00:00:${ifindex.toString(16).padStart(2, '0')}`,
});
const pod = (name: string, ips: string[], cookie: bigint, ifindex: number): ResolvedPod => ({
  uid: `u-${name}`,
  name,
  namespace: 'app',
  ips,
  pid: 100 + ifindex,
  pids: [100 + ifindex],
  netnsPath: `/proc/${100 + ifindex}/ns/net`,
  netnsCookie: cookie,
  hostLink: link(`veth-${name}`, ifindex),
  serviceAccount: 'default',
});

const resolution = (pods: ResolvedPod[], withZtunnel = true): Resolution => ({
  pods,
  ztunnel: withZtunnel
    ? { ...pod('zt', ['198.19.1.2'], 9n, 2), namespace: 'istio-system', podLink: link('eth0', 3) }
    : undefined,
  unresolved: [],
});

t.test('target holds one pod entry per IP, the pod netns, ztunnel flagged to bypass, inbound ifnames', async (t) => {
  const target = buildTarget(resolution([pod('a', ['198.19.1.10', 'fd00::a'], 11n, 10)]));
  t.same([...target.pods.keys()], ['198.19.1.10', 'fd00::a']);
  t.same(target.pods.get('fd00::a'), { netnsCookie: 11n, hostIfindex: 10, flags: POD_AMBIENT });
  t.same(target.netns.get(11n), { podIp: '198.19.1.10', flags: POD_AMBIENT });
  t.same(target.netns.get(9n), { podIp: '198.19.1.2', flags: POD_IS_ZTUNNEL });
  t.same([...target.inbound], ['veth-a']);
  t.equal(target.ztunnel?.ip, '198.19.1.2');
  t.equal(target.ztunnel?.ifindex, 3);
  t.equal(target.ztunnel?.hostIfindex, 2);
});

t.test('plan: adds, changes and deletes only what differs; same state twice is an empty plan', async (t) => {
  const before = buildTarget(resolution([pod('a', ['198.19.1.10'], 11n, 10), pod('b', ['198.19.1.11'], 12n, 11)]));
  const after = buildTarget(resolution([pod('a', ['198.19.1.10'], 11n, 10), pod('c', ['198.19.1.11'], 13n, 12)]));
  const plan = planReconcile(after, before);
  t.same([...plan.podsSet.keys()], ['198.19.1.11']);
  t.same(plan.podsDelete, []);
  t.same([...plan.netnsSet.keys()], [13n]);
  t.same(plan.netnsDelete, [12n]);
  t.same(plan.inboundAttach, ['veth-c']);
  t.same(plan.inboundDetach, ['veth-b']);
  t.equal(plan.ztunnel, undefined);
  t.ok(isEmptyPlan(planReconcile(after, after)));
});

t.test('plan: ztunnel gone clears it; a new ztunnel is written', async (t) => {
  const withZ = buildTarget(resolution([]));
  const withoutZ = buildTarget(resolution([], false));
  t.equal(planReconcile(withoutZ, withZ).ztunnel, null);
  t.equal(planReconcile(withZ, withoutZ).ztunnel?.ip, '198.19.1.2');
  t.equal(planReconcile(withoutZ, withoutZ).ztunnel, undefined);
});

t.test('plan: a ztunnel that exists but cannot be resolved this pass is kept, not cleared', async (t) => {
  const withZ = buildTarget(resolution([pod('a', ['198.19.1.10'], 11n, 10)]));
  const transient = buildTarget({
    pods: [pod('a', ['198.19.1.10'], 11n, 10)],
    ztunnel: undefined,
    ztunnelWanted: true,
    unresolved: [],
  });
  t.equal(transient.keepZtunnel, true);
  const plan = planReconcile(transient, withZ);
  t.equal(plan.ztunnel, undefined, 'the ztunnel entry stays');
  t.same(plan.netnsDelete, [], "ztunnel's own netns entry stays");
  const gone = buildTarget({ pods: [], ztunnel: undefined, ztunnelWanted: false, unresolved: [] });
  t.equal(planReconcile(gone, withZ).ztunnel, null, 'no ztunnel pod at all: cleared');
});

t.test('target: an IPv6-only ztunnel gives no node-topology entry', async (t) => {
  const r = resolution([]);
  const v6 = buildTarget({ ...r, ztunnel: { ...r.ztunnel!, ips: ['fd00::2'] }, ztunnelWanted: true });
  t.equal(v6.ztunnel, undefined);
});
