// Node-topology inbound over IPv6 on the real kernel: tc egress on the pod's host veth steers an IPv6
// SYN into ztunnel's netns, where the IPv6 policy route makes the pod's IPv6 address local and
// sk_lookup hands the connection to ztunnel's dual-stack [::] 15006/15008 listener with the original
// destination as the accepted socket's local address. The IPv6 twin of datapath-inbound.test.ts,
// inbound-flows.test.ts and inbound-sources.test.ts, on a dual-stack pod (its IPv4 address too), plus
// BPF_PROG_TEST_RUN of the tc program on crafted IPv6 frames and fail closed without a listener.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { BpfObject, ifIndex, netnsCookie, withNetns } from '../../src/libbpf/index.ts';
import { ensureObjects } from '../../src/bpf/build.ts';
import { openDatapath, uninstallDatapath } from '../../src/bpf/datapath.ts';
import * as s from '../../src/bpf/schema.ts';
import { HELPER, makeEnv, type Env, type PodName } from './env.ts';
import { ACK, RST, SYN, TC_ACT_OK, TC_ACT_REDIRECT, skbCtx } from './packets.ts';
import { waitUntil } from '../helpers/wait.ts';

interface Addr {
  ip: string;
  port: number;
}
interface ClientOut {
  hello?: { port: number; local: Addr; peer: Addr } | null;
  error?: string;
}

const APP = 8080;
/** Pod i's IPv6 address: fd00:a3bf:0:i::2/64 on its eth0, the node's end of its veth ::1. */
const ip6 = (i: number, host = 2): string => `fd00:a3bf:0:${i}::${host}`;
const NEXTHDR_DSTOPTS = 60;
const NEXTHDR_ICMPV6 = 58;

/** Ethernet + IPv6 + TCP (no options), checksums zero: the program does not check them. `ext` puts
 * one destination-options header (8 bytes) between IPv6 and TCP; `nexthdr` overrides TCP. */
function tcp6(
  src: string,
  dst: string,
  sport: number,
  dport: number,
  flags: number,
  o: { ext?: boolean; nexthdr?: number } = {},
): Uint8Array {
  const ext = o.ext ? 8 : 0;
  const b = Buffer.alloc(14 + 40 + ext + 20);
  Buffer.from('020000000001020000000002', 'hex').copy(b, 0);
  b.writeUInt16BE(0x86dd, 12);
  b[14] = 0x60;
  b.writeUInt16BE(ext + 20, 18);
  b[20] = o.ext ? NEXTHDR_DSTOPTS : (o.nexthdr ?? 6);
  b[21] = 64;
  const raw = (ip: string): Buffer => {
    const [head = '', tail = ''] = ip.split('::');
    const words = (x: string): number[] => (x === '' ? [] : x.split(':').map((w) => parseInt(w, 16)));
    const h = words(head);
    const tl = words(tail);
    const all = [...h, ...Array<number>(8 - h.length - tl.length).fill(0), ...tl];
    const out = Buffer.alloc(16);
    all.forEach((w, i) => out.writeUInt16BE(w, i * 2));
    return out;
  };
  raw(src).copy(b, 22);
  raw(dst).copy(b, 38);
  if (o.ext) b[54] = 6; // the options header's next header: TCP; length 0 = 8 bytes (PadN-free zeros)
  const tcp = 54 + ext;
  b.writeUInt16BE(sport, tcp);
  b.writeUInt16BE(dport, tcp + 2);
  b[tcp + 12] = 0x50;
  b[tcp + 13] = flags;
  return new Uint8Array(b);
}

function ipn(netns: string, args: string[]): void {
  execFileSync('ip', ['-n', netns.split('/').pop() ?? '', ...args]);
}

