// The inpod maps' target for dual-stack and IPv6-only pods (issue 18): every address in ambpf_pods,
// the IPv6 one in ambpf_netns.pod_ip6 (connect6's destination), and a target that the maps, once
// written and read back, match exactly (no rewrite on every pass).
import t from 'tap';
import { buildInpodTarget } from '../../src/reconcile/topology-inpod.ts';
import { planReconcile, isEmptyPlan } from '../../src/reconcile/plan.ts';
import { POD_AMBIENT, decodeNetns, encodeNetns, SchemaError } from '../../src/bpf/schema.ts';
import { computeDesiredState } from '../../src/state/desired.ts';
import type { Resolution, ResolvedPod } from '../../src/node/discovery.ts';

const pod = (name: string, ips: string[], cookie: bigint): ResolvedPod => ({
  uid: `u-${name}`,
  name,
  namespace: 'app',
  ips,
  pid: 100,
  pids: [100],
  netnsPath: '/proc/100/ns/net',
  netnsCookie: cookie,
  hostLink: undefined,
  serviceAccount: 'default',
});
const resolution = (pods: ResolvedPod[]): Resolution => ({ pods, ztunnel: undefined, unresolved: [] });

t.test('dual-stack and IPv6-only pods: every address in ambpf_pods, the IPv6 one in ambpf_netns', async (t) => {
  const pods = [
    pod('v4', ['198.19.1.10'], 1n),
    pod('dual', ['198.19.1.11', 'fd00:a3bf:1:1::b'], 2n),
    pod('v6', ['fd00:a3bf:1:1::c'], 3n),
  ];
  const target = buildInpodTarget(pods, resolution(pods));
  t.same([...target.pods.keys()], ['198.19.1.10', '198.19.1.11', 'fd00:a3bf:1:1::b', 'fd00:a3bf:1:1::c']);
  t.same(target.netns.get(1n), { podIp: '198.19.1.10', flags: POD_AMBIENT }, 'IPv4-only: no podIp6 field at all');
  t.same(target.netns.get(2n), { podIp: '198.19.1.11', flags: POD_AMBIENT, podIp6: 'fd00:a3bf:1:1::b' });
  t.same(target.netns.get(3n), { podIp: 'fd00:a3bf:1:1::c', flags: POD_AMBIENT, podIp6: 'fd00:a3bf:1:1::c' });
  // What the kernel holds after a pass decodes to the same entries: the next pass plans nothing.
  const current = { ...target, netns: new Map([...target.netns].map(([k, v]) => [k, decodeNetns(encodeNetns(v))])) };
  t.ok(isEmptyPlan(planReconcile(target, current)), 'a second pass writes nothing');
});

t.test('ambpf_netns.pod_ip6 takes only an IPv6 address', async (t) => {
  t.throws(() => encodeNetns({ podIp: '198.19.1.1', flags: 0, podIp6: '198.19.1.1' }), SchemaError);
  t.equal(
    Buffer.from(encodeNetns({ podIp: '198.19.1.1', flags: 0, podIp6: 'fd00::1' }))
      .subarray(24)
      .toString('hex'),
    'fd000000000000000000000000000001',
    'pod_ip6 at offset 24, network order',
  );
});

t.test('an IPv6-only pod is an ambient pod like any other', async (t) => {
  const s = computeDesiredState(
    {
      namespaces: [{ metadata: { name: 'app', labels: { 'istio.io/dataplane-mode': 'ambient' } } }],
      pods: [
        {
          metadata: { name: 'v6', namespace: 'app', uid: 'u-v6' },
          spec: { nodeName: 'n1', containers: [{ name: 'c' }] },
          status: { phase: 'Running', podIP: 'fd00:a3bf:1:1::c', podIPs: [{ ip: 'fd00:a3bf:1:1::c' }] },
        },
      ],
    },
    'n1',
  );
  t.same(
    s.ambientPods.map((p) => [p.name, p.ips]),
    [['v6', ['fd00:a3bf:1:1::c']]],
  );
  t.same(s.problems, []);
});
