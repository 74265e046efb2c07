// The testbed itself: nodes, pods, routing, cgroups and pause processes as the loader will discover
// them, exec/spawn placement, the pods List, and a clean down().
import t from 'tap';
import { readFileSync, readlinkSync, statSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { startTestbed, defaultSpec, findPrefixes } from '../../src/testbed/index.ts';
import { curl, startHttpServer } from '../../src/testbed/helpers.ts';
import { testPrefix } from '../helpers/prefix.ts';
import { snapshot } from './leak-check.ts';

const prefix = testPrefix();
const before = await snapshot(prefix);
const tb = await startTestbed(defaultSpec(), { topology: 'node', prefix, standIn: false });
t.teardown(() => tb.down());

t.test('plan: names, addresses and cgroups follow the contract', async (t) => {
  t.equal(tb.prefix, `ambtb${prefix}`);
  t.same(
    tb.nodes.map((n) => [n.name, n.wireIp, n.podCidr]),
    [
      ['node1', '198.18.0.1', '198.19.1.0/24'],
      ['node2', '198.18.0.2', '198.19.2.0/24'],
    ],
  );
  t.equal(tb.pods.length, 8, 'two ztunnel pods + 3 pods per node');
  t.same(
    tb.ztunnels.map((z) => [z.node, z.pod, z.ip]),
    [
      ['node1', 'ztunnel-node1', '198.19.1.2'],
      ['node2', 'ztunnel-node2', '198.19.2.2'],
    ],
  );
  t.same(
    tb.pods
      .filter((p) => p.mesh)
      .map((p) => p.name)
      .sort(),
    ['app1-node1', 'app1-node2', 'app2-node1', 'app2-node2'],
  );
  for (const n of tb.nodes) t.ok(existsSync(n.netnsPath), `${n.name} netns exists`);
  t.equal(tb.node('node1').bpffsDir, `/sys/fs/bpf/${tb.prefix}-node1`);
  t.ok(findPrefixes().includes(tb.prefix), 'down --all would find this testbed');
});

t.test('each pod has a pause process in its netns and in kubepods/besteffort/pod<uid>/<cid>', async (t) => {
  for (const p of tb.pods) {
    const cg = readFileSync(`/proc/${p.pausePid}/cgroup`, 'utf8');
    t.match(cg, `/kubepods/besteffort/pod${p.uid}/${p.containerId}`, `${p.name} cgroup`);
    t.equal(readlinkSync(`/proc/${p.pausePid}/ns/net`), `net:[${statSync(p.netnsPath).ino}]`, `${p.name} netns`);
    t.ok(p.containerCgroupPath.startsWith(tb.node(p.node).kubepodsCgroup), 'under the node kubepods cgroup');
  }
});

t.test('host veths: /32 route and ifindex on the node', async (t) => {
  const p = tb.pod('app1-node1');
  const r = await tb.exec('node1', ['ip', '-j', 'link', 'show', 'dev', p.hostIfname]);
  const [link] = JSON.parse(r.stdout) as { ifindex: number; address: string }[];
  t.equal(link?.ifindex, p.hostIfindex);
  const routes = await tb.exec('node1', ['ip', 'route', 'get', p.ip]);
  t.match(routes.stdout, `dev ${p.hostIfname}`);
  t.equal((await tb.exec(p, ['ip', '-o', '-4', 'addr', 'show', 'dev', 'eth0'])).stdout.includes(`${p.ip}/32`), true);
  t.match((await tb.exec(p, ['ip', 'link', 'show', 'eth0'])).stdout, `link/ether ${p.podMac} `);
  t.match(p.podMac, /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/);
});

t.test('exec runs in the pod netns and cgroup, and on the node in its system cgroup', async (t) => {
  const p = tb.pod('mesh/app2-node2');
  const r = await tb.exec(p, [
    'sh',
    '-c',
    'cat /proc/self/cgroup; readlink /proc/self/ns/net; ls /sys/fs/bpf >/dev/null && echo bpffs-visible',
  ]);
  t.match(r.stdout, `0::${p.containerCgroupPath.slice(tb.info.cgroupRoot.length)}\n`);
  t.match(r.stdout, `net:[${statSync(p.netnsPath).ino}]`);
  t.match(r.stdout, 'bpffs-visible', 'not ip netns exec: bpffs stays visible');
  const n = await tb.exec('node2', ['cat', '/proc/self/cgroup']);
  t.match(n.stdout, `0::${tb.node('node2').systemCgroup.slice(tb.info.cgroupRoot.length)}\n`);
  const failed = await tb.exec(p, ['false'], { check: false });
  t.equal(failed.code, 1);
  await t.rejects(tb.exec(p, ['false']), { name: 'TestbedCommandError' });
  t.throws(() => tb.pod('nope'), { name: 'TestbedLookupError' });
});

t.test('same-node and cross-node pod traffic works with source IPs kept', async (t) => {
  await startHttpServer(tb, 'app1-node2', 8080);
  await startHttpServer(tb, 'app2-node1', 8080);
  const cross = await curl(tb, 'client-node1', tb.pod('app1-node2').ip, 8080);
  t.equal(cross.status, 200, cross.stderr);
  t.equal(cross.body, `hello from app1-node2 peer=${tb.pod('client-node1').ip} path=/\n`);
  const same = await curl(tb, 'app1-node1', tb.pod('app2-node1').ip, 8080, { path: '/x' });
  t.equal(same.body, `hello from app2-node1 peer=${tb.pod('app1-node1').ip} path=/x\n`);
  const refused = await curl(tb, 'app1-node1', tb.pod('app2-node2').ip, 8080);
  t.equal(refused.exitCode, 7, 'no server there: connection refused, not a timeout');
});

t.test('pods List has the Kubernetes shape', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ambtb-list-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'pods.json');
  tb.writePodsList(file);
  const list = JSON.parse(readFileSync(file, 'utf8')) as {
    apiVersion: string;
    kind: string;
    items: Record<string, any>[];
  };
  t.equal(list.apiVersion, 'v1');
  t.equal(list.kind, 'List');
  const ns = list.items
    .filter((i) => i.kind === 'Namespace')
    .map((i) => i.metadata.name)
    .sort();
  t.same(ns, ['istio-system', 'mesh', 'plain']);
  const mesh = list.items.find((i) => i.kind === 'Namespace' && i.metadata.name === 'mesh');
  t.equal(mesh?.metadata.labels['istio.io/dataplane-mode'], 'ambient');
  const pod = list.items.find((i) => i.kind === 'Pod' && i.metadata.name === 'app1-node1');
  const real = tb.pod('app1-node1');
  t.match(pod, {
    apiVersion: 'v1',
    metadata: { namespace: 'mesh', uid: real.uid, labels: { app: 'app1' }, resourceVersion: String },
    spec: { nodeName: 'node1', hostNetwork: false, containers: [{ name: 'app' }] },
    status: { phase: 'Running', podIP: real.ip, podIPs: [{ ip: real.ip }] },
  });
  const zt = list.items.find((i) => i.kind === 'Pod' && i.metadata.name === 'ztunnel-node2');
  t.match(zt, { metadata: { namespace: 'istio-system', labels: { app: 'ztunnel' } } });
});

t.test('down() removes everything and is idempotent', async (t) => {
  const spawned = tb.spawn('client-node1', ['sleep', '1000']);
  await tb.down();
  await tb.down();
  t.notOk(
    existsSync(`/proc/${spawned.pid}/cgroup`) &&
      readFileSync(`/proc/${spawned.pid}/cgroup`, 'utf8').includes(tb.prefix),
    'spawned process is gone',
  );
  for (const p of tb.pods) t.notOk(existsSync(p.netnsPath), `${p.name} netns removed`);
  t.notOk(existsSync(tb.info.cgroupPath), 'cgroup subtree removed');
  t.notOk(existsSync(tb.info.runDir), 'run dir removed');
  t.same(await snapshot(prefix), before, 'netns, cgroups, root iptables, bpffs, ipsets as before');
});
