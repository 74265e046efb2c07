// DNS capture against a real resolver: one inpod node, `ambpf run --mode inpod` serving ZDS, the ztunnel
// stand-in (its DNS proxy on localhost:15053 in every mesh pod) and dnsmasq as the cluster's resolver
// in a netns of its own (src/testbed/dns-upstream.ts). The resolver answers every cluster name with a
// Service VIP (CLUSTER_VIP); ztunnel's proxy answers the same names with the pods' own addresses, so
// an answer says who gave it, and the resolver's query log says which sockets reached it.
// glibc (`getent hosts`) runs in the pods under `ip netns exec`, which bind-mounts the pod's
// /etc/netns/<netns>/resolv.conf for it; test/dns/fixtures/dnsq.py asks with raw sockets where the
// source of an answer and the socket it reached must be seen.
import t from 'tap';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Testbed, TestbedPod } from '../../src/testbed/index.ts';
import { startZtunnels } from '../../src/testbed/ztunnel/launch.ts';
import {
  CLUSTER_VIP,
  podResolvConf,
  podResolverArgv,
  startDnsUpstream,
  type DnsUpstream,
} from '../../src/testbed/dns-upstream.ts';
import type { StateFile } from '../../src/state/state-file.ts';
import { DNS_CAPTURE_ANNOTATION } from '../../src/state/desired.ts';
import { ZTUNNEL_MARK } from '../../src/bpf/schema.ts';
import { startLoader, waitReady, editPodsFile, zdsSocketPath, type Loader } from '../helpers/loader.ts';
import { eventually } from '../helpers/wait.ts';
import { DNSQ, type DnsqAnswer, type DnsqQuery, type DnsqReuse } from './dnsq.ts';
import { oneNodeInpodTestbed } from '../testbed/ztunnel-fixture.ts';

const ZONE_NAME = 'web.mesh.svc.cluster.local';
/** A name only the resolver knows: a mesh pod gets it through ztunnel's forwarded query. */
const OUTSIDE = 'outside.test';
const OUTSIDE_IP = '198.18.77.7';
const OUTSIDE6 = 'outside6.test';

/** One query's answer with the socket's peer (connected) or error beside it. */
type Reply = Partial<DnsqAnswer> & Pick<DnsqQuery, 'peer' | 'error'>;

let tb: Testbed;
let loader: Loader;
let upstream: DnsUpstream;
let podsFile: string;
let web: string;

type Over = 'udp' | 'tcp';
type Family = 'v4' | 'v6';

/** resolv.conf naming the resolver by its v4 or v6 address; use-vc: glibc asks over TCP. */
function resolvConf(family: Family, over: Over): string {
  const server = family === 'v4' ? upstream.ip : upstream.ip6;
  return `nameserver ${server}\noptions timeout:2 attempts:2${over === 'tcp' ? ' use-vc' : ''}\n`;
}

/** `getent ahostsv4|ahostsv6 NAME` in a pod with its resolv.conf naming the resolver: the first address. */
async function getent(
  pod: TestbedPod,
  name: string,
  over: Over,
  family: Family = 'v4',
  db = 'ahostsv4',
): Promise<string> {
  return getentWith(pod, resolvConf(family, over), name, db);
}

async function getentWith(pod: TestbedPod, conf: string, name: string, db = 'ahostsv4'): Promise<string> {
  podResolvConf(pod, conf);
  const r = await tb.exec(pod, podResolverArgv(pod, ['getent', db, name]), { check: false, timeoutMs: 20_000 });
  return r.stdout.trim().split(/\s+/)[0] ?? '';
}

async function dnsq(pod: TestbedPod, args: string[], timeoutMs = 20_000): Promise<string> {
  const r = await tb.exec(pod, ['python3', DNSQ, ...args], { timeoutMs });
  return r.stdout.trim();
}
/** One query; its answer's fields with the socket's peer (connected) or error beside them. */
const query = async (pod: TestbedPod, args: string[]): Promise<Reply> => {
  const out = JSON.parse(await dnsq(pod, ['query', ...args])) as DnsqQuery;
  return { ...out.answers[0], ...(out.peer ? { peer: out.peer } : {}), ...(out.error ? { error: out.error } : {}) };
};
const reuse = async (pod: TestbedPod, args: string[]): Promise<DnsqReuse> =>
  JSON.parse(await dnsq(pod, ['reuse', ...args], 50_000)) as DnsqReuse;

