// InpodTopology (src/reconcile/topology-inpod.ts) against a recording datapath double: every pod's
// steps are decided by plan() before the datapath is written, capture carries them out in order (a pod
// whose arm fails takes no further step), and release comes only after the maps. The kernel side of
// the same flow is covered by test/bpf/inpod-datapath.test.ts and test/loader/inpod-*.test.ts.
import t from 'tap';
import type { InpodDatapath } from '../../src/bpf/datapath-inpod.ts';
import type { ResolvedPod, Resolution } from '../../src/node/discovery.ts';
import type { DesiredState } from '../../src/state/desired.ts';
import { InpodTopology, type ZtunnelHandoff } from '../../src/reconcile/topology-inpod.ts';
import { planReconcile, type Plan } from '../../src/reconcile/plan.ts';
import type { PassContext } from '../../src/reconcile/topology.ts';
import { fakeDatapath, handoff, pod } from './fake-inpod.ts';

/** The reconciler's map phase between capture and release (src/reconcile/reconciler.ts), on the double. */
function writeMaps(dp: InpodDatapath, plan: Plan, errors: string[]): Plan {
  const put = (what: string, fn: () => void): void => {
    try {
      fn();
    } catch (err) {
      errors.push(`${what}: ${String(err)}`);
    }
  };
  for (const [cookie, v] of plan.netnsSet) put(`ambpf_netns ${cookie}`, () => dp.maps.netns.set(cookie, v));
  for (const [ip, v] of plan.podsSet) put(`ambpf_pods ${ip}`, () => dp.maps.pods.set(ip, v));
  for (const ip of plan.podsDelete) dp.maps.pods.delete(ip);
  for (const cookie of plan.netnsDelete) dp.maps.netns.delete(cookie);
  return plan;
}

const desired = (pods: readonly ResolvedPod[]): DesiredState => ({
  node: 'n1',
  ambientPods: pods,
  ztunnel: undefined,
  problems: [],
});
const resolution = (pods: readonly ResolvedPod[]): Resolution => ({ pods, ztunnel: undefined, unresolved: [] });

function context(errors: string[]): PassContext {
  return {
    attempt: (what, fn) => {
      try {
        fn();
        return true;
      } catch (err) {
        errors.push(`${what}: ${String(err)}`);
        return false;
      }
    },
    fail: (e) => errors.push(e),
    lap: () => undefined,
  };
}

t.test('plan decides every step before anything is written', async (t) => {
  const { dp, log } = fakeDatapath();
  const synced: Array<readonly string[]> = [];
  const topo = new InpodTopology(dp, { handoff: handoff(synced) });
  const pods = [pod('a', 11n, 100), pod('b', 12n, 0)];
  const pass = topo.plan({ desired: desired(pods), resolution: resolution(pods) });
  t.same(
    pass.steps.map((s) => `${s.kind} ${s.subject}`),
    ['arm pod mesh/a', 'arm pod mesh/b'],
    'not served yet: arm only',
  );
  t.same(log, [], 'planning wrote nothing');

  const errors: string[] = [];
  const captured = await pass.capture(context(errors));
  t.same(log, ['arm 11', 'arm 12'], 'capture carries the steps out in order');
  t.same([...captured.target.netns.keys()].sort(), [11n, 12n], "both armed pods are in the maps' target");
  t.same(synced, [], 'ztunnel hears nothing before the maps are written');
  const released = await pass.release(
    writeMaps(dp, planReconcile(captured.target, captured.current), errors),
    context(errors),
  );
  t.same(released.attached, ['pod mesh/a', 'pod mesh/b']);
  t.same(synced, [['a', 'b']], 'after the maps: the armed pods are handed to ztunnel');
  t.same(errors, []);
});

t.test('a served pod with no process yet waits; a pod whose arm fails takes no further step', async (t) => {
  const { dp, log } = fakeDatapath({ armFails: new Set([22n]) });
  const served: ZtunnelHandoff = { served: () => true, peerPids: () => [], sync: () => undefined, status: () => [] };
  const topo = new InpodTopology(dp, { handoff: served });
  const pods = [pod('c', 21n, 0), pod('d', 22n, 0)];
  const pass = topo.plan({ desired: desired(pods), resolution: resolution(pods) });
  t.same(
    pass.steps.map((s) => `${s.kind} ${s.subject}`),
    ['arm pod mesh/c', 'wait pod mesh/c', 'arm pod mesh/d', 'wait pod mesh/d'],
  );
  const errors: string[] = [];
  const captured = await pass.capture(context(errors));
  t.same(log, ['arm 21', 'arm 22']);
  t.same(
    captured.unresolved.map((p) => p.object),
    ['pod mesh/c'],
    'd failed to arm: not waited for, reported instead',
  );
  t.match(errors, [/inpod capture of pod mesh\/d: .*sk_lookup attach failed/]);
  t.same([...captured.target.netns.keys()], [21n], 'only the armed pod is in the target');
});

t.test('a pod that left is released after the maps, and only then', async (t) => {
  const { dp, log, pinned } = fakeDatapath();
  const synced: Array<readonly string[]> = [];
  const topo = new InpodTopology(dp, { handoff: handoff(synced) });
  const a = pod('a', 31n, 100);
  const errors: string[] = [];
  const first = topo.plan({ desired: desired([a]), resolution: resolution([a]) });
  const c1 = await first.capture(context(errors));
  await first.release(writeMaps(dp, planReconcile(c1.target, c1.current), errors), context(errors));
  t.ok(pinned.has(31n));

  const second = topo.plan({ desired: desired([]), resolution: resolution([]) });
  t.same(second.steps, [], 'nothing to capture');
  const c2 = await second.capture(context(errors));
  t.equal(c2.target.netns.size, 0);
  t.notOk(log.includes('release 31'), 'not released during capture: the maps still redirect to it');
  const released = await second.release(writeMaps(dp, planReconcile(c2.target, c2.current), errors), context(errors));
  t.same(released.detached, ['netns 31']);
  t.equal(log.at(-1), 'release 31');
  t.same(synced.at(-1), [], 'ztunnel is told the pod went');
  t.same(errors, []);
});

t.test('a pod whose entries do not fit the maps is not handed to ztunnel', async (t) => {
  const { dp } = fakeDatapath({ podsCapacity: 1 });
  const synced: Array<readonly string[]> = [];
  const topo = new InpodTopology(dp, { handoff: handoff(synced) });
  const pods = [pod('e', 41n, 100), pod('f', 42n, 100)];
  const pass = topo.plan({ desired: desired(pods), resolution: resolution(pods) });
  const errors: string[] = [];
  const captured = await pass.capture(context(errors));
  await pass.release(writeMaps(dp, planReconcile(captured.target, captured.current), errors), context(errors));
  t.match(errors, [/ambpf_pods 198\.18\.9\.42: .*full/], 'the map phase reported the pod that did not fit');
  // Not announced, its CNI ADD fails and sk_lookup refuses its inbound: it never runs past ztunnel.
  t.same(synced, [['e']], 'only the pod whose entries are all in the maps is handed over');
});
