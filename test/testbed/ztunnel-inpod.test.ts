// The per-node inpod ztunnel stand-in (ztunnel >= 1.23) driven by a ZDS server from src/zds on a
// one-node inpod testbed: readiness, listeners and DNS inside the pod's netns, idempotent Add, Del,
// DNS answers and forwarding, the spoofed inbound leg, and mesh-to-mesh over HBONE between two pods.
import t from 'tap';
import { join } from 'node:path';
import { startHttpServer, curl } from '../../src/testbed/helpers.ts';
import { startZtunnels, ztunnelReadiness } from '../../src/testbed/ztunnel/launch.ts';
import { listenFd, closeFd } from '../../src/testbed/ztunnel/sockopt.ts';
import { withNetns } from '../../src/libbpf/netns.ts';
import { ZdsServer } from '../../src/zds/index.ts';
import { logger } from '../../src/log.ts';
import { iptables, oneNodeInpodTestbed, REDIRECT_INBOUND, until } from './ztunnel-fixture.ts';

const UPSTREAM_DNS_PORT = 5353;
/** What the fake upstream resolver answers for every name: proves a query was forwarded. */
const UPSTREAM_ANSWER = '198.18.99.99';

const tb = await oneNodeInpodTestbed();
t.teardown(() => tb.down());
const zdsPath = join(tb.info.runDir, 'zds', 'node1.sock');
let openSnapshot: () => void = () => undefined;
const snapshotGate = new Promise<void>((resolve) => (openSnapshot = resolve));
const server = await ZdsServer.listen({
  path: zdsPath,
  snapshot: () => snapshotGate.then(() => []),
  log: logger('test-zds'),
});
t.teardown(async () => {
  openSnapshot();
  await server.close();
});

const app = tb.pod('mesh/app');
const client = tb.pod('plain/client');
const zpod = tb.pod(`istio-system/${tb.ztunnel('node1').pod}`);
const node = tb.node('node1');
const info = { name: app.name, namespace: app.namespace, serviceAccount: 'default' };

// A stand-in resolver on the node: every A query answered with UPSTREAM_ANSWER, over UDP and TCP.
const upstreamScript = `
import dgram from 'node:dgram'; import net from 'node:net'; import dnsPacket from 'dns-packet';
const answer = (q) => ({ id: q.id, type: 'response', flags: dnsPacket.RECURSION_AVAILABLE, questions: q.questions,
  answers: [{ type: 'A', name: q.questions[0].name, ttl: 5, data: '${UPSTREAM_ANSWER}' }] });
const u = dgram.createSocket('udp4');
u.on('message', (m, r) => u.send(dnsPacket.encode(answer(dnsPacket.decode(m))), r.port, r.address));
u.bind(${UPSTREAM_DNS_PORT}, '${node.wireIp}');
net.createServer((s) => s.once('data', (b) => s.end(dnsPacket.streamEncode(answer(dnsPacket.streamDecode(b))))))
  .listen(${UPSTREAM_DNS_PORT}, '${node.wireIp}');
`;
tb.spawn('node1', [process.execPath, '--input-type=module', '-e', upstreamScript]);

const [zt] = await startZtunnels(tb, { zdsSocket: () => zdsPath, dnsUpstream: `${node.wireIp}:${UPSTREAM_DNS_PORT}` });
if (!zt) throw new Error('no stand-in started');

const readiness = (): Promise<number> => ztunnelReadiness(tb, zt);

/** `ss` lines of the pod's sockets on a port, with owner and mark (-p -e). */
async function ssLines(kind: '-Hltnpe' | '-Hulnpe', port: number): Promise<string[]> {
  const r = await tb.exec(app, ['ss', kind, `sport = :${port}`]);
  return r.stdout.split('\n').filter((l) => l.trim() !== '');
}

t.test('readiness is 500 until the snapshot is acked, then 200', async (t) => {
  t.equal(zt.state()?.connected, true, 'connected to the ZDS server');
  t.equal(await readiness(), 500, 'no snapshot yet: not ready (ztunnel answers 500 with what is pending)');
  const peer = new Promise((resolve) => server.once('peer', resolve));
  openSnapshot();
  await peer;
  t.equal(await until('readiness 200', readiness, (c) => c === 200), 200);
});

