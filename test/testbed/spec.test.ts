// Pure parts of the testbed: spec validation, mesh membership, the address plan, spec files.
import t from 'tap';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { defaultSpec, isMeshPod, normalizeSpec } from '../../src/testbed/spec.ts';
import { hostVethName, podIp, podIp6, nodeWireIp } from '../../src/testbed/addresses.ts';
import { readSpecFile, specFromObject } from '../../src/testbed/spec-file.ts';
import { effectivePrefix, plan } from '../../src/testbed/testbed.ts';

t.test('default spec: two nodes, ztunnel pods added first per node', async (t) => {
  const s = normalizeSpec(defaultSpec());
  t.same(
    s.nodes.map((n) => n.name),
    ['node1', 'node2'],
  );
  t.same(
    s.pods.slice(0, 2).map((p) => [p.name, p.namespace, p.labels?.['app']]),
    [
      ['ztunnel-node1', 'istio-system', 'ztunnel'],
      ['ztunnel-node2', 'istio-system', 'ztunnel'],
    ],
  );
  t.ok(s.namespaces.some((n) => n.name === 'istio-system'));
});

t.test('invalid specs are named', async (t) => {
  t.throws(() => normalizeSpec({ nodes: [], namespaces: [], pods: [] }), {
    name: 'TestbedSpecError',
    message: /no nodes/,
  });
  t.throws(() => normalizeSpec({ nodes: [{ name: 'a' }, { name: 'a' }], namespaces: [], pods: [] }), /declared twice/);
  t.throws(
    () =>
      normalizeSpec({
        nodes: [{ name: 'a' }],
        namespaces: [{ name: 'x' }],
        pods: [{ name: 'p', namespace: 'x', node: 'b' }],
      }),
    /unknown node "b"/,
  );
  t.throws(
    () => normalizeSpec({ nodes: [{ name: 'a' }], namespaces: [], pods: [{ name: 'p', namespace: 'x', node: 'a' }] }),
    /undeclared namespace/,
  );
  t.throws(() => normalizeSpec({ nodes: [{ name: 'A_1' }], namespaces: [], pods: [] }), /not a DNS label/);
});

t.test('mesh membership follows Istio ambient selection', async (t) => {
  const amb = { name: 'm', labels: { 'istio.io/dataplane-mode': 'ambient' } };
  const plain = { name: 'p', labels: {} };
  const pod = (extra: object) => ({ name: 'x', namespace: 'm', node: 'n', ...extra });
  t.equal(isMeshPod(pod({}), amb), true, 'namespace label');
  t.equal(isMeshPod(pod({ labels: { 'istio.io/dataplane-mode': 'ambient' } }), plain), true, 'pod label');
  t.equal(isMeshPod(pod({}), plain), false);
  t.equal(isMeshPod(pod({ labels: { 'istio.io/dataplane-mode': 'none' } }), amb), false, 'opt-out label');
  t.equal(
    isMeshPod(pod({ annotations: { 'ambient.istio.io/redirection': 'disabled' } }), amb),
    false,
    'redirection disabled',
  );
  t.equal(isMeshPod(pod({ hostNetwork: true }), amb), false, 'hostNetwork');
  t.equal(isMeshPod(pod({ annotations: { 'sidecar.istio.io/status': '{}' } }), amb), false, 'sidecar');
  t.equal(
    isMeshPod({ name: 'z', namespace: 'istio-system', node: 'n', labels: { app: 'ztunnel' } }, amb),
    false,
    'ztunnel itself',
  );
});

t.test('address plan stays in 198.18.0.0/15 and veth names fit IFNAMSIZ', async (t) => {
  t.equal(nodeWireIp(3), '198.18.0.3');
  t.equal(podIp(2, 0), '198.19.2.2');
  const v = hostVethName('some-long-namespace-name', 'a-very-long-pod-name-indeed');
  t.match(v, /^cali[0-9a-f]{11}$/);
  t.ok(v.length <= 15);
});

t.test('prefixes always carry the ambtb family', async (t) => {
  t.equal(effectivePrefix('ab12cd'), 'ambtbab12cd');
  t.equal(effectivePrefix('ambtbxyz'), 'ambtbxyz');
  t.match(effectivePrefix(undefined), /^ambtb[0-9a-z]{4}$/);
  t.throws(() => effectivePrefix('Bad-Prefix'), RangeError);
});

t.test('spec files: YAML in, checked', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ambtb-spec-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'spec.yaml');
  writeFileSync(
    file,
    'nodes: [{name: n1, ztunnel: false}]\nnamespaces: [{name: a, labels: {istio.io/dataplane-mode: ambient}}]\npods:\n  - {name: p1, namespace: a, node: n1, hostNetwork: true}\n',
  );
  const s = readSpecFile(file);
  t.same(s.nodes, [{ name: 'n1', ztunnel: false }]);
  t.equal(s.pods[0]?.hostNetwork, true);
  t.throws(
    () =>
      specFromObject({ nodes: [{ name: 'n1' }], pods: [{ name: 'p', namespace: 'a', node: 'n1', labels: { x: 1 } }] }),
    /labels must map strings/,
  );
  t.throws(() => specFromObject([1]), /must be a mapping/);
  t.throws(() => readSpecFile(join(dir, 'missing.yaml')), /cannot read/);
  writeFileSync(file, 'nodes: [');
  t.throws(() => readSpecFile(file), /not YAML or JSON/);
});

t.test('IPv6: pods ask for their address families; addresses from fd00:a3bf::/32, IPv4 first', async (t) => {
  const spec = specFromObject({
    nodes: [{ name: 'n1' }],
    namespaces: [{ name: 'a' }],
    pods: [
      { name: 'dual', namespace: 'a', node: 'n1', ipFamilies: ['IPv4', 'IPv6'] },
      { name: 'six', namespace: 'a', node: 'n1', ipFamilies: ['IPv6'] },
    ],
  });
  const info = plan(spec, 'ambtbspec6', 'inpod', '/sys/fs/cgroup');
  const ips = (name: string): readonly string[] => info.pods.find((p) => p.name === name)!.ips;
  t.same(ips('dual'), [podIp(1, 1), podIp6(1, 1)], 'dual-stack: IPv4 first, as Kubernetes lists podIPs');
  t.equal(podIp6(1, 1), 'fd00:a3bf:1:1::3', 'the IPv6 address ends as the IPv4 one does');
  t.same(ips('six'), [podIp6(1, 2)]);
  t.equal(info.pods.find((p) => p.name === 'six')!.ip, podIp6(1, 2), "an IPv6-only pod's ip is its IPv6 address");
  t.same(ips('ztunnel-n1'), [podIp(1, 0)], 'IPv4 by default');
  const onePod = (ipFamilies: unknown): Record<string, unknown> => ({
    nodes: [{ name: 'n1' }],
    namespaces: [{ name: 'a' }],
    pods: [{ name: 'p', namespace: 'a', node: 'n1', ipFamilies }],
  });
  t.throws(() => specFromObject(onePod(['IPv5'])), /ipFamilies\[0\] must be "IPv4" or "IPv6"/);
  t.throws(() => specFromObject(onePod(['IPv6', 'IPv6'])), /ipFamilies/, 'each family once');
});
