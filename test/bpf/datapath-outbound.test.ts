// Outbound datapath on the real kernel, with real sockets: connect4 rewrite to ztunnel:15001,
// SO_ORIGINAL_DST via getsockopt, getpeername restored, bypasses, 10,000 reused tuples, splice
// integrity, restart adoption. Environment: test/bpf/env.ts (netns + cgroups of our own).
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { BpfMap, netnsCookie, ifIndex, withNetns } from '../../src/libbpf/index.ts';
import { openDatapath, uninstallDatapath, type Datapath } from '../../src/bpf/datapath.ts';
import { existsSync } from 'node:fs';
import * as s from '../../src/bpf/schema.ts';
import { makeEnv, type Addr, type Hello } from './env.ts';
import { ERRNO } from '../../src/errors.ts';

interface ClientOut {
  peername: Addr;
  sockname: Addr;
  hello: Hello;
  sha?: string;
  sha_local?: string;
  error?: string;
}

t.test('outbound datapath in a netns + cgroup of our own', { timeout: 290_000 }, async (t) => {
  const env = await makeEnv(t);
  const { a, z, c } = env.pods;
  const cookieA = netnsCookie(a.netns);
  const cookieZ = netnsCookie(z.netns);

  const dp: Datapath = await openDatapath({ bpffs: env.bpffs, cgroup: env.cgroup, netns: env.node });
  t.teardown(() => dp.close());
  t.same(Object.values(dp.links), Array(6).fill('created'), 'six cgroup links created on first open');

  const ztHostIfindex = withNetns(env.node, () => ifIndex(z.hostIf));
  const ztunnel = s.ztunnelValue({
    ip: z.ip,
    netnsCookie: cookieZ,
    hostIfindex: ztHostIfindex,
    mac: z.mac,
    hostMac: z.hostMac,
  });
  dp.maps.config.set(s.defaultConfig({ excludedPorts: [81], nodeIps: ['198.18.1.1'] }));
  dp.maps.netns.set(cookieA, { podIp: a.ip, flags: s.POD_AMBIENT });
  dp.maps.netns.set(cookieZ, { podIp: z.ip, flags: s.POD_IS_ZTUNNEL });
  dp.maps.ztunnel.set(ztunnel);

  // ztunnel's outbound listener is dual-stack ([::]:15001) like Node's default: peers are v4-mapped.
  await env.server('z', ['15001', '--v6']);
  await env.server('c', ['80,81']);
  await env.server('a', ['7000']);

  const connect = async (host: string, port: number, extra: string[] = []): Promise<ClientOut> => {
    const [out] = (await env.client('a', [host, String(port), ...extra])) as ClientOut[];
    if (!out || out.error) throw new Error(`client failed: ${JSON.stringify(out)}`);
    return out;
  };

  await t.test('a connect from an ambient pod lands on ztunnel:15001 with the original dst', async (t) => {
    const before = dp.stats();
    const out = await connect(c.ip, 80);
    t.equal(out.hello.port, 15001, 'accepted by the 15001 listener');
    t.same(out.hello.orig, { ip: c.ip, port: 80 }, 'getsockopt(SO_ORIGINAL_DST) gives the original');
    t.equal(out.hello.peer.ip, a.ip, 'ztunnel sees the pod IP as source');
    t.same(out.peername, { ip: c.ip, port: 80 }, 'getpeername in the client shows the original');
    const after = dp.stats();
    t.ok(after.connect4_redirected > before.connect4_redirected, 'connect4_redirected moved');
    t.ok(after.getsockopt_answered > before.getsockopt_answered, 'getsockopt_answered moved');
    t.ok(after.getpeername_restored > before.getpeername_restored, 'getpeername_restored moved');
    t.ok(after.sockops_pair_closed > before.sockops_pair_closed, 'pair entry deleted at close');
  });

  await t.test('a dual-stack client (v4-mapped dst) goes through connect6 the same way', async (t) => {
    const before = dp.stats();
    const out = await connect(`::ffff:${c.ip}`, 80);
    t.equal(out.hello.port, 15001, 'accepted by the 15001 listener');
    t.same(out.hello.orig, { ip: c.ip, port: 80 }, 'SO_ORIGINAL_DST gives the original');
    t.same(out.peername, { ip: c.ip, port: 80 }, 'getpeername (v6) shows the original');
    t.equal(dp.stats().connect6_redirected - before.connect6_redirected, 1n, 'connect6_redirected moved');
  });

  await t.test('bypasses go where the app asked', async (t) => {
    const before = dp.stats();
    t.equal((await connect(c.ip, 80, ['--mark', String(0x539)])).hello.port, 80, 'mark 0x539 is not redirected');
    t.equal((await connect(c.ip, 81)).hello.port, 81, 'excluded port 81 is not redirected');
    t.equal((await connect('127.0.0.1', 7000)).hello.port, 7000, 'loopback is not redirected');
    t.equal(
      await connect('198.18.1.1', 7000).catch(() => null),
      null,
      'node IP is not redirected (nothing listens there)',
    );
    const after = dp.stats();
    t.equal(after.connect4_bypass_mark - before.connect4_bypass_mark, 1n);
    t.equal(after.connect4_bypass_port - before.connect4_bypass_port, 1n);
    t.equal(after.connect4_bypass_dst - before.connect4_bypass_dst, 2n);

    dp.maps.netns.delete(cookieA);
    t.equal((await connect(c.ip, 80)).hello.port, 80, 'a netns not in ambpf_netns is not redirected');
    dp.maps.netns.set(cookieA, { podIp: a.ip, flags: s.POD_AMBIENT | s.POD_OPT_OUT });
    t.equal((await connect(c.ip, 80)).hello.port, 80, 'an opted-out pod is not redirected');
    dp.maps.netns.set(cookieA, { podIp: a.ip, flags: s.POD_AMBIENT });

    dp.maps.ztunnel.clear();
    t.equal((await connect(c.ip, 80)).hello.port, 80, 'nothing is redirected while ztunnel is unknown');
    dp.maps.ztunnel.set(ztunnel);
    t.equal((await connect(c.ip, 80)).hello.port, 15001, 'redirected again once ztunnel is known');
    t.ok(dp.stats().connect4_no_ztunnel > before.connect4_no_ztunnel, 'connect4_no_ztunnel moved');
  });

  await t.test('getsockopt leaves other options and unknown sockets alone', async (t) => {
    // The direct server's accepted socket (no pair entry): SO_ORIGINAL_DST fails as without ambpf.
    const out = await connect(c.ip, 80, ['--mark', String(0x539)]);
    t.ok(
      out.hello.orig !== null && 'error' in out.hello.orig,
      `no answer for a socket ambpf did not redirect (${JSON.stringify(out.hello.orig)})`,
    );
  });

  await t.test("a getsockopt bigger than a page gets the kernel's answer, not EFAULT", async (t) => {
    // The kernel's own answer is ENOPROTOOPT (no LSM label) or success; before Linux 6.5 a program
    // that leaves optlen alone turns it into EFAULT (the matrix's 5.10 run shows that; this kernel
    // tolerates it, so here this guards the behaviour rather than reproducing the old failure).
    const [r] = (await env.helper('a', ['bigopt'])) as Array<{ ok?: true; errno?: number }>;
    t.ok(r?.ok === true || r?.errno === ERRNO.ENOPROTOOPT, `SO_PEERSEC with a 16 KiB buffer: ${JSON.stringify(r)}`);
  });

  await t.test(
    '10,000 sequential connections with reused ports: 0 wrong SO_ORIGINAL_DST',
    { timeout: 240_000 },
    async (t) => {
      withNetns(a.netns, () => execFileSync('sysctl', ['-q', '-w', 'net.ipv4.ip_local_port_range=40000 40099']));
      const [sum] = (await env.client(
        'a',
        ['0', '0', '--vary', '--count', '10000', '--ttl', '150'],
        200_000,
      )) as Array<{
        done: number;
        wrong: number;
        errors: number;
        distinct_ports: number;
        examples: unknown[];
      }>;
      t.ok(sum, 'the client reported');
      if (!sum) return;
      t.equal(sum.done, 10000, 'all connections ran within the time bound');
      t.equal(sum.errors, 0, `no connection failed ${JSON.stringify(sum.examples)}`);
      t.equal(sum.wrong, 0, `no wrong original dst ${JSON.stringify(sum.examples)}`);
      t.ok(sum.distinct_ports <= 100, `ports were reused (${sum.distinct_ports} distinct for 10,000 connections)`);
      t.ok(dp.maps.pairs.keys().length < 10, 'closed connections left no pair entries');
    },
  );

  await t.test('same-node splice: bulk is spliced, small first writes are not, bytes intact', async (t) => {
    const before = dp.stats();
    const big = await connect(c.ip, 80, ['--send', String(8 << 20), '--chunk', '65536']);
    t.equal(big.sha, big.sha_local, '8 MiB in 64 KiB writes arrive intact');
    const mid = dp.stats();
    t.ok(mid.skmsg_spliced_bytes - before.skmsg_spliced_bytes >= BigInt(8 << 20), 'the bulk bytes took the splice');
    const small = await connect(c.ip, 80, ['--send', '200000', '--chunk', '1024']);
    t.equal(small.sha, small.sha_local, '200 KB in 1 KiB writes arrive intact');
    const after = dp.stats();
    // Its first write is 1 KiB (< splice_min_bytes): the direction is decided "pass" for good.
    t.equal(after.skmsg_spliced_bytes, mid.skmsg_spliced_bytes, 'a connection that starts small is never spliced');
    t.ok(after.skmsg_passed > mid.skmsg_passed, 'skmsg_passed moved');
  });

  await t.test('a restart adopts the pinned links: no duplicate attachment', async (t) => {
    const again = await openDatapath({ bpffs: env.bpffs, cgroup: env.cgroup, netns: env.node });
    t.same(Object.values(again.links), Array(6).fill('adopted'), 'all six links adopted');
    again.close();
    const shown = JSON.parse(
      execFileSync('bpftool', ['-j', 'cgroup', 'show', env.cgroup], { encoding: 'utf8' }),
    ) as Array<{ name: string }>;
    t.equal(shown.length, 6, `exactly six programs on the cgroup (${shown.map((p) => p.name).join(', ')})`);
    t.equal((await connect(c.ip, 80)).hello.port, 15001, 'still redirected with only pins holding the datapath');
  });

  await t.test('uninstall detaches and unpins everything under bpffs', async (t) => {
    dp.close();
    // A node upgraded from a version that pinned the retired ambpf_inflow still has that pin.
    using retired = BpfMap.create('lru_hash', s.LAYOUT.ambpf_flow4.size, 8, 1, { name: 'ambpf_inflow' });
    retired.pin(`${env.bpffs}/ambpf_inflow`);
    const report = uninstallDatapath(env.bpffs);
    t.equal(report.links.length, 6, `links removed: ${report.links.join(', ')}`);
    t.equal(report.maps.length, 12, 'all eleven maps and the retired one unpinned');
    t.ok(report.maps.includes('ambpf_inflow'), "the retired map's pin is gone too");
    const shown = JSON.parse(
      execFileSync('bpftool', ['-j', 'cgroup', 'show', env.cgroup], { encoding: 'utf8' }).trim() || '[]',
    ) as unknown[];
    t.equal(shown.length, 0, 'no program left on the cgroup');
    t.notOk(existsSync(env.bpffs), 'the bpffs directory is gone');
    t.equal((await connect(c.ip, 80)).hello.port, 80, 'connections go direct again');
  });
});