t.test(
  'Add: the three listeners and DNS open inside the pod, marked 0x539, reuseport, owned by the stand-in',
  async (t) => {
    await server.add(app.uid, info, app.netnsPath);
    for (const port of [15001, 15006, 15008]) {
      const lines = await ssLines('-Hltnpe', port);
      t.equal(lines.length, 1, `one listener on ${port}`);
      t.match(lines[0], `*:${port} `, 'wildcard dual-stack [::]');
      t.match(lines[0], `pid=${zt.pid},`, 'owned by the stand-in process');
      t.match(lines[0], 'fwmark:0x539', 'marked 1337');
    }
    for (const kind of ['-Hltnpe', '-Hulnpe'] as const) {
      const lines = await ssLines(kind, 15053);
      t.equal(lines.length, 2, `DNS ${kind === '-Hltnpe' ? 'TCP' : 'UDP'} on 127.0.0.1 and [::1]`);
      t.match(lines.join('\n'), '127.0.0.1:15053');
      t.match(lines.join('\n'), '[::1]:15053');
      for (const l of lines) t.match(l, 'fwmark:0x539');
    }
    // SO_REUSEPORT: another reuseport socket may join the group, a plain one may not.
    withNetns(app.netnsPath, () => closeFd(listenFd(6, '::', 15001, { transparent: false, reusePort: true })));
    t.throws(() => withNetns(app.netnsPath, () => listenFd(6, '::', 15001, { transparent: false })), {
      code: 'EADDRINUSE',
    });
    // The stand-in stays in its own netns: nothing of it listens in the ztunnel pod but readiness.
    const own = await tb.exec(zpod, ['ss', '-Hltn']);
    t.notMatch(own.stdout, ':15001 ');
    t.match(own.stdout, ':15021 ');
  },
);

t.test('a second Add for the same netns is acked and opens nothing new', async (t) => {
  await server.add(app.uid, info, app.netnsPath);
  for (const port of [15001, 15006, 15008])
    t.equal((await ssLines('-Hltnpe', port)).length, 1, `still one listener on ${port}`);
  t.same(
    zt.state()?.workloads.map((w) => w.uid),
    [app.uid],
  );
});

t.test(
  'DNS over UDP and TCP on 127.0.0.1:15053 in the pod: zone names answered, others forwarded with mark 0x539',
  async (t) => {
    // Counts forwarded queries that leave the pod marked 0x539 (UDP and TCP).
    for (const proto of ['udp', 'tcp']) {
      await iptables(
        tb,
        app,
        `-t mangle -A OUTPUT -p ${proto} --dport ${UPSTREAM_DNS_PORT} -m mark --mark 0x539 -j ACCEPT`,
      );
    }
    const query = `
import dgram from 'node:dgram'; import net from 'node:net'; import dnsPacket from 'dns-packet';
const q = (name) => ({ type: 'query', id: 7, flags: dnsPacket.RECURSION_DESIRED, questions: [{ type: 'A', name }] });
const udp = (name) => new Promise((res, rej) => {
  const s = dgram.createSocket('udp4');
  const tm = setTimeout(() => rej(new Error('udp timeout')), 3000);
  s.on('message', (m) => { clearTimeout(tm); s.close(); res(dnsPacket.decode(m)); });
  s.send(dnsPacket.encode(q(name)), 15053, '127.0.0.1');
});
const tcp = (name) => new Promise((res, rej) => {
  const s = net.connect(15053, '127.0.0.1');
  s.setTimeout(3000, () => rej(new Error('tcp timeout')));
  let b = Buffer.alloc(0);
  s.on('data', (d) => {
    b = Buffer.concat([b, d]);
    if (b.length >= 2 + b.readUInt16BE(0)) { s.end(); res(dnsPacket.streamDecode(b)); }
  });
  s.on('error', rej);
  s.write(dnsPacket.streamEncode(q(name)));
});
const show = (p) => ({ rcode: p.rcode, aa: p.flag_aa, answers: p.answers.map((a) => a.data) });
const out = {};
for (const [proto, f] of [['udp', udp], ['tcp', tcp]]) {
  for (const name of ['client.plain.svc.cluster.local', 'example.org']) out[proto + ' ' + name] = show(await f(name));
}
console.log(JSON.stringify(out));
`;
    const r = await tb.exec(app, [process.execPath, '--input-type=module', '-e', query], { timeoutMs: 15_000 });
    const got = JSON.parse(r.stdout) as Record<string, { rcode: string; aa: boolean; answers: string[] }>;
    for (const proto of ['udp', 'tcp']) {
      t.same(
        got[`${proto} client.plain.svc.cluster.local`],
        { rcode: 'NOERROR', aa: true, answers: [client.ip] },
        `${proto}: zone name from the stand-in`,
      );
      t.same(
        got[`${proto} example.org`],
        { rcode: 'NOERROR', aa: false, answers: [UPSTREAM_ANSWER] },
        `${proto}: other names forwarded upstream`,
      );
    }
    // ztunnel's forwarder is a resolver (hickory): it asks over UDP whatever the client used.
    const counters = await tb.exec(app, ['iptables', '-t', 'mangle', '-L', 'OUTPUT', '-v', '-n', '-x']);
    const packets = (proto: string): number => {
      const line = counters.stdout.split('\n').find((l) => l.includes(` ${proto} `) && l.includes('mark match 0x539'));
      return line ? Number(line.trim().split(/\s+/)[0]) : Number.NaN;
    };
    t.ok(packets('udp') >= 2, `both forwarded queries left the pod over UDP, marked 0x539 (${packets('udp')} packets)`);
    t.equal(packets('tcp'), 0, 'none over TCP (the answers were not truncated)');
  },
);

