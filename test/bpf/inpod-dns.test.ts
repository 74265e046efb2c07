// DNS capture of the inpod datapath on the real kernel, in netns + cgroups of our own: a captured pod's
// UDP and TCP to port 53 reach "ztunnel's DNS proxy" (a DNS-like helper on 127.0.0.1:15053 and
// [::1]:15053 inside the pod, marked 0x539 as ztunnel's sockets are) and every answer shows the server
// the query was sent to: connected and unconnected sockets, one socket asking three servers at once,
// IPv4, v4-mapped and IPv6. A pod that is not captured, a pod whose annotation says "false", the
// node's switch and a socket with ztunnel's mark all reach the real servers (in pod c). Last, 10,000
// queries from sockets that reuse the same few source ports, in two pods at once, next to ztunnel's
// own upstream queries from the same ports: not one answer reaches the wrong socket or shows the
// wrong server.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import * as s from '../../src/bpf/schema.ts';
import { execIn } from '../../src/testbed/exec.ts';
import { computeDesiredState, DNS_CAPTURE_ANNOTATION } from '../../src/state/desired.ts';
import { buildInpodTarget } from '../../src/reconcile/topology-inpod.ts';
import { INPOD_CONFIG, captureInpod, makeEnv, openInpod, type PodName } from './env.ts';
import { eventually } from '../helpers/wait.ts';
import { DNSQ, type DnsqQuery, type DnsqReuse } from '../dns/dnsq.ts';

// The DNS test helper (real DNS wire format): its server answers a TXT record naming itself ("by").
/** What every query here asks: the answer's TXT record says which server gave it. */
const ASK = ['ambpf.test', '--type', 'TXT'];
const SERVERS = ['198.18.4.53', '198.18.4.54', '198.18.4.55'] as const;
const SERVER6 = 'fd00:a3bf::53';
const PROXY = 'proxy@127.0.0.1';

t.test('the pod annotation reaches the DNS bits of ambpf_netns and ambpf_pods', async (t) => {
  const pod = (name: string, i: number, dns?: string): Record<string, unknown> => ({
    metadata: {
      name,
      namespace: 'app',
      uid: `uid-${name}`,
      annotations: dns === undefined ? {} : { [DNS_CAPTURE_ANNOTATION]: dns },
    },
    spec: { nodeName: 'n1', containers: [{ name: 'app' }] },
    status: { phase: 'Running', podIP: `198.19.1.${i}` },
  });
  const desired = computeDesiredState(
    {
      namespaces: [{ metadata: { name: 'app', labels: { 'istio.io/dataplane-mode': 'ambient' } } }],
      pods: [pod('plain', 1), pod('off', 2, 'false'), pod('on', 3, 'True'), pod('junk', 4, 'maybe')],
    },
    'n1',
  );
  t.same(
    desired.ambientPods.map((p) => [p.name, p.dnsCapture]),
    [
      ['junk', undefined],
      ['off', false],
      ['on', true],
      ['plain', undefined],
    ],
  );
  t.notOk(
    'dnsCapture' in desired.ambientPods.find((p) => p.name === 'plain')!,
    'a pod without the annotation looks as before',
  );
  const pods = desired.ambientPods.map((p, i) => ({
    ...p,
    pid: 0,
    pids: [],
    netnsPath: '',
    netnsCookie: BigInt(i + 1),
    hostLink: undefined,
  }));
  const target = buildInpodTarget(pods, { pods, ztunnel: undefined, unresolved: [] });
  const flags = Object.fromEntries(pods.map((p) => [p.name, target.netns.get(p.netnsCookie)?.flags]));
  t.same(flags, {
    plain: s.POD_AMBIENT,
    junk: s.POD_AMBIENT,
    off: s.POD_AMBIENT | s.POD_NO_DNS_CAPTURE,
    on: s.POD_AMBIENT | s.POD_DNS_CAPTURE,
  });
  t.equal(target.pods.get('198.19.1.3')?.flags, s.POD_AMBIENT | s.POD_DNS_CAPTURE, 'the pod map carries them too');
});

