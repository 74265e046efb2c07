// IPv6 in the node topology, end to end: two nodes in netns whose ztunnel pods are dual-stack, a
// dual-stack and an IPv6-only mesh pod per node (fd00:a3bf::/32), one `ambpf run --mode node` per node
// fed from a pods file, the node stand-in (one process in the ztunnel pod, [::] listeners), real curl.
// The IPv6 twin of the inbound cases of node-e2e.test.ts: what reaches a mesh pod over IPv6 goes
// through ztunnel's inbound with the original destination kept, the node's own connections do not,
// and without ztunnel nothing reaches the app.
import t from 'tap';
import { join } from 'node:path';
import { startTestbed, type Testbed } from '../../src/testbed/index.ts';
import type { TestbedSpec } from '../../src/testbed/spec.ts';
import { curl, startHttpServer } from '../../src/testbed/helpers.ts';
import { startStandIns, stopStandIns } from '../../src/testbed/ztunnel/launch.ts';
import { testPrefix } from '../helpers/prefix.ts';
import { startLoader, waitReady, type Loader } from '../helpers/loader.ts';
import { tracedCurl } from '../helpers/standin.ts';
import { eventually } from '../helpers/wait.ts';
import { hostPort, literal, podIp4, podIp6 } from '../helpers/addr.ts';

const PORT = 8080;
const NODES = ['node1', 'node2'] as const;
const DUAL = ['IPv4', 'IPv6'] as const;
const SPEC: TestbedSpec = {
  nodes: NODES.map((name) => ({ name, ztunnel: true, ztunnelIpFamilies: DUAL })),
  namespaces: [
    { name: 'mesh', labels: { 'istio.io/dataplane-mode': 'ambient' } },
    { name: 'plain', labels: {} },
  ],
  pods: NODES.flatMap((node) => [
    { name: `dual-${node}`, namespace: 'mesh', node, ipFamilies: DUAL },
    { name: `v6-${node}`, namespace: 'mesh', node, ipFamilies: ['IPv6'] as const },
    { name: `client-${node}`, namespace: 'plain', node, ipFamilies: DUAL },
  ]),
};

let tb: Testbed;
const loaders: Loader[] = [];

const ip4 = (pod: string): string => podIp4(tb, pod);
const ip6 = (pod: string): string => podIp6(tb, pod);

t.before(async () => {
  tb = await startTestbed(SPEC, { topology: 'node', prefix: testPrefix() });
  const podsFile = join(tb.info.runDir, 'pods.json');
  tb.writePodsList(podsFile);
  for (const node of tb.info.nodes) loaders.push(startLoader(tb, node, podsFile));
  await Promise.all(loaders.map((l) => waitReady(tb, l)));
  for (const p of tb.info.pods.filter((x) => !x.isZtunnel)) await startHttpServer(tb, p.name, PORT);
});
t.teardown(async () => {
  for (const l of loaders) l.proc.kill('SIGTERM');
  await Promise.all(loaders.map((l) => l.proc.exited));
  await tb?.down();
});

t.test('non-mesh -> mesh over IPv6: steered to 15006, the pod IPv6 as the local address', async (t) => {
  for (const [from, to] of [
    ['client-node1', 'v6-node1'],
    ['client-node2', 'v6-node1'],
    ['client-node2', 'dual-node1'],
  ] as const) {
    const r = await tracedCurl(tb, from, ip6(to), PORT, ['node1'], { node1: ['inbound-plaintext'] });
    const inb = r.lines['node1']?.find((e) => e.direction === 'inbound-plaintext');
    t.ok(inb, `ztunnel on node1 captured ${from} -> ${to}`);
    t.equal(inb?.source.replace(/\]:\d+$/, '').slice(1), ip6(from), "ztunnel sees the client's IPv6 address");
    t.equal(inb?.originalDst, hostPort(ip6(to), PORT), 'the original destination is kept');
    t.equal(inb?.dstFrom, 'local-address', "learned from the accepted socket's local address (sk_lookup)");
    t.match(r.body, literal(`hello from ${to} `), 'the app answered through ztunnel');
  }
});