function acked(): boolean {
  try {
    const state = JSON.parse(readFileSync(loader.stateFile, 'utf8')) as StateFile;
    const mesh = tb.info.pods.filter((p) => p.mesh).map((p) => p.name);
    return mesh.every((name) => state.pods.find((p) => p.name === name)?.zds?.state === 'acked');
  } catch {
    return false;
  }
}

function annotate(pod: string, value: string | undefined): void {
  editPodsFile(podsFile, (list) => {
    const item = list.items.find((i) => i.kind === 'Pod' && i.metadata.name === pod);
    if (!item) throw new Error(`no pod ${pod} in the pods file`);
    const annotations = { ...(item.metadata.annotations ?? {}) };
    if (value === undefined) delete annotations[DNS_CAPTURE_ANNOTATION];
    else annotations[DNS_CAPTURE_ANNOTATION] = value;
    item.metadata.annotations = annotations;
  });
}

t.before(async () => {
  tb = await oneNodeInpodTestbed();
  const node = tb.node('node1');
  upstream = await startDnsUpstream(tb, { records: { [OUTSIDE]: [OUTSIDE_IP], [OUTSIDE6]: ['fd00:a3bf::77'] } });
  podsFile = join(tb.info.runDir, 'pods.json');
  tb.writePodsList(podsFile);
  loader = startLoader(tb, node, podsFile, [], true);
  await waitReady(tb, loader);
  await startZtunnels(tb, { zdsSocket: () => zdsSocketPath(tb, node), dnsUpstream: `${upstream.ip}:53` });
  await eventually(acked, 20_000, 'every mesh pod acked by ztunnel');
  web = tb.pod('mesh/web').ip;
});
t.teardown(async () => {
  loader?.proc.kill('SIGTERM');
  await loader?.proc.exited;
  await upstream?.stop();
  await tb?.down();
});

t.test('the resolver itself answers the cluster zone with the Service VIP', async (t) => {
  const r = await query(tb.pod('plain/client'), [upstream.ip, ZONE_NAME]);
  t.same(r.ips, [CLUSTER_VIP], `dnsmasq: ${JSON.stringify(r)}`);
  t.same(r.from, { ip: upstream.ip, port: 53 });
});

t.test("a mesh pod resolves a testbed name through ztunnel's DNS proxy (glibc, UDP and TCP, v4 and v6)", async (t) => {
  const app = tb.pod('mesh/app');
  // The first lookup may race the pass that registers ztunnel's listeners: poll it.
  await eventually(async () => (await getent(app, ZONE_NAME, 'udp')) === web, 15_000, 'the zone answer over UDP');
  t.pass("UDP: the pod's address from the proxy, accepted by glibc (its source is the resolver asked)");
  t.equal(await getent(app, ZONE_NAME, 'tcp'), web, 'TCP (use-vc)');
  // A v6 resolver address: captured to [::1]:15053 (the pod has no IPv6 route: only the proxy can answer).
  t.equal(await getent(app, ZONE_NAME, 'udp', 'v6'), web, "UDP to the resolver's IPv6 address");
  t.equal(await getent(app, ZONE_NAME, 'tcp', 'v6'), web, "TCP to the resolver's IPv6 address");
  t.notOk(upstream.queriesFor(ZONE_NAME).includes(app.ip), 'none of these reached the resolver');
});

t.test(
  'a Kubernetes resolv.conf (search domains, ndots:5): short names answered as ztunnel answers them',
  async (t) => {
    const conf = `nameserver ${upstream.ip}\nsearch mesh.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5 timeout:2 attempts:2\n`;
    // glibc tries the search domains first: web.mesh.svc.cluster.local.mesh.svc.cluster.local gets a
    // CNAME to web.mesh.svc.cluster.local from ztunnel, which strips the search domain it recognises.
    for (const name of ['web', 'web.mesh', 'web.mesh.svc', ZONE_NAME])
      t.equal(await getentWith(tb.pod('mesh/app'), conf, name), web, name);
    t.equal(
      await getentWith(tb.pod('plain/client'), conf, 'web'),
      CLUSTER_VIP,
      "outside the mesh: the resolver's answer",
    );
  },
);