t.test("the inbound leg comes from the client's address (ENABLE_ORIG_SRC default)", async (t) => {
  await startHttpServer(tb, app, 8080);
  // No agent in this test: a REDIRECT to 15006 and Istio's return path for spoofed connections
  // (mangle connmark 0x111 + fwmark rule to a local table), as istio-cni's in-pod rules have them.
  await iptables(
    tb,
    app,
    REDIRECT_INBOUND(8080),
    '-t mangle -A PREROUTING -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff',
    '-t mangle -A OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark --nfmask 0xffffffff' +
      ' --ctmask 0xffffffff',
  );
  await tb.exec(app, ['ip', 'rule', 'add', 'fwmark', '0x111/0xfff', 'pref', '32764', 'lookup', '100']);
  await tb.exec(app, ['ip', 'route', 'add', 'local', '0.0.0.0/0', 'dev', 'lo', 'table', '100']);
  const before = tb.ztunnelLog('node1').length;
  const r = await curl(tb, client, app.ip, 8080);
  t.equal(r.body, `hello from app peer=${client.ip} path=/\n`, `the app sees the client as its peer (${r.stderr})`);
  // The line is written when the relay ends, just after curl saw the answer.
  const inbound = async () =>
    tb
      .ztunnelLog('node1')
      .slice(before)
      .find((l) => l.direction === 'inbound-plaintext');
  const line = await until('the inbound log line', inbound, (l) => l !== undefined);
  t.match(line, { where: 'mesh/app', dstFrom: 'SO_ORIGINAL_DST', originalDst: `${app.ip}:8080`, result: 'ok' });
  t.match(
    line?.upstreamLocal,
    new RegExp(`^${client.ip.replaceAll('.', '\\.')}:\\d+$`),
    'the upstream socket is bound to the client IP',
  );
});

t.test(
  'mesh to mesh: the outbound leg leaves the client pod marked, HBONE to the app pod, the app sees the client',
  async (t) => {
    const web = tb.pod('mesh/web');
    await server.add(web.uid, { name: web.name, namespace: web.namespace, serviceAccount: 'default' }, web.netnsPath);
    // Outbound capture in the client pod as istio-cni's nat OUTPUT has it. The stand-in's own HBONE leg
    // leaves this same netns: only its mark 0x539 keeps it from being redirected to 15001 again (a loop).
    await iptables(
      tb,
      web,
      '-t nat -A OUTPUT -p tcp ! -d 127.0.0.1/32 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001',
    );
    const before = tb.ztunnelLog('node1').length;
    const r = await curl(tb, web, app.ip, 8080, { path: '/hbone' });
    t.equal(r.body, `hello from app peer=${web.ip} path=/hbone\n`, `the app sees the client pod (${r.stderr})`);
    const lines = await until(
      'both halves logged',
      async () => tb.ztunnelLog('node1').slice(before),
      (l) => l.length >= 2,
    );
    const out = lines.find((l) => l.direction === 'outbound');
    const inb = lines.find((l) => l.direction === 'inbound-hbone');
    t.match(out, {
      where: 'mesh/web',
      dstFrom: 'SO_ORIGINAL_DST',
      originalDst: `${app.ip}:8080`,
      upstream: `${app.ip}:15008`,
      upstreamProtocol: 'hbone',
      result: 'ok',
    });
    t.match(
      out?.upstreamLocal,
      new RegExp(`^${web.ip.replaceAll('.', '\\.')}:\\d+$`),
      'the HBONE leg left from the client pod',
    );
    t.match(inb, { where: 'mesh/app', originalDst: `${app.ip}:8080`, result: 'ok' });
    t.match(inb?.source, new RegExp(`^${web.ip.replaceAll('.', '\\.')}:`), 'the tunnel came from the client pod');
    t.match(inb?.upstreamLocal, new RegExp(`^${web.ip.replaceAll('.', '\\.')}:\\d+$`), 'and the app leg spoofs it');
    await server.del(web.uid);
  },
);

t.test('Del: the listeners and DNS are gone', async (t) => {
  const acks = await server.del(app.uid);
  t.same(
    acks.map((a) => a.error),
    [undefined],
  );
  await until(
    'no listener left',
    async () => (await tb.exec(app, ['ss', '-Hltun'])).stdout.trim(),
    (s) => !/:1500[168] |:15053 /.test(s),
  );
  t.same(zt.state()?.workloads, []);
  t.equal(await readiness(), 200, 'still ready');
});
