// `ambpf pods` and `ambpf status` against a real datapath of our own (test/bpf/env.ts: node netns,
// pod netns + veths, a cgroup subtree, a bpffs dir; all removed in teardown), with entries this test
// writes, a state file it writes, an inbound tc link, and counters moved by a real redirected
// connect. The commands run as the operator would: bin/ambpf inside the node's netns.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ifIndex, netnsCookie, withNetns } from '../../src/libbpf/index.ts';
import { openDatapath } from '../../src/bpf/datapath.ts';
import * as s from '../../src/bpf/schema.ts';
import type { StateFile } from '../../src/state/state-file.ts';
import type { PodsReport } from '../../src/status/pods.ts';
import type { StatusReport } from '../../src/status/status.ts';
import { makeEnv } from '../bpf/env.ts';

function ambpf(netns: string | null, args: string[]): { code: number | null; stdout: string; stderr: string } {
  const argv = netns ? ['nsenter', `--net=${netns}`, 'bin/ambpf', ...args] : ['bin/ambpf', ...args];
  const r = spawnSync(argv[0]!, argv.slice(1), {
    encoding: 'utf8',
    timeout: 60_000,
    env: { ...process.env, AMBPF_LOG_LEVEL: 'error' },
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

t.test('pods and status on a datapath of our own', { timeout: 240_000 }, async (t) => {
  const env = await makeEnv(t);
  const { a, b, c, z } = env.pods;
  const dir = mkdtempSync(join(tmpdir(), `${env.prefix}-state-`));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const stateFile = join(dir, 'state.json');

  // ambpf_pods sized 4 so that four entries put it under pressure.
  const dp = await openDatapath({ bpffs: env.bpffs, cgroup: env.cgroup, netns: env.node, mapSizes: { ambpf_pods: 4 } });
  t.teardown(() => dp.close());
  const idx = (ifname: string): number => withNetns(env.node, () => ifIndex(ifname));
  const cookieA = netnsCookie(a.netns);
  const cookieB = netnsCookie(b.netns);
  const cookieZ = netnsCookie(z.netns);
  dp.maps.config.set(s.defaultConfig());
  dp.maps.pods.set(a.ip, { netnsCookie: cookieA, hostIfindex: idx(a.hostIf), flags: s.POD_AMBIENT });
  dp.maps.pods.set(b.ip, { netnsCookie: cookieB, hostIfindex: idx(b.hostIf), flags: s.POD_AMBIENT | s.POD_OPT_OUT });
  // Two entries the state file does not know (drift); the first names c's veth only by index.
  dp.maps.pods.set('198.18.9.9', {
    netnsCookie: 77n,
    hostIfindex: idx(c.hostIf),
    flags: s.POD_AMBIENT | s.POD_DNS_CAPTURE,
  });
  dp.maps.pods.set('198.18.9.10', { netnsCookie: 78n, hostIfindex: 0, flags: 0x40 });
  dp.maps.netns.set(cookieA, { podIp: a.ip, flags: s.POD_AMBIENT });
  dp.maps.netns.set(cookieZ, { podIp: z.ip, flags: s.POD_IS_ZTUNNEL });
  dp.maps.ztunnel.set(
    s.ztunnelValue({ ip: z.ip, netnsCookie: cookieZ, hostIfindex: idx(z.hostIf), mac: z.mac, hostMac: z.hostMac }),
  );
  t.equal(dp.attachInbound(a.hostIf), 'created', "inbound tc link on a's host veth");

  const state: StateFile = {
    node: 'node-1',
    updatedAt: new Date(Date.now() - 5000).toISOString(),
    ztunnel: { name: 'ztunnel-x', namespace: 'istio-system', ips: [z.ip] },
    pods: [
      { name: 'client', namespace: 'shop', uid: 'u-a', ips: [a.ip], hostIfname: a.hostIf },
      { name: 'server', namespace: 'shop', uid: 'u-b', ips: [b.ip], hostIfname: b.hostIf },
      { name: 'ghost', namespace: 'shop', uid: 'u-g', ips: ['198.18.8.8'], hostIfname: null },
    ],
    problems: [{ object: 'pod shop/ghost', reason: 'no process of the pod found on this node' }],
  };
  writeFileSync(stateFile, JSON.stringify(state));

  // A real redirected connect moves connect4/getsockopt counters.
  await env.server('z', ['15001', '--v6']);
  await env.server('c', ['80']);
  const [out] = (await env.client('a', [c.ip, '80'])) as Array<{ hello?: { port: number } }>;
  t.equal(out?.hello?.port, 15001, 'the client was redirected to ztunnel');

  const common = ['--bpffs', env.bpffs, '--state-file', stateFile];

  await t.test('ambpf pods: plain table', async (t) => {
    const r = ambpf(env.node, ['pods', ...common]);
    t.equal(r.code, 0, r.stderr);
    const line = (ip: string): string => r.stdout.split('\n').find((l) => l.startsWith(`${ip} `)) ?? '';
    t.match(
      line(a.ip),
      new RegExp(`^${a.ip}\\s+shop/client\\s+node-1\\s+${cookieA}\\s+${a.hostIf} \\(${idx(a.hostIf)}\\)\\s+ambient$`),
    );
    t.match(
      line(b.ip),
      new RegExp(
        `shop/server\\s+node-1\\s+${cookieB}\\s+${b.hostIf} \\(${idx(b.hostIf)}\\)\\s+ambient,opt-out\\s+no ambpf_netns entry$`,
      ),
    );
    t.match(
      line('198.18.9.9'),
      new RegExp(
        `^198\\.18\\.9\\.9\\s+-\\s+-\\s+77\\s+${c.hostIf} \\(${idx(c.hostIf)}\\)\\s+ambient,dns-capture\\s+DRIFT: in map, not in state file$`,
      ),
      'an unnamed entry: its interface resolved from the index in the node netns',
    );
    t.match(
      line('198.18.9.10'),
      /^198\.18\.9\.10\s+-\s+-\s+78\s+- \(0\)\s+0x40\s+DRIFT: in map, not in state file$/,
      'an unknown flag bit stays visible',
    );
    t.match(
      line('198.18.8.8'),
      /^198\.18\.8\.8\s+shop\/ghost\s+node-1\s+-\s+-\s+-\s+DRIFT: in state file, not in map \(ambpf_pods is full: it may not fit; raise --max-pods\)$/,
      'ambpf_pods (sized 4) is full: the note says the pod may not have fit',
    );
    t.match(r.stdout, /^POD IP\s+POD\s+NODE\s+NETNS COOKIE\s+HOST IF \(INDEX\)\s+FLAGS\s+NOTE\n/);
    t.match(r.stdout, /4 entries in ambpf_pods; state file .* updated .*\. 3 drifted/);
    const ips = r.stdout
      .split('\n')
      .slice(1)
      .map((l) => l.split(' ')[0])
      .filter((x) => x && /^\d+\.\d+\.\d+\.\d+$/.test(x));
    t.same(ips, [a.ip, b.ip, '198.18.8.8', '198.18.9.9', '198.18.9.10'], 'sorted by address');
  });

  await t.test('ambpf pods -j', async (t) => {
    const r = ambpf(env.node, ['pods', '-j', ...common]);
    t.equal(r.code, 0, r.stderr);
    const j = JSON.parse(r.stdout) as PodsReport;
    t.equal(j.stateFound, true);
    t.equal(j.drift, 3);
    t.equal(j.podsMapFull, true);
    const byIp = new Map(j.pods.map((p) => [p.ip, p]));
    t.same(byIp.get(a.ip), {
      ip: a.ip,
      netnsCookie: String(cookieA),
      hostIfindex: idx(a.hostIf),
      hostIfname: a.hostIf,
      flags: ['ambient'],
      netnsEntry: true,
      name: 'client',
      namespace: 'shop',
      node: 'node-1',
      drift: null,
      zds: null,
      zdsError: null,
    });
    t.equal(byIp.get(b.ip)?.netnsEntry, false);
    t.equal(byIp.get('198.18.9.9')?.drift, 'not-in-state-file');
    t.equal(byIp.get('198.18.8.8')?.drift, 'not-in-map');
    t.equal(byIp.get('198.18.8.8')?.netnsCookie, null);
  });

  await t.test('ambpf pods without a state file: names unknown, no drift claimed', async (t) => {
    const r = ambpf(env.node, ['pods', '--bpffs', env.bpffs, '--state-file', join(dir, 'none.json')]);
    t.equal(r.code, 0, r.stderr);
    t.notMatch(r.stdout, /DRIFT/);
    t.notMatch(r.stdout, /198\.18\.8\.8/, 'nothing to say about pods only the state file knows');
    t.match(r.stdout, /4 entries in ambpf_pods\. No state file at .*none\.json: pod names unknown, drift not checked/);
    const bad = join(dir, 'bad.json');
    writeFileSync(bad, '{"node": ');
    const rb = ambpf(env.node, ['pods', '--bpffs', env.bpffs, '--state-file', bad]);
    t.equal(rb.code, 1);
    t.match(rb.stderr, /^ambpf: the state file .*bad\.json is not valid JSON/);
  });

  await t.test('ambpf status: plain', async (t) => {
    const r = ambpf(env.node, ['status', ...common]);
    t.equal(r.code, 0, r.stderr);
    for (const [hook, prog] of [
      ['connect4', 'ambpf_connect4'],
      ['getsockopt', 'ambpf_getsopt'],
      ['sockops', 'ambpf_sockops'],
    ]) {
      t.match(
        r.stdout,
        new RegExp(`\\n  ${hook}\\s+cgroup\\s+\\d+\\s+\\d+\\s+${prog}\\s+cgroup ${env.cgroup}\\n`),
        `${hook} on our cgroup`,
      );
    }
    t.match(
      r.stdout,
      new RegExp(
        `\\n  tc-${a.hostIf}\\s+tcx\\s+\\d+\\s+\\d+\\s+ambpf_tc_pod\\s+${a.hostIf} \\(ifindex ${idx(a.hostIf)}, egress\\)\\n`,
      ),
    );
    t.match(r.stdout, /\n {2}sk_msg\s+prog_attach\s+-\s+\d+\s+ambpf_skmsg\s+sockhash ambpf_sockhash\n/);
    t.match(r.stdout, /Attached \(8 of 8\):/);
    t.notMatch(r.stdout, /PROBLEM/);
    t.match(r.stdout, /\n {2}ambpf_pods\s+4\s+4\s+0\s+100\.0%\s+PRESSURE\n/);
    t.match(r.stdout, /\n {2}ambpf_netns\s+2\s+\d+\s+0\s+[\d.]+%\n/);
    t.match(r.stdout, /\n {2}ambpf_pair_dst\s+\d+\s+\d+/);
    t.match(r.stdout, /\n {2}ambpf_outflow\s+\d+\s+\d+/);
    t.match(
      r.stdout,
      new RegExp(
        `ztunnel: ${z.ip} READY, ports out 15001 in 15006 hbone 15008 dns 15053, mark 0x539/0xfff, host ifindex ${idx(z.hostIf)}`,
      ),
    );
    t.match(r.stdout, /\n {2}connect4\s+redirected [1-9]\d*/);
    t.match(r.stdout, /\n {2}getsockopt\s+answered [1-9]/);
    t.notMatch(r.stdout, / 0(,|\n)/, 'zero counters are left out');
    t.match(
      r.stdout,
      /Last reconcile: \S+ \(\d+ s ago\), node node-1, 3 ambient pods, 1 problem:\n {2}- pod shop\/ghost: no process of the pod found on this node/,
    );
  });

  await t.test('ambpf status -j', async (t) => {
    const r = ambpf(env.node, ['status', '-j', ...common]);
    t.equal(r.code, 0, r.stderr);
    const j = JSON.parse(r.stdout) as StatusReport;
    t.same(
      j.links.map((l) => l.hook).sort(),
      [
        'connect4',
        'connect6',
        'getpeername4',
        'getpeername6',
        'getsockopt',
        'sk_msg',
        'sockops',
        `tc-${a.hostIf}`,
      ].sort(),
    );
    t.ok(j.links.every((l) => l.progId !== null && l.problem === null));
    t.same(
      j.maps.find((m) => m.map === 'ambpf_pods'),
      { map: 'ambpf_pods', entries: 4, maxEntries: 4, fill: 1, pressure: true, failedInserts: 0 },
    );
    t.equal(j.ztunnel?.ready, true);
    t.equal(j.ztunnel?.ip, z.ip);
    t.ok(Number(j.counters['connect4']?.['redirected']) >= 1);
    t.equal(j.reconcile.node, 'node-1');
    t.ok((j.reconcile.ageSeconds ?? -1) >= 5);
    t.equal(j.reconcile.problems.length, 1);
  });

  await t.test('status follows the kernel: ztunnel cleared, link gone', async (t) => {
    dp.maps.ztunnel.clear();
    dp.detachInbound(a.hostIf);
    const r = ambpf(env.node, ['status', ...common]);
    t.equal(r.code, 0, r.stderr);
    t.match(r.stdout, /ztunnel: unknown \(nothing is redirected/);
    t.notMatch(r.stdout, /tc-/);
    t.match(r.stdout, /Attached \(7 of 7\):/);
  });
});

t.test('not installed: a clear sentence and exit 1', async (t) => {
  const dir = `/sys/fs/bpf/${(await import('../helpers/prefix.ts')).testPrefix()}-none`;
  for (const cmd of ['status', 'pods']) {
    const r = ambpf(null, [cmd, '--bpffs', dir]);
    t.equal(r.code, 1, `${cmd} exits 1`);
    t.equal(r.stdout, '');
    t.equal(
      r.stderr,
      `ambpf: ambpf is not installed under ${dir}: run \`ambpf run --bpffs ${dir}\` first, or pass the --bpffs directory it runs with.\n`,
    );
  }
  mkdirSync(dir);
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  t.match(
    ambpf(null, ['status', '--bpffs', dir]).stderr,
    /is not installed under/,
    'an empty directory is not an install',
  );
  const usage = ambpf(null, ['status', '--bogus']);
  t.equal(usage.code, 2);
  t.match(usage.stderr, /Unknown option '--bogus'; see ambpf status --help/);
  const help = ambpf(null, ['pods', '--help']);
  t.equal(help.code, 0);
  t.match(help.stdout, /^Usage: ambpf pods \[--bpffs DIR\] \[--state-file F\] \[-j\]/);
});