t.test("the answer's source is the server the pod asked, for every address of the resolver", async (t) => {
  const app = tb.pod('mesh/app');
  for (const ip of upstream.ips) {
    const r = await query(app, [ip, ZONE_NAME]);
    t.same(r.ips, [web], `unconnected UDP to ${ip}: the proxy's answer (${JSON.stringify(r)})`);
    t.equal(r.aa, true, 'authoritative, as ztunnel answers its own names');
    t.same(r.from, { ip, port: 53 }, 'recvfrom shows the server asked');
    const c = await query(app, [ip, ZONE_NAME, '--connect']);
    t.same(c.peer, { ip, port: 53 }, 'connected UDP: getpeername shows the server');
    t.same(c.from, { ip, port: 53 }, 'and so does recvfrom');
    t.same(c.ips, [web]);
  }
  const v6 = await query(app, [upstream.ip6, ZONE_NAME, '--type', 'AAAA']);
  t.equal(v6.rcode, 0, 'IPv6: NOERROR (no AAAA for a v4-only pod: NODATA)');
  t.same(v6.from, { ip: upstream.ip6, port: 53 }, 'IPv6: recvfrom shows the server asked');
  const mapped = await query(app, [upstream.ip, ZONE_NAME, '--v6']);
  t.same(mapped.ips, [web], 'a dual-stack socket asking a v4 server (v4-mapped)');
  t.same(mapped.from, { ip: upstream.ip, port: 53 });
});

t.test('a name outside the zone: ztunnel forwards it from the pod, marked, and it is not looped back', async (t) => {
  const app = tb.pod('mesh/app');
  for (const [over, family] of [
    ['udp', 'v4'],
    ['tcp', 'v4'],
    ['udp', 'v6'],
    ['tcp', 'v6'],
  ] as const) {
    t.equal(
      await getent(app, OUTSIDE, over, family),
      OUTSIDE_IP,
      `${over} ${family}: the resolver's answer through the proxy`,
    );
  }
  t.equal(await getent(app, OUTSIDE6, 'udp', 'v4', 'ahostsv6'), 'fd00:a3bf::77', 'AAAA forwarded too');
  // Four lookups, each an A query (ahostsv4) sent by the proxy from a socket in the pod's netns: had
  // the capture taken it back to the proxy, it would never have reached the resolver at all.
  const sources = upstream.queriesFor(OUTSIDE);
  t.ok(sources.length >= 4, `the resolver saw the forwarded queries (${sources.length})`);
  t.same([...new Set(sources)], [app.ip], "from the pod's address (ztunnel's socket in the pod's netns)");
  const marked = await query(app, [upstream.ip, ZONE_NAME, '--mark', String(ZTUNNEL_MARK)]);
  t.same(marked.ips, [CLUSTER_VIP], 'a socket marked 0x539 in a mesh pod reaches the resolver itself');
  const markedTcp = await query(app, [upstream.ip, ZONE_NAME, '--tcp', '--mark', String(ZTUNNEL_MARK)]);
  t.same(markedTcp.ips, [CLUSTER_VIP], 'over TCP too');
});

t.test('a pod outside the mesh asks the resolver itself', async (t) => {
  const client = tb.pod('plain/client');
  t.equal(await getent(client, ZONE_NAME, 'udp'), CLUSTER_VIP, 'UDP');
  t.equal(await getent(client, ZONE_NAME, 'tcp'), CLUSTER_VIP, 'TCP');
  t.ok(upstream.queriesFor(ZONE_NAME).includes(client.ip), "the resolver logged the pod's own queries");
});

