import t from 'tap';
import { computeDesiredState, canonicalIp } from '../../src/state/desired.ts';
import type { KubeObjectLike } from '../../src/sources/types.ts';

const ns = (name: string, labels: Record<string, string> = {}): KubeObjectLike => ({
  apiVersion: 'v1',
  kind: 'Namespace',
  metadata: { name, labels },
});

interface PodOpts {
  ns?: string;
  node?: string;
  ip?: string | string[];
  uid?: string | null;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  hostNetwork?: boolean;
  containers?: string[];
  phase?: string;
}
const pod = (name: string, o: PodOpts = {}): KubeObjectLike => {
  const ips = o.ip === undefined ? ['198.19.1.10'] : Array.isArray(o.ip) ? o.ip : [o.ip];
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: {
      name,
      namespace: o.ns ?? 'app',
      uid: o.uid === null ? undefined : (o.uid ?? `uid-${name}`),
      labels: o.labels ?? {},
      annotations: o.annotations ?? {},
    },
    spec: {
      nodeName: o.node ?? 'n1',
      hostNetwork: o.hostNetwork ?? false,
      containers: (o.containers ?? ['app']).map((n) => ({ name: n })),
    },
    status: { phase: o.phase ?? 'Running', podIP: ips[0], podIPs: ips.map((ip) => ({ ip })) },
  };
};
const ztunnel = (ip: string, node = 'n1', name = `ztunnel-${node}`): KubeObjectLike =>
  pod(name, { ns: 'istio-system', node, ip, labels: { app: 'ztunnel' } });

const AMBIENT = { 'istio.io/dataplane-mode': 'ambient' };

t.test('namespace label puts its pods on this node in the mesh; other nodes and namespaces stay out', async (t) => {
  const s = computeDesiredState(
    {
      namespaces: [ns('app', AMBIENT), ns('plain'), ns('istio-system')],
      pods: [
        pod('a', { ip: '198.19.1.10' }),
        pod('b', { ip: '198.19.1.11', node: 'n2' }),
        pod('c', { ns: 'plain', ip: '198.19.1.12' }),
        pod('d', { ns: 'plain', ip: '198.19.1.13', labels: AMBIENT }),
        ztunnel('198.19.1.2'),
        ztunnel('198.19.2.2', 'n2'),
      ],
    },
    'n1',
  );
  t.same(
    s.ambientPods.map((p) => `${p.namespace}/${p.name}`),
    ['app/a', 'plain/d'],
  );
  t.equal(s.ztunnel?.name, 'ztunnel-n1');
  t.same(s.ztunnel?.ips, ['198.19.1.2']);
  t.same(s.problems, []);
});

t.test('opt-outs, sidecars, hostNetwork and finished pods are excluded', async (t) => {
  const s = computeDesiredState(
    {
      namespaces: [ns('app', AMBIENT)],
      pods: [
        pod('none', { ip: '198.19.1.20', labels: { 'istio.io/dataplane-mode': 'none' } }),
        pod('annot', { ip: '198.19.1.21', annotations: { 'ambient.istio.io/redirection': 'disabled' } }),
        pod('sidecar', { ip: '198.19.1.22', containers: ['app', 'istio-proxy'] }),
        pod('sidecar2', { ip: '198.19.1.23', annotations: { 'sidecar.istio.io/status': '{}' } }),
        pod('host', { ip: '198.18.0.1', hostNetwork: true }),
        pod('done', { ip: '198.19.1.24', phase: 'Succeeded' }),
        pod('ok', { ip: '198.19.1.25' }),
      ],
    },
    'n1',
  );
  t.same(
    s.ambientPods.map((p) => p.name),
    ['ok'],
  );
});

t.test('malformed pods are reported one by one and never hide the good ones', async (t) => {
  const s = computeDesiredState(
    {
      namespaces: [ns('app', AMBIENT), { metadata: {} }],
      pods: [
        pod('badip', { ip: '198.19.1.300' }),
        pod('nouid', { uid: null, ip: '198.19.1.31' }),
        pod('dup1', { ip: '198.19.1.40' }),
        pod('dup2', { ip: '198.19.1.40' }),
        { kind: 'Pod', metadata: { name: 'weird', namespace: 'app', uid: 'u-w' }, spec: 'not an object', status: 42 },
        pod('good', { ip: '198.19.1.41' }),
        pod('elsewhere-bad', { ip: 'nope', node: 'n9' }),
      ],
    },
    'n1',
  );
  t.same(
    s.ambientPods.map((p) => p.name),
    ['dup1', 'good'],
  );
  t.same(
    s.problems.map((p) => p.object),
    ['namespace <unnamed>', 'pod app/badip', 'pod app/nouid', 'pod app/dup2'],
  );
  t.match(s.problems[1]!.reason, /"198\.19\.1\.300" is not an IP address/);
  t.match(s.problems[3]!.reason, /198\.19\.1\.40 is already used by pod app\/dup1/);
});

t.test('dual-stack pods keep both IPs, IPv4 first; v4-mapped folds to IPv4', async (t) => {
  const s = computeDesiredState(
    {
      namespaces: [ns('app', AMBIENT)],
      pods: [pod('ds', { ip: ['FD00::0A', '198.19.1.50'] }), pod('mapped', { ip: '::ffff:198.19.1.51' })],
    },
    'n1',
  );
  t.same(
    s.ambientPods.map((p) => p.ips),
    [['198.19.1.50', 'fd00::a'], ['198.19.1.51']],
  );
});

t.test('no ztunnel on this node means none in the state', async (t) => {
  const s = computeDesiredState({ namespaces: [], pods: [ztunnel('198.19.2.2', 'n2')] }, 'n1');
  t.equal(s.ztunnel, undefined);
});

t.test('canonicalIp', async (t) => {
  t.equal(canonicalIp('198.018.0.1'), undefined);
  t.equal(canonicalIp('2001:DB8:0:0::1'), '2001:db8::1');
  t.equal(canonicalIp('198.18.0.1'), '198.18.0.1');
  t.equal(canonicalIp(''), undefined);
});
