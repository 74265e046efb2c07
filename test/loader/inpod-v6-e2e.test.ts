// IPv6 in the inpod topology, end to end, as Istio's in-pod rules give it: two nodes in netns with
// dual-stack and IPv6-only mesh pods (fd00:a3bf::/32), one `ambpf run --mode inpod` per node serving
// ZDS from a pods file, one ztunnel stand-in per node (a ZDS client that listens on [::] in each pod's
// netns and spoofs the client's address on inbound legs, over IPv6 as over IPv4). What each case
// proves is the IPv6 twin of test/loader/inpod-zds-e2e.test.ts, plus both families of one pod.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { startTestbed, type Testbed } from '../../src/testbed/index.ts';
import type { TestbedSpec } from '../../src/testbed/spec.ts';
import { startHttpServer, curl, nodeBinary } from '../../src/testbed/helpers.ts';
import { startZtunnels, startExtraZtunnel, stopZtunnel } from '../../src/testbed/ztunnel/launch.ts';
import { zdsSocketPath } from '../../src/testbed/loader.ts';
import type { StateFile } from '../../src/reconcile/reconciler.ts';
import {
  LISTENER_HBONE,
  LISTENER_INBOUND,
  decodeIpKey,
  decodeNetns,
  encodeInpodListenKey,
  type NetnsValue,
} from '../../src/bpf/schema.ts';
import { testPrefix } from '../helpers/prefix.ts';
import { startLoader, waitReady, type Loader } from '../helpers/loader.ts';
import { tracedCurl } from '../helpers/standin.ts';
import { eventually } from '../helpers/wait.ts';

const PORT = 8080;
const NODES = ['node1', 'node2'] as const;
const SPEC: TestbedSpec = {
  nodes: NODES.map((name) => ({ name, ztunnel: true })),
  namespaces: [
    { name: 'mesh', labels: { 'istio.io/dataplane-mode': 'ambient' } },
    { name: 'plain', labels: {} },
  ],
  pods: NODES.flatMap((node) => [
    { name: `dual-${node}`, namespace: 'mesh', node, ipFamilies: ['IPv4', 'IPv6'] as const },
    { name: `v6-${node}`, namespace: 'mesh', node, ipFamilies: ['IPv6'] as const },
    { name: `client-${node}`, namespace: 'plain', node, ipFamilies: ['IPv4', 'IPv6'] as const },
  ]),
};

let tb: Testbed;
const loaders: Loader[] = [];

