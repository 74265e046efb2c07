// DNS capture end to end: one inpod node, `ambpf run --mode inpod` serving ZDS, the ztunnel stand-in
// (its DNS proxy on localhost:15053 in every pod it serves, the testbed zone, everything else forwarded
// from a socket marked 0x539) and a resolver on the node (port 53, UDP and TCP) that answers every name
// with one address. glibc's resolver (`getent hosts`) in the pods, with a resolv.conf naming that
// resolver: a mesh pod gets the zone's answers over UDP and TCP (so the answers came from the address
// it asked, or glibc would have dropped them), and names outside the zone through the stand-in's
// upstream query, which is not captured again; a pod outside the mesh and a mesh pod annotated
// `ambient.istio.io/dns-capture: "false"` get the resolver's own answer.
import t from 'tap';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Testbed } from '../../src/testbed/index.ts';
import { startZtunnels } from '../../src/testbed/ztunnel/launch.ts';
import type { StateFile } from '../../src/state/state-file.ts';
import { DNS_CAPTURE_ANNOTATION } from '../../src/state/desired.ts';
import { startLoader, waitReady, editPodsFile, zdsSocketPath, type Loader } from '../helpers/loader.ts';
import { eventually } from '../helpers/wait.ts';
import { oneNodeInpodTestbed } from '../testbed/ztunnel-fixture.ts';

/** What the node's resolver answers for every A query: an answer with it did not come from the zone. */
const UPSTREAM_ANSWER = '198.18.99.99';
const ZONE_NAME = 'web.mesh.svc.cluster.local';

let tb: Testbed;
let loader: Loader;
let podsFile: string;
const conf = { udp: '', tcp: '' };

/** `getent hosts NAME` in a pod, with resolv.conf bind-mounted in a mount namespace of its own. */
async function getent(pod: string, name: string, over: 'udp' | 'tcp'): Promise<string> {
  const script = 'mount --bind "$0" /etc/resolv.conf && exec getent hosts "$1"';
  const r = await tb.exec(tb.pod(pod), ['unshare', '-m', 'sh', '-c', script, conf[over], name], { check: false, timeoutMs: 20_000 });
  return r.stdout.trim().split(/\s+/)[0] ?? '';
}

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
  podsFile = join(tb.info.runDir, 'pods.json');
  tb.writePodsList(podsFile);
  loader = startLoader(tb, node, podsFile, [], true);
  await waitReady(tb, loader);

  // The cluster's resolver, on the node's address, port 53 (so a capture that missed would reach it).
  const upstream = `
import dgram from 'node:dgram'; import net from 'node:net'; import dnsPacket from 'dns-packet';
const answer = (q) => ({ id: q.id, type: 'response', flags: dnsPacket.RECURSION_AVAILABLE, questions: q.questions,
  answers: q.questions.filter((x) => x.type === 'A').map((x) => ({ type: 'A', name: x.name, ttl: 5, data: '${UPSTREAM_ANSWER}' })) });
const u = dgram.createSocket('udp4');
u.on('message', (m, r) => u.send(dnsPacket.encode(answer(dnsPacket.decode(m))), r.port, r.address));
u.bind(53, '${node.wireIp}');
net.createServer((s) => s.once('data', (b) => s.end(dnsPacket.streamEncode(answer(dnsPacket.streamDecode(b))))))
  .listen(53, '${node.wireIp}');
`;
  tb.spawn('node1', [process.execPath, '--input-type=module', '-e', upstream]);
  await eventually(async () => {
    const r = await tb.exec('node1', ['ss', '-Hln', 'sport = :53'], { check: false });
    return r.stdout.split('\n').filter((l) => l.includes(node.wireIp)).length >= 2;
  }, 10_000, 'the node\'s resolver on UDP and TCP port 53');

  conf.udp = join(tb.info.runDir, 'resolv-udp.conf');
  conf.tcp = join(tb.info.runDir, 'resolv-tcp.conf');
  writeFileSync(conf.udp, `nameserver ${node.wireIp}\noptions timeout:2 attempts:2\n`);
  writeFileSync(conf.tcp, `nameserver ${node.wireIp}\noptions timeout:2 attempts:2 use-vc\n`);

  await startZtunnels(tb, { zdsSocket: () => zdsSocketPath(tb, node), dnsUpstream: `${node.wireIp}:53` });
  await eventually(acked, 20_000, 'every mesh pod acked by ztunnel');
});
t.teardown(async () => {
  loader?.proc.kill('SIGTERM');
  await loader?.proc.exited;
  await tb?.down();
});

t.test('a mesh pod resolves a testbed name through ztunnel\'s DNS proxy, over UDP and TCP', async (t) => {
  const web = tb.pod('mesh/web').ip;
  // The first lookup may race the pass that registers ztunnel's listeners: poll it.
  t.equal(await eventually(async () => ((await getent('mesh/app', ZONE_NAME, 'udp')) === web ? web : ''), 15_000, 'the zone answer'), web,
    'UDP: the zone\'s answer, accepted by glibc (its source is the resolver asked)');
  t.equal(await getent('mesh/app', ZONE_NAME, 'tcp'), web, 'TCP (use-vc): the zone\'s answer');
});

t.test('a name outside the zone: forwarded by ztunnel from a marked socket, not captured again', async (t) => {
  t.equal(await getent('mesh/app', 'outside.example', 'udp'), UPSTREAM_ANSWER, 'UDP');
  t.equal(await getent('mesh/app', 'outside.example', 'tcp'), UPSTREAM_ANSWER, 'TCP');
});

t.test('a pod outside the mesh asks the resolver itself', async (t) => {
  t.equal(await getent('plain/client', ZONE_NAME, 'udp'), UPSTREAM_ANSWER);
  t.equal(await getent('plain/client', ZONE_NAME, 'tcp'), UPSTREAM_ANSWER);
});

t.test('the annotation "false" leaves a mesh pod\'s DNS alone; removing it captures again', async (t) => {
  const web = tb.pod('mesh/web').ip;
  annotate('app', 'false');
  await eventually(async () => (await getent('mesh/app', ZONE_NAME, 'udp')) === UPSTREAM_ANSWER, 20_000, 'app\'s DNS to go to the resolver');
  t.equal(await getent('mesh/app', ZONE_NAME, 'tcp'), UPSTREAM_ANSWER, 'over TCP too');
  t.equal(await getent('mesh/web', ZONE_NAME, 'udp'), web, 'the other mesh pod is still captured');
  annotate('app', undefined);
  await eventually(async () => (await getent('mesh/app', ZONE_NAME, 'udp')) === web, 20_000, 'app\'s DNS to be captured again');
  t.pass('captured again');
});