t.test('the annotation "false" leaves a mesh pod\'s DNS alone; removing it captures again', async (t) => {
  const app = tb.pod('mesh/app');
  annotate('app', 'false');
  try {
    await eventually(
      async () => (await getent(app, ZONE_NAME, 'udp')) === CLUSTER_VIP,
      20_000,
      "app's DNS to go to the resolver",
    );
    t.equal(await getent(app, ZONE_NAME, 'tcp'), CLUSTER_VIP, 'over TCP too');
    t.ok(upstream.queriesFor(ZONE_NAME).includes(app.ip), "the resolver logged the pod's own queries");
    t.equal(await getent(tb.pod('mesh/web'), ZONE_NAME, 'udp'), web, 'the other mesh pod is still captured');
  } finally {
    annotate('app', undefined);
  }
  await eventually(async () => (await getent(app, ZONE_NAME, 'udp')) === web, 20_000, "app's DNS to be captured again");
  t.pass('captured again');
});

t.test('10,000 queries from reused source ports, two pods at once: none reaches the wrong socket', async (t) => {
  const app = tb.pod('mesh/app');
  const webPod = tb.pod('mesh/web');
  // Each pod binds the same 16 ports in turn (~80 times each); a socket sends 4 queries to random
  // addresses of the resolver before it reads. Meanwhile ztunnel-marked sockets in pod app ask the
  // resolver itself from the next 16 ports.
  const common = ['--ports', '40000-40015', '--queries', '5000', '--per-socket', '4'];
  const started = Date.now();
  const [ra, rw, rz] = await Promise.all([
    reuse(app, [upstream.ips.join(','), ZONE_NAME, ...common, '--seed', '1']),
    reuse(webPod, [upstream.ips.join(','), ZONE_NAME, ...common, '--seed', '2']),
    reuse(app, [
      upstream.ips.join(','),
      ZONE_NAME,
      '--ports',
      '40016-40031',
      '--queries',
      '400',
      '--per-socket',
      '4',
      '--seed',
      '3',
      '--mark',
      String(ZTUNNEL_MARK),
    ]),
  ]);
  const seconds = (Date.now() - started) / 1000;
  t.comment(
    `10,000 captured + 400 marked queries in ${seconds.toFixed(1)} s (app ${ra.seconds} s, web ${rw.seconds} s)`,
  );
  for (const [name, r] of [
    ['app', ra],
    ['web', rw],
  ] as const) {
    t.equal(r.queries, 5000, `${name}: 5,000 queries`);
    t.equal(r.wrong_socket, 0, `${name}: no answer reached another socket (${JSON.stringify(r.examples)})`);
    t.equal(r.wrong_server, 0, `${name}: every answer shows its own query's server (${JSON.stringify(r.examples)})`);
    t.equal(r.errors, 0, `${name}: every port could be bound`);
    t.equal(r.answers, 5000, `${name}: every query answered (lost ${r.lost})`);
    t.same(r.ips, { [web]: r.answers }, `${name}: all answered by ztunnel's proxy`);
  }
  t.equal(rz.answers, 400, 'the marked queries all answered');
  t.equal(rz.wrong_server + rz.wrong_socket, 0, 'by the server each was sent to, on its own socket');
  t.same(rz.ips, { [CLUSTER_VIP]: 400 }, 'by the resolver itself: none looped back to the proxy');
  t.ok(seconds < 40, `bounded in time (${seconds.toFixed(1)} s)`);
});

t.test("IPv6: 2,000 queries from reused ports to the resolver's v6 address", async (t) => {
  const app = tb.pod('mesh/app');
  const r = await reuse(app, [
    upstream.ip6,
    ZONE_NAME,
    '--ports',
    '40100-40107',
    '--queries',
    '2000',
    '--per-socket',
    '4',
    '--seed',
    '4',
  ]);
  t.equal(r.wrong_socket, 0, `no answer reached another socket (${JSON.stringify(r.examples)})`);
  t.equal(r.wrong_server, 0, 'every answer from the v6 server asked');
  t.equal(r.answers, 2000, `every query answered (lost ${r.lost}) in ${r.seconds} s`);
  t.same(r.ips, { [web]: 2000 }, "by ztunnel's proxy on [::1]:15053");
});