const ip4 = (pod: string): string => tb.pod(pod).ips.find((a) => !a.includes(':'))!;
const ip6 = (pod: string): string => tb.pod(pod).ips.find((a) => a.includes(':'))!;
const bracket = (ip: string, port: number): string => (ip.includes(':') ? `[${ip}]:${port}` : `${ip}:${port}`);
const re = (s: string): RegExp => new RegExp(s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
const meshPods = (node: string): string[] => tb.info.pods.filter((p) => p.node === node && p.mesh).map((p) => p.name);

function zdsStates(node: string): Map<string, string> {
  try {
    const l = loaders.find((x) => x.node.name === node)!;
    const state = JSON.parse(readFileSync(l.stateFile, 'utf8')) as StateFile;
    return new Map(state.pods.map((p) => [p.name, p.zds?.state ?? 'none']));
  } catch {
    return new Map();
  }
}

/** A pinned map's entries, raw, through bpftool (another process owns the maps). */
function dump(node: string, map: string): Array<{ key: Uint8Array; value: Uint8Array }> {
  const out = execFileSync('bpftool', ['-j', 'map', 'dump', 'pinned', join(tb.node(node).bpffsDir, map)], {
    encoding: 'utf8',
  });
  const bytes = (a: readonly string[]): Uint8Array => Uint8Array.from(a.map((x) => parseInt(x, 16)));
  return (JSON.parse(out) as Array<{ key: string[]; value: string[] }>).map((e) => ({
    key: bytes(e.key),
    value: bytes(e.value),
  }));
}

async function tryCurl(from: string, ip: string, timeoutMs = 3000): Promise<number> {
  return (await curl(tb, from, ip, PORT, { timeoutMs })).exitCode;
}

/** Every mesh pod acked and a request of each family through ztunnel answered. */
async function waitServed(): Promise<void> {
  await eventually(
    () => NODES.every((n) => meshPods(n).every((p) => zdsStates(n).get(p) === 'acked')),
    20_000,
    'every mesh pod acked',
  );
  await eventually(
    async () =>
      (await tryCurl('v6-node1', ip6('dual-node2'))) === 0 &&
      (await tryCurl('client-node2', ip6('v6-node1'))) === 0 &&
      (await tryCurl('dual-node1', ip4('dual-node2'))) === 0,
    20_000,
    'IPv6 and IPv4 requests through ztunnel to succeed',
  );
}

/**
 * connect() from a pod to ip:PORT with a plain socket of the address's family (an IPv4 literal makes
 * an AF_INET socket, anything else AF_INET6), one HTTP request: what getpeername() and
 * getsockname() say, and the echo server's answer.
 */
const PEER_SCRIPT = `
const net = require('node:net');
const [host, port] = process.argv.slice(1);
const s = net.connect({ host, port: Number(port), family: host.includes(':') ? 6 : 4 });
let body = '', peer;
s.on('connect', () => {
  peer = { remote: s.remoteAddress, remotePort: s.remotePort, local: s.localAddress };
  s.end('GET / HTTP/1.0\\r\\n\\r\\n');
});
s.on('data', (d) => (body += d));
s.on('error', (e) => { console.log(JSON.stringify({ error: e.code })); process.exit(0); });
s.on('close', () => { console.log(JSON.stringify({ ...peer, body })); process.exit(0); });
setTimeout(() => { console.log(JSON.stringify({ error: 'timeout' })); process.exit(0); }, 4000);
`;

async function peerOf(
  from: string,
  ip: string,
): Promise<{ remote?: string; remotePort?: number; local?: string; body?: string; error?: string }> {
  const r = await tb.exec(from, [nodeBinary(), '-e', PEER_SCRIPT, ip, String(PORT)], { timeoutMs: 8000 });
  return JSON.parse(r.stdout.trim().split('\n').at(-1) ?? '{}') as { remote?: string; error?: string };
}

t.before(async () => {
  tb = await startTestbed(SPEC, { topology: 'inpod', prefix: testPrefix(), standIn: false });
  const podsFile = join(tb.info.runDir, 'pods.json');
  tb.writePodsList(podsFile);
  for (const node of tb.info.nodes) loaders.push(startLoader(tb, node, podsFile, [], true));
  await Promise.all(loaders.map((l) => waitReady(tb, l)));
  await startZtunnels(tb, { zdsSocket: (node) => zdsSocketPath(tb, tb.node(node)) });
  for (const p of tb.info.pods.filter((x) => !x.isZtunnel)) await startHttpServer(tb, p.name, PORT);
  await waitServed();
});
t.teardown(async () => {
  for (const l of loaders) l.proc.kill('SIGTERM');
  await Promise.all(loaders.map((l) => l.proc.exited));
  await tb?.down();
});

t.test('dual-stack and IPv6-only pods from the pods file: armed with every address, acked', async (t) => {
  const pods = new Set(dump('node1', 'ambpf_pods').map((e) => decodeIpKey(e.key)));
  for (const name of ['dual-node1', 'v6-node1'])
    for (const ip of tb.pod(name).ips) t.ok(pods.has(ip), `${name}: ${ip} in ambpf_pods`);
  const netns: NetnsValue[] = dump('node1', 'ambpf_netns').map((e) => decodeNetns(e.value));
  t.ok(
    netns.some((n) => n.podIp === ip4('dual-node1') && n.podIp6 === ip6('dual-node1')),
    'dual-stack: IPv4 and IPv6 in ambpf_netns',
  );
  t.ok(
    netns.some((n) => n.podIp === ip6('v6-node1') && n.podIp6 === ip6('v6-node1')),
    'IPv6-only: its IPv6 address in ambpf_netns',
  );
  // ZDS hands ztunnel the netns (WorkloadInfo carries no address); its [::] listeners serve every address.
  const listen = new Set(dump('node1', 'ambpf_inpod_listen').map((e) => Buffer.from(e.key).toString('hex')));
  for (const name of ['dual-node1', 'v6-node1']) {
    for (const ip of tb.pod(name).ips) {
      for (const slot of [LISTENER_INBOUND, LISTENER_HBONE]) {
        t.ok(
          listen.has(Buffer.from(encodeInpodListenKey(ip, slot)).toString('hex')),
          `${name}: listener slot ${slot} under ${ip}`,
        );
      }
    }
  }
});

t.test(
  "mesh -> mesh over IPv6 across nodes: the pod's IPv6 address to 15001, IP6T_SO_ORIGINAL_DST, HBONE, spoofed leg",
  async (t) => {
    const r = await tracedCurl(tb, 'v6-node1', ip6('dual-node2'), PORT, NODES, {
      node1: ['outbound'],
      node2: ['inbound-hbone'],
    });
    const out = r.lines['node1']?.find((e) => e.direction === 'outbound');
    t.match(out?.source ?? '', re(`[${ip6('v6-node1')}]:`), "ztunnel sees the pod's IPv6 address as source");
    t.equal(out?.originalDst, bracket(ip6('dual-node2'), PORT));
    t.equal(out?.dstFrom, 'IP6T_SO_ORIGINAL_DST', 'SOL_IP had no answer, SOL_IPV6 had (ztunnel asks in that order)');
    t.equal(out?.upstream, bracket(ip6('dual-node2'), 15008), "HBONE to the destination pod's IPv6 address");
    const inb = r.lines['node2']?.find((e) => e.direction === 'inbound-hbone');
    t.match(
      inb?.upstreamLocal ?? '',
      re(`[${ip6('v6-node1')}]:`),
      "the inbound leg is bound to the client's IPv6 address",
    );
    t.match(r.body, re(`hello from dual-node2 peer=${ip6('v6-node1')} `), "the app sees the client pod's IPv6 address");
  },
);

t.test('mesh -> mesh over IPv6 on one node', async (t) => {
  const r = await tracedCurl(tb, 'v6-node1', ip6('dual-node1'), PORT, ['node1'], {
    node1: ['outbound', 'inbound-hbone'],
  });
  t.equal(r.lines['node1']?.find((e) => e.direction === 'outbound')?.dstFrom, 'IP6T_SO_ORIGINAL_DST');
  t.match(r.body, re(`hello from dual-node1 peer=${ip6('v6-node1')} `));
});

t.test('one dual-stack pod: IPv4 and IPv6 each through ztunnel with their own family', async (t) => {
  for (const [family, dst, src, option] of [
    ['IPv4', ip4('dual-node2'), ip4('dual-node1'), 'SO_ORIGINAL_DST'],
    ['IPv6', ip6('dual-node2'), ip6('dual-node1'), 'IP6T_SO_ORIGINAL_DST'],
  ] as const) {
    const r = await tracedCurl(tb, 'dual-node1', dst, PORT, NODES, { node1: ['outbound'], node2: ['inbound-hbone'] });
    const out = r.lines['node1']?.find((e) => e.direction === 'outbound');
    t.match(
      out?.source ?? '',
      re(src.includes(':') ? `[${src}]:` : `${src}:`),
      `${family}: the pod's ${family} address as source`,
    );
    t.equal(out?.originalDst, bracket(dst, PORT), `${family}: original destination`);
    t.equal(out?.dstFrom, option, `${family}: answered by ${option}`);
    t.match(r.body, re(`peer=${src} `), `${family}: the server sees the client's ${family} address`);
  }
});

t.test('getpeername per family: the peer the app asked for, not ztunnel', async (t) => {
  const cases = [
    { what: 'AF_INET', dst: ip4('dual-node2'), peer: ip4('dual-node2'), src: ip4('dual-node1') },
    { what: 'AF_INET6, native IPv6', dst: ip6('dual-node2'), peer: ip6('dual-node2'), src: ip6('dual-node1') },
    {
      what: 'AF_INET6, v4-mapped',
      dst: `::ffff:${ip4('dual-node2')}`,
      peer: `::ffff:${ip4('dual-node2')}`,
      src: ip4('dual-node1'),
    },
  ];
  for (const c of cases) {
    const r = await peerOf('dual-node1', c.dst);
    t.equal(r.error, undefined, `${c.what}: connected (${JSON.stringify(r)})`);
    t.equal(r.remote, c.peer, `${c.what}: getpeername gives the original address`);
    t.equal(r.remotePort, PORT, `${c.what}: and port`);
    t.match(r.body ?? '', re(`hello from dual-node2 peer=${c.src} `), `${c.what}: answered through ztunnel`);
  }
});

t.test(
  'non-mesh -> mesh over IPv6: plaintext inbound to 15006, the original address kept, the client spoofed',
  async (t) => {
    const r = await tracedCurl(tb, 'client-node2', ip6('v6-node1'), PORT, ['node1'], { node1: ['inbound-plaintext'] });
    const inb = r.lines['node1']?.find((e) => e.direction === 'inbound-plaintext');
    t.equal(
      inb?.originalDst,
      bracket(ip6('v6-node1'), PORT),
      "the original destination is the accepted socket's local address",
    );
    t.equal(inb?.dstFrom, 'local-address');
    t.match(
      inb?.upstreamLocal ?? '',
      re(`[${ip6('client-node2')}]:`),
      "ztunnel's leg to the app is bound to the client's IPv6 address",
    );
    t.match(
      r.body,
      re(`hello from v6-node1 peer=${ip6('client-node2')} `),
      'the app sees the client, its reply found the way back',
    );
  },
);

t.test(
  "a connection the node itself opens over IPv6 (hop limit 64: kubelet's probe) reaches the app directly",
  async (t) => {
    for (const pod of ['dual-node1', 'v6-node1']) {
      const r = await tracedCurl(tb, 'node1', ip6(pod), PORT, ['node1']);
      t.equal(r.lines['node1']?.length ?? 0, 0, `${pod}: ztunnel saw nothing`);
      t.match(r.body, re(`hello from ${pod} peer=${tb.node('node1').wireIp6} `), `${pod}: the app answered the node`);
    }
  },
);

t.test('ztunnel gone: IPv6 is refused both ways, as IPv4; back: served again', async (t) => {
  await stopZtunnel(tb, 'node1', { signal: 'SIGKILL' });
  await eventually(
    () => [...zdsStates('node1').values()].every((s) => s === 'no-ztunnel'),
    10_000,
    "node1's pods to be no-ztunnel",
  );
  t.not(
    await tryCurl('v6-node1', ip6('dual-node2')),
    0,
    'IPv6 outbound from a captured pod is refused, not sent direct',
  );
  t.not(await tryCurl('dual-node1', ip6('dual-node2')), 0, 'IPv6 outbound from a dual-stack pod too');
  t.not(await tryCurl('dual-node1', ip4('dual-node2')), 0, 'and its IPv4');
  t.not(
    await tryCurl('client-node2', ip6('v6-node1')),
    0,
    'IPv6 inbound to a captured pod is refused, not handed to the app',
  );
  t.not(await tryCurl('client-node2', ip6('dual-node1')), 0, 'IPv6 inbound to a dual-stack pod too');
  await startExtraZtunnel(tb, 'node1');
  await waitServed();
  t.pass('served again after the new ztunnel took the snapshot');
});

t.test('--fail-open: a pod whose ztunnel is away talks direct over IPv6 too', async (t) => {
  const i = loaders.findIndex((l) => l.node.name === 'node1');
  const old = loaders[i]!;
  old.proc.kill('SIGTERM');
  await old.proc.exited;
  const l = startLoader(tb, tb.node('node1'), join(tb.info.runDir, 'pods.json'), ['--fail-open'], true);
  loaders[i] = l;
  await waitReady(tb, l);
  await stopZtunnel(tb, 'node1', { signal: 'SIGKILL' });
  await eventually(
    () => [...zdsStates('node1').values()].every((s) => s === 'no-ztunnel'),
    10_000,
    "node1's pods to be no-ztunnel",
  );
  await eventually(
    () => dump('node1', 'ambpf_inpod_listen').length === 0,
    10_000,
    "ztunnel's listeners to leave the sockhash",
  );
  const out = await tracedCurl(tb, 'v6-node1', ip6('dual-node2'), PORT, NODES, { node2: ['inbound-plaintext'] });
  t.equal(out.lines['node1']?.length ?? 0, 0, 'outbound over IPv6 went direct, not to the gone ztunnel');
  t.match(
    out.body,
    re(`hello from dual-node2 peer=${ip6('v6-node1')} `),
    'and was answered (captured inbound at node2 as plaintext)',
  );
  const inb = await tracedCurl(tb, 'client-node2', ip6('v6-node1'), PORT, ['node1']);
  t.equal(inb.lines['node1']?.length ?? 0, 0, 'inbound over IPv6 reached the app directly');
  t.match(inb.body, re(`hello from v6-node1 peer=${ip6('client-node2')} `));
});
