// A non-default spec: three nodes (one without ztunnel), a hostNetwork pod, routing across the bridge.
import t from 'tap';
import { readFileSync } from 'node:fs';
import { startTestbed, type TestbedSpec } from '../../src/testbed/index.ts';
import { curl, startHttpServer } from '../../src/testbed/helpers.ts';
import { testPrefix } from '../helpers/prefix.ts';
import { snapshot } from './leak-check.ts';

const spec: TestbedSpec = {
  nodes: [{ name: 'a' }, { name: 'b', ztunnel: false }, { name: 'c', ztunnel: false }],
  namespaces: [{ name: 'default' }, { name: 'kube-system' }],
  pods: [
    { name: 'web', namespace: 'default', node: 'c', annotations: { note: 'x' } },
    { name: 'agent', namespace: 'kube-system', node: 'b', hostNetwork: true, containers: ['agent', 'sidecar'] },
  ],
};
const prefix = testPrefix();
const before = await snapshot(prefix);
const tb = await startTestbed(spec, { topology: 'node', prefix });
t.teardown(() => tb.down());

t.test('only nodes that ask for it get a ztunnel pod', async (t) => {
  t.same(
    tb.ztunnels.map((z) => z.node),
    ['a'],
  );
  t.throws(() => tb.ztunnel('b'), { name: 'TestbedLookupError' });
});

t.test('a hostNetwork pod lives in its node netns with its own cgroup', async (t) => {
  const agent = tb.pod('agent');
  const b = tb.node('b');
  t.equal(agent.ip, b.wireIp);
  t.equal(agent.netnsPath, b.netnsPath);
  t.equal(agent.hostIfname, '');
  t.match(readFileSync(`/proc/${agent.pausePid}/cgroup`, 'utf8'), `pod${agent.uid}`);
  t.same(agent.containers, ['agent', 'sidecar']);
  t.equal(agent.mesh, false);
});

t.test('node c pods are reachable from a hostNetwork pod on node b over the wire', async (t) => {
  await startHttpServer(tb, 'web', 8080);
  const r = await curl(tb, 'agent', tb.pod('web').ip, 8080);
  t.equal(r.body, `hello from web peer=${tb.node('b').wireIp} path=/\n`, r.stderr);
  t.equal(tb.pod('web').ip, '198.19.3.2', 'first pod on node 3');
});

t.test('down leaves nothing', async (t) => {
  await tb.down();
  t.same(await snapshot(prefix), before);
});