/** IPv6 on top of the env's IPv4: every pod gets ip6(i)/64, the node's veth end ip6(i, 1), forwarding on. */
function addIpv6(env: Env): void {
  execFileSync('nsenter', [`--net=${env.node}`, 'sysctl', '-q', '-w', 'net.ipv6.conf.all.forwarding=1']);
  for (const [name, i] of Object.entries({ a: 1, z: 2, b: 3, c: 4 }) as Array<[PodName, number]>) {
    const pod = env.pods[name];
    ipn(env.node, ['-6', 'addr', 'add', `${ip6(i, 1)}/64`, 'dev', pod.hostIf, 'nodad']);
    ipn(pod.netns, ['-6', 'addr', 'add', `${ip6(i)}/64`, 'dev', 'eth0', 'nodad']);
    ipn(pod.netns, ['-6', 'route', 'add', 'default', 'via', ip6(i, 1)]);
  }
}

t.test('node topology: IPv6 inbound steered into ztunnel, as IPv4', { timeout: 120_000 }, async (t) => {
  const env = await makeEnv(t);
  const { b, c, z } = env.pods;
  addIpv6(env);
  const [b6, c6, z6] = [ip6(3), ip6(4), ip6(2)];
  const dp = await openDatapath({ bpffs: env.bpffs, cgroup: env.cgroup, netns: env.node });
  t.teardown(() => dp.close());
  const ztHostIfindex = withNetns(env.node, () => ifIndex(z.hostIf));
  const bHostIfindex = withNetns(env.node, () => ifIndex(b.hostIf));
  const cHostIfindex = withNetns(env.node, () => ifIndex(c.hostIf));
  dp.maps.config.set(s.defaultConfig());
  const ztunnel = (ip6: string | null): s.ZtunnelValue =>
    s.ztunnelValue({
      ip: z.ip,
      ip6,
      netnsCookie: netnsCookie(z.netns),
      hostIfindex: ztHostIfindex,
      mac: z.mac,
      hostMac: z.hostMac,
    });
  dp.maps.ztunnel.set(ztunnel(z6));
  // b is a dual-stack mesh pod: both addresses in ambpf_pods, as the loader writes them. Its netns is
  // not in ambpf_netns, so its own connections are not redirected and must come back untouched.
  for (const ip of [b.ip, b6])
    dp.maps.pods.set(ip, { netnsCookie: netnsCookie(b.netns), hostIfindex: bHostIfindex, flags: s.POD_AMBIENT });

  await t.test('tc program on crafted IPv6 frames (BPF_PROG_TEST_RUN)', async (t) => {
    const { objects } = await ensureObjects();
    const obj = BpfObject.open(objects['ambpf_inbound'] ?? '');
    t.teardown(() => obj.close());
    obj.setPinDir(env.bpffs); // the very maps the datapath filled
    obj.program('ambpf_sk_lookup').setAutoload(false);
    obj.load();
    const tc = obj.program('ambpf_tc_pod');
    const run = (data: Uint8Array, iif = cHostIfindex): { retval: number; dataOut: Uint8Array } =>
      withNetns(env.node, () => tc.testRun({ data, ctx: skbCtx(iif) }));
    const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

    const syn = run(tcp6(c6, b6, 40001, APP, SYN));
    t.equal(syn.retval, TC_ACT_REDIRECT, 'a SYN from a non-mesh client to the pod is redirected');
    t.equal(hex(syn.dataOut.subarray(0, 6)), z.mac.replaceAll(':', ''), 'dst MAC = ztunnel eth0');
    t.equal(hex(syn.dataOut.subarray(6, 12)), z.hostMac.replaceAll(':', ''), 'src MAC = ztunnel host veth');
    t.equal(run(tcp6(c6, b6, 40001, APP, ACK)).retval, TC_ACT_REDIRECT, 'later packets follow (stateless)');
    t.equal(run(tcp6(c6, b6, 9000, 40002, SYN | ACK)).retval, TC_ACT_OK, "a SYN-ACK (the pod's own SYN) passes");
    const own = { localIp: b6, remoteIp: c6, localPort: 40003, remotePort: 9000 };
    dp.maps.outflow6.set(own, 1n);
    t.equal(run(tcp6(c6, b6, 9000, 40003, ACK)).retval, TC_ACT_OK, 'a flow the pod opened (ambpf_outflow6) passes');
    dp.maps.outflow6.delete(own);
    t.equal(run(tcp6(c6, b6, 9000, 40003, ACK)).retval, TC_ACT_REDIRECT, 'once it is gone, steered again');
    t.equal(run(tcp6(z6, b6, 40004, 15008, SYN)).retval, TC_ACT_OK, "from ztunnel's IPv6 address: passes");
    t.equal(
      run(tcp6(c6, b6, 40005, APP, SYN), ztHostIfindex).retval,
      TC_ACT_OK,
      "ztunnel's spoofed leg (the client's address, from ztunnel's veth) passes",
    );
    t.equal(run(tcp6(ip6(3, 1), b6, 40006, APP, SYN), 0).retval, TC_ACT_OK, "the node's own SYN passes");
    t.equal(run(tcp6(s.PROBE_IP6, b6, 40007, APP, SYN)).retval, TC_ACT_OK, 'the IPv6 probe source passes');
    t.equal(run(tcp6(c6, ip6(9), 40008, APP, SYN)).retval, TC_ACT_OK, 'an address not in ambpf_pods passes');
    t.equal(
      run(tcp6(c6, b6, 9000, 40009, SYN | ACK, { ext: true })).retval,
      TC_ACT_REDIRECT,
      'TCP behind an extension header is steered, even what would pass as a reply (fail closed)',
    );
    t.equal(
      run(tcp6(c6, b6, 0, 0, 0, { nexthdr: NEXTHDR_ICMPV6 })).retval,
      TC_ACT_OK,
      'ICMPv6 (neighbour discovery) passes',
    );
    const clones = dp.stats().tc_rst_cloned;
    t.equal(run(tcp6(c6, b6, 9000, 40010, RST | ACK)).retval, TC_ACT_OK, 'an unknown RST reaches the pod...');
    t.equal(dp.stats().tc_rst_cloned - clones, 1n, '...and a copy goes to ztunnel');
    dp.maps.ztunnel.set(ztunnel(null));
    t.equal(
      run(tcp6(c6, b6, 40011, APP, SYN)).retval,
      TC_ACT_REDIRECT,
      'ztunnel without an IPv6 address: still steered (ztunnel refuses what it cannot serve)',
    );
    dp.maps.ztunnel.set(ztunnel(z6));
  });

  const standIn = await env.server('z', ['15006,15008', '--transparent', '--v6']);
  t.equal(
    await dp.attachZtunnel({ netnsPath: z.netns, pid: standIn.pid, hostIfname: z.hostIf }),
    'created',
    'sk_lookup link created',
  );
  const rules6 = execFileSync('ip', ['-n', z.netns.split('/').pop() ?? '', '-6', 'rule', 'show'], { encoding: 'utf8' });
  t.match(rules6, /iif eth0 lookup 100/, "the IPv6 policy rule is in ztunnel's netns");
  t.equal(dp.attachInbound(b.hostIf), 'created', 'tc link created on the pod veth');
  await env.server('c', ['9000', '--v6']);
  const app = await env.server('b', [String(APP), '--v6']);

  const connect = async (from: PodName, ip: string, port: number): Promise<ClientOut> => {
    const [out] = (await env.client(from, [ip, String(port)])) as ClientOut[];
    return out ?? { error: 'no output' };
  };

  await t.test('a non-mesh IPv6 client reaches ztunnel with the pod IPv6 as local address', async (t) => {
    const before = dp.stats();
    const plain = await connect('c', b6, APP);
    t.equal(plain.hello?.port, 15006, `assigned to the 15006 listener, not the app (${JSON.stringify(plain)})`);
    t.same(plain.hello?.local, { ip: b6, port: APP }, "the accepted socket's local address is the original");
    t.equal(plain.hello?.peer.ip, c6, "ztunnel sees the client's IPv6 address");
    const hbone = await connect('c', b6, 15008);
    t.equal(hbone.hello?.port, 15008, 'dport 15008 is assigned to the 15008 listener');
    t.same(hbone.hello?.local, { ip: b6, port: 15008 });
    const after = dp.stats();
    t.ok(after.tc_steered > before.tc_steered, 'tc_steered moved');
    t.equal(after.sklookup_assigned - before.sklookup_assigned, 2n, 'sk_lookup assigned both');
  });

  await t.test('the same dual-stack pod over IPv4: ztunnel too', async (t) => {
    const plain = await connect('c', b.ip, APP);
    t.equal(plain.hello?.port, 15006, `IPv4 lands on the same [::] listener (${JSON.stringify(plain)})`);
    t.same(plain.hello?.local, { ip: b.ip, port: APP });
  });

  await t.test("the pod's own IPv6 connections get their replies (ambpf_outflow6)", async (t) => {
    const before = dp.stats();
    const out = await connect('b', c6, 9000);
    t.equal(out.hello?.port, 9000, `reached the real server and got its answer (${JSON.stringify(out)})`);
    t.ok(dp.stats().tc_pass_pod_flow > before.tc_pass_pod_flow, "replies passed as the pod's own flow");
    t.ok(dp.stats().sockops_outflow_added > before.sockops_outflow_added, 'sockops recorded it');
    t.ok(await waitUntil(() => dp.maps.outflow6.keys().length === 0, 5000), 'its entry is gone once it closed');
  });

  await t.test("a connection the node itself opens over IPv6 (kubelet's probe) reaches the app", async (t) => {
    const before = dp.stats();
    const raw = execFileSync('nsenter', [`--net=${env.node}`, 'python3', HELPER, 'client', b6, String(APP)], {
      encoding: 'utf8',
      timeout: 30_000,
    });
    const out = JSON.parse(raw.trim().split('\n')[0] ?? '{}') as ClientOut;
    t.equal(out.hello?.port, APP, `the pod's app answered (${raw.trim()})`);
    t.equal(out.hello?.peer.ip, ip6(3, 1), "from the node's own address");
    t.equal(dp.stats().tc_steered, before.tc_steered, 'nothing steered');
  });

  await t.test('fail closed: without ztunnel listening, IPv6 does not reach the app', async (t) => {
    standIn.kill('SIGKILL');
    await standIn.exited;
    t.ok(await waitUntil(() => !dp.ztunnelListenersPresent(), 5000), "ztunnel's listeners left the sockmap");
    const before = dp.stats();
    const out = await connect('c', b6, APP);
    t.notOk(out.hello, `no answer from anyone (${JSON.stringify(out)})`);
    t.match(out.error, /refused|reset|timed out/i, 'refused in ztunnel netns');
    t.ok(dp.stats().tc_steered > before.tc_steered, 'the SYN was steered to ztunnel, not passed to the pod');
    t.equal(app.child.exitCode, null, 'the app is still listening: it was not reached');
    await dp.detachZtunnel({ netnsPath: z.netns });
    const rules = execFileSync('ip', ['-n', z.netns.split('/').pop() ?? '', '-6', 'rule', 'show'], {
      encoding: 'utf8',
    });
    t.notMatch(rules, /lookup 100/, 'the IPv6 policy rule is removed with the IPv4 one');
  });

  await t.test('uninstall (the ledger) removes the IPv6 policy route too', async (t) => {
    const again = await env.server('z', ['15006,15008', '--transparent', '--v6']);
    await dp.attachZtunnel({ netnsPath: z.netns, pid: again.pid, hostIfname: z.hostIf });
    const zns = z.netns.split('/').pop() ?? '';
    const show = (...args: string[]): string => execFileSync('ip', ['-n', zns, '-6', ...args], { encoding: 'utf8' });
    t.match(show('route', 'show', 'table', '100'), /local (::\/0|default) dev lo/, 'the IPv6 local route is there');
    dp.close();
    const report = uninstallDatapath(env.bpffs, { netns: env.node });
    t.same(report.undone.failed, [], 'nothing failed');
    t.ok(report.undone.routes.length > 0, 'the route was undone');
    t.notMatch(show('rule', 'show'), /lookup 100/, 'the IPv6 rule is gone');
    t.equal(show('route', 'show', 'table', '100').trim(), '', 'and its local route');
  });
});