t.test('one dual-stack pod: IPv4 and IPv6 inbound each through ztunnel', async (t) => {
  for (const ip of [ip4('dual-node2'), ip6('dual-node2')]) {
    const r = await tracedCurl(tb, 'client-node1', ip, PORT, ['node2'], { node2: ['inbound-plaintext'] });
    const inb = r.lines['node2']?.find((e) => e.direction === 'inbound-plaintext');
    t.equal(inb?.originalDst, hostPort(ip, PORT), `${ip}: captured with its original destination`);
    t.match(r.body, /hello from dual-node2 /);
  }
});

t.test('mesh -> mesh over IPv6: outbound to ztunnel, HBONE into the other node over IPv6', async (t) => {
  const r = await tracedCurl(tb, 'v6-node1', ip6('dual-node2'), PORT, NODES, {
    node1: ['outbound'],
    node2: ['inbound-hbone'],
  });
  const out = r.lines['node1']?.find((e) => e.direction === 'outbound');
  t.equal(out?.originalDst, hostPort(ip6('dual-node2'), PORT));
  t.equal(out?.dstFrom, 'IP6T_SO_ORIGINAL_DST');
  t.equal(out?.upstream, hostPort(ip6('dual-node2'), 15008), "HBONE to the pod's IPv6 address, steered at node2");
  t.equal(r.lines['node2']?.find((e) => e.direction === 'inbound-hbone')?.result, 'ok');
  t.match(r.body, /hello from dual-node2 /);
});

t.test('mesh -> mesh over IPv6 on one node: outbound, then HBONE to our own 15008', async (t) => {
  const r = await tracedCurl(tb, 'v6-node1', ip6('dual-node1'), PORT, ['node1'], {
    node1: ['outbound', 'inbound-hbone'],
  });
  t.equal(r.lines['node1']?.find((e) => e.direction === 'outbound')?.dstFrom, 'IP6T_SO_ORIGINAL_DST');
  const inb = r.lines['node1']?.find((e) => e.direction === 'inbound-hbone');
  t.equal(inb?.originalDst, hostPort(ip6('dual-node1'), PORT), 'the HBONE authority is the original');
  t.match(r.body, literal(`hello from dual-node1 peer=`), 'answered by the app');
});

t.test("the node's own IPv6 connection (kubelet's probe) reaches the app directly", async (t) => {
  for (const pod of ['dual-node1', 'v6-node1']) {
    const r = await tracedCurl(tb, 'node1', ip6(pod), PORT, ['node1']);
    t.same(r.lines['node1'], [], `${pod}: ztunnel saw nothing`);
    t.match(
      r.body,
      literal(`hello from ${pod} peer=${tb.node('node1').wireIp6} `),
      `${pod}: the app answered the node`,
    );
  }
});

t.test('fail closed: with ztunnel gone, IPv6 to a mesh pod does not reach the app; back: served', async (t) => {
  await stopStandIns(tb);
  for (const pod of ['v6-node1', 'dual-node1']) {
    const r = await curl(tb, 'client-node2', ip6(pod), PORT, { timeoutMs: 3000 });
    t.not(r.exitCode, 0, `${pod}: the request failed (curl ${r.exitCode}), not answered by the app`);
    t.notMatch(r.body, /hello from/, `${pod}: the app never answered`);
  }
  await startStandIns(tb);
  await eventually(
    async () => (await curl(tb, 'client-node2', ip6('v6-node1'), PORT, { timeoutMs: 2000 })).exitCode === 0,
    15_000,
    'IPv6 inbound through the restarted ztunnel',
  );
  const r = await tracedCurl(tb, 'client-node2', ip6('v6-node1'), PORT, ['node1'], { node1: ['inbound-plaintext'] });
  t.ok(
    r.lines['node1']?.some((e) => e.direction === 'inbound-plaintext'),
    'captured by the new ztunnel',
  );
});