t.test('inpod DNS capture in netns + cgroups of our own', { timeout: 120_000 }, async (t) => {
  const env = await makeEnv(t);
  const { a, b, c } = env.pods;
  const dp = await openInpod(t, env);
  const config = INPOD_CONFIG;

  const dns = async (pod: PodName, args: string[]): Promise<unknown[]> => {
    const r = await execIn(env.pods[pod].cgroup, env.pods[pod].netns, ['python3', DNSQ, ...args], {
      timeoutMs: 60_000,
    });
    return r.stdout
      .trim()
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as unknown);
  };
  /** One query (or --count N) to host:port from pod. */
  const query = async (pod: PodName, [host, port, ...flags]: string[]): Promise<DnsqQuery> =>
    (await dns(pod, ['query', host!, ...ASK, '--port', port!, ...flags]))[0] as DnsqQuery;
  const server = async (pod: PodName, args: string[]): Promise<void> => {
    const p = env.spawn(pod, ['python3', '-u', DNSQ, 'server', ...args]);
    let out = '';
    let exited = false;
    p.child.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
    });
    p.child.stderr?.on('data', (d: Buffer) => {
      out += d.toString();
    });
    void p.exited.then(() => {
      exited = true;
    });
    await eventually(() => out.includes('ready') || exited, 10_000, `the dns helper in pod ${pod}`);
    if (exited) throw new Error(`dns helper in pod ${pod} exited: ${out}`);
  };

  // The real servers: three addresses of pod c (not in the mesh), and pod c's v6 address.
  for (const ip of SERVERS)
    execFileSync('ip', ['-n', c.netns.split('/').pop()!, 'addr', 'add', `${ip}/32`, 'dev', 'eth0']);
  await server('c', ['real', SERVERS.map((ip) => `${ip}:53`).join(',')]);
  // "ztunnel's DNS proxy" in pods a and b, marked as ztunnel marks every socket it opens in a pod.
  for (const pod of ['a', 'b'] as const)
    await server(pod, ['proxy', '127.0.0.1:15053,[::1]:15053', '--mark', String(s.ZTUNNEL_MARK)]);

  // Pods a and b captured; armPod brings tc on their lo (the answers' slot addresses).
  const cookieA = captureInpod(env, dp, 'a');
  const cookieB = captureInpod(env, dp, 'b');
  t.teardown(() => {
    for (const [pod, cookie] of [
      ['a', cookieA],
      ['b', cookieB],
    ] as const)
      dp.detachPod(cookie, [env.pods[pod].ip], env.pods[pod].netns);
  });
  t.same(
    Object.keys(dp.links)
      .filter((h) => /msg/.test(h))
      .sort(),
    ['recvmsg4', 'recvmsg6', 'sendmsg4', 'sendmsg6'],
    'the UDP hooks are attached',
  );

  await t.test('unconnected UDP: to the proxy, the answer from the server asked', async (t) => {
    const before = dp.stats();
    const r = await query('a', [SERVERS[0], '53']);
    t.notOk(r.error, `no error (${r.error})`);
    t.equal(r.answers[0]?.by, PROXY, 'answered by the proxy in the pod');
    t.same(r.answers[0]?.from, { ip: SERVERS[0], port: 53 }, 'recvfrom shows the server asked');
    const after = dp.stats();
    t.ok(after.dns_redirected > before.dns_redirected, 'counted as redirected');
    t.ok(after.dns_restored > before.dns_restored, 'counted as restored');
    t.ok(after.dns_answer_source > before.dns_answer_source, "the proxy's sendmsg4 answered from the slot address");
  });

  await t.test('connected UDP: getpeername and recvfrom show the server', async (t) => {
    const r = await query('a', [SERVERS[1], '53', '--connect', '--count', '3']);
    t.notOk(r.error, `no error (${r.error})`);
    t.same(r.peer, { ip: SERVERS[1], port: 53 }, 'getpeername');
    t.equal(r.answers.length, 3);
    for (const ans of r.answers) {
      t.equal(ans.by, PROXY);
      t.same(ans.from, { ip: SERVERS[1], port: 53 });
    }
  });

  await t.test("TCP to port 53 goes to the proxy's 15053, getpeername shows the server", async (t) => {
    const r = await query('a', [SERVERS[2], '53', '--tcp']);
    t.notOk(r.error, `no error (${r.error})`);
    t.equal(r.answers[0]?.by, PROXY);
    t.same(r.peer, { ip: SERVERS[2], port: 53 });
  });

  await t.test('one unconnected socket asking three servers at once: each answer shows its own server', async (t) => {
    const [r] = (await dns('a', ['spread', SERVERS.join(','), ...ASK])) as DnsqQuery[];
    t.notOk(r?.error, `no error (${r?.error})`);
    t.equal(r?.answers.length, 3);
    for (const ans of r?.answers ?? []) {
      t.equal(ans.by, PROXY);
      t.same(ans.from, { ip: ans.asked, port: 53 }, `the answer to the query for ${ans.asked}`);
    }
  });

  await t.test("a socket bound to the pod's IP (no slot address): the server of its query", async (t) => {
    const r = await query('a', [SERVERS[0], '53', '--bind', a.ip, '--count', '2']);
    t.notOk(r.error, `no error (${r.error})`);
    for (const ans of r.answers) {
      t.equal(ans.by, PROXY);
      t.same(ans.from, { ip: SERVERS[0], port: 53 });
    }
  });

  await t.test('a dual-stack socket (v4-mapped) and IPv6 to [::1]:15053', async (t) => {
    for (const extra of [[], ['--connect']]) {
      const mapped = await query('a', [SERVERS[0], '53', '--v6', ...extra]);
      t.notOk(mapped.error, `no error (${mapped.error})`);
      t.equal(mapped.answers[0]?.by, PROXY, `v4-mapped ${extra.join(' ') || 'unconnected'}`);
      t.same(mapped.answers[0]?.from, { ip: SERVERS[0], port: 53 });
      const v6 = await query('a', [SERVER6, '53', ...extra]);
      t.notOk(v6.error, `no error (${v6.error})`);
      t.equal(v6.answers[0]?.by, 'proxy@::1', `IPv6 ${extra.join(' ') || 'unconnected'}: the proxy on [::1]`);
      t.same(v6.answers[0]?.from, { ip: SERVER6, port: 53 });
      if (extra.length) t.same(v6.peer, { ip: SERVER6, port: 53 });
    }
    for (const host of [`::ffff:${SERVERS[1]}`, SERVER6]) {
      const tcp = await query('a', [host, '53', '--tcp']);
      t.notOk(tcp.error, `no error (${tcp.error})`);
      t.equal(tcp.answers[0]?.by, host === SERVER6 ? 'proxy@::1' : PROXY, `TCP to [${host}]:53: the proxy`);
      t.same(tcp.peer, { ip: host === SERVER6 ? SERVER6 : SERVERS[1], port: 53 }, 'getpeername6 gives the server');
    }
  });

  await t.test("not captured: another pod, a marked socket (ztunnel's upstream), other ports", async (t) => {
    const direct = await query('z', [SERVERS[0], '53']);
    t.equal(direct.answers[0]?.by, `real@${SERVERS[0]}`, 'a pod not in the mesh reaches the server');
    const marked = await query('a', [SERVERS[0], '53', '--mark', String(s.ZTUNNEL_MARK)]);
    t.equal(marked.answers[0]?.by, `real@${SERVERS[0]}`, "ztunnel's own query is not looped back");
    t.same(marked.answers[0]?.from, { ip: SERVERS[0], port: 53 });
    const tcpMarked = await query('a', [SERVERS[0], '53', '--tcp', '--mark', String(s.ZTUNNEL_MARK)]);
    t.equal(tcpMarked.answers[0]?.by, `real@${SERVERS[0]}`, 'nor its TCP query');
    const own = await query('a', ['127.0.0.1', '15053']);
    t.equal(own.answers[0]?.by, PROXY, 'the proxy itself is reachable');
  });

  await t.test("a resolver on the node's own address is captured (only what goes via lo is not)", async (t) => {
    // --node-ip addresses are never redirected to 15001; DNS to them is, as Istio's rules do.
    dp.maps.config.set({ ...config, nodeIps: [SERVERS[0]] });
    try {
      const r = await query('a', [SERVERS[0], '53']);
      t.equal(r.answers[0]?.by, PROXY);
      t.same(r.answers[0]?.from, { ip: SERVERS[0], port: 53 });
      const tcp = await query('a', [SERVERS[0], '53', '--tcp']);
      t.equal(tcp.answers[0]?.by, PROXY, 'over TCP too');
    } finally {
      dp.maps.config.set(config);
    }
  });

  await t.test('the annotation says "false", the node\'s switch says no, the annotation says "true"', async (t) => {
    const setB = (flags: number): void => {
      dp.maps.netns.set(cookieB, { podIp: b.ip, flags });
    };
    try {
      setB(s.POD_AMBIENT | s.POD_NO_DNS_CAPTURE);
      const off = await query('b', [SERVERS[0], '53']);
      t.equal(off.answers[0]?.by, `real@${SERVERS[0]}`, 'annotation "false": the server itself');
      const tcpOff = await query('b', [SERVERS[0], '53', '--tcp']);
      t.match(tcpOff.error ?? '', /refused/i, "its TCP to port 53 is ordinary TCP: ztunnel's 15001 (not up here)");
      dp.maps.config.set({ ...config, flags: config.flags | s.CFG_NO_DNS_CAPTURE });
      const node = await query('a', [SERVERS[0], '53']);
      t.equal(
        node.answers[0]?.by,
        `real@${SERVERS[0]}`,
        '--no-dns-capture: a pod without the annotation is left alone',
      );
      setB(s.POD_AMBIENT | s.POD_DNS_CAPTURE);
      const on = await query('b', [SERVERS[0], '53']);
      t.equal(on.answers[0]?.by, PROXY, 'annotation "true" captures all the same');
      t.same(on.answers[0]?.from, { ip: SERVERS[0], port: 53 });
    } finally {
      dp.maps.config.set(config);
      setB(s.POD_AMBIENT);
    }
  });

  await t.test("10,000 queries from reused source ports, two pods and ztunnel's upstream at once", async (t) => {
    const before = dp.stats();
    // Pods a and b bind the same 16 ports in turn (each port ~80 times per pod); a socket sends 4
    // queries to random servers before it reads. ztunnel's upstream queries (marked) in pod a use
    // the next 16 ports meanwhile and must reach the real servers.
    const app = [
      'reuse',
      SERVERS.join(','),
      ...ASK,
      '--ports',
      '40000-40015',
      '--queries',
      '5000',
      '--per-socket',
      '4',
    ];
    const started = Date.now();
    const [ra, rb, rz] = (
      await Promise.all([
        dns('a', [...app, '--seed', '1']),
        dns('b', [...app, '--seed', '2']),
        // A seed of its own: its ids differ from pod a's app queries beside it (see dnsq.py reuse).
        dns('a', [
          'reuse',
          SERVERS.join(','),
          ...ASK,
          '--ports',
          '40016-40031',
          '--queries',
          '1000',
          '--per-socket',
          '4',
          '--seed',
          '3',
          '--mark',
          String(s.ZTUNNEL_MARK),
        ]),
      ])
    ).map((r) => r[0] as DnsqReuse);
    const seconds = (Date.now() - started) / 1000;
    t.comment(
      `10,000 captured + 1,000 upstream queries in ${seconds.toFixed(1)} s (a ${ra?.seconds} s, b ${rb?.seconds} s)`,
    );
    for (const [name, r] of [
      ['pod a', ra],
      ['pod b', rb],
    ] as const) {
      t.equal(r?.queries, 5000, `${name}: 5,000 queries`);
      t.equal(r?.answers, 5000, `${name}: every one answered`);
      t.equal(r?.wrong_socket, 0, `${name}: no answer reached another socket (${JSON.stringify(r?.examples)})`);
      t.equal(
        r?.wrong_server,
        0,
        `${name}: every answer shows its own query's server (${JSON.stringify(r?.examples)})`,
      );
      t.equal(r?.errors, 0, `${name}: every port could be bound`);
      t.equal(r?.sockets, 1250, `${name}: 1,250 sockets on 16 ports (each port bound ~78 times)`);
      t.same(r?.by, { [PROXY]: 5000 }, `${name}: all answered by the pod's proxy`);
    }
    t.equal(rz?.answers, 1000, "ztunnel's upstream queries all answered");
    t.equal((rz?.wrong_server ?? 1) + (rz?.wrong_socket ?? 1), 0, 'by the server each was sent to, on its own socket');
    t.notOk(
      Object.keys(rz?.by ?? {}).some((k) => k.startsWith('proxy')),
      'none looped back to the proxy',
    );
    t.ok(seconds < 45, `bounded in time (${seconds.toFixed(1)} s)`);
    const after = dp.stats();
    t.ok(after.dns_redirected - before.dns_redirected >= 10_000n, 'every app query redirected');
    t.equal(after.dns_error, before.dns_error, 'no storage errors');
  });
});
