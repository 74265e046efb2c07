// Leave nothing (issue 19 item 5): every sysctl ambpf changes is put back to the value it found, and
// `ambpf uninstall` removes every rule and route it added, in the netns where it added them, the state
// file and its ledger, and says what it removed. Real netns, real sysctls, the real CLI.
import t from 'tap';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ifIndex, netnsCookie, withNetns } from '../../src/libbpf/index.ts';
import { openDatapath } from '../../src/bpf/datapath.ts';
import { ORIG_SRC_ROUTE_TABLE, ORIG_SRC_RULE_PREF, setOrigSrcReturnPath } from '../../src/bpf/return-path.ts';
import { ledgerPath, readLedger, readNetSysctl, writeNetSysctl } from '../../src/bpf/sysctl.ts';
import * as s from '../../src/bpf/schema.ts';
import { testPrefix } from '../helpers/prefix.ts';
import { makeEnv } from './env.ts';

const ip = (args: string[]): string => execFileSync('ip', args, { encoding: 'utf8' });

t.test('a pod released gets back the sysctls it had, not 0', async (t) => {
  const prefix = testPrefix();
  const ns = `${prefix}p`;
  ip(['netns', 'add', ns]);
  t.teardown(() => ip(['netns', 'del', ns]));
  ip(['-n', ns, 'link', 'set', 'lo', 'up']);
  const path = `/run/netns/${ns}`;
  const dir = mkdtempSync(join(tmpdir(), `${prefix}-ledger-`));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const ledger = join(dir, 'changes.json');
  const hasMigrate = withNetns(path, () => existsSync('/proc/sys/net/ipv4/tcp_migrate_req'));
  // The pod had tcp_fwmark_accept on by itself; tcp_migrate_req off.
  withNetns(path, () => writeNetSysctl('ipv4/tcp_fwmark_accept', '1'));

  setOrigSrcReturnPath(path, true, ledger);
  t.equal(
    withNetns(path, () => readNetSysctl('ipv4/tcp_fwmark_accept')),
    '1',
  );
  if (hasMigrate)
    t.equal(
      withNetns(path, () => readNetSysctl('ipv4/tcp_migrate_req')),
      '1',
      'tcp_migrate_req on',
    );
  t.match(
    ip(['-n', ns, '-4', 'rule', 'show', 'pref', String(ORIG_SRC_RULE_PREF)]),
    `lookup ${ORIG_SRC_ROUTE_TABLE}`,
    'the return rule is there',
  );
  const recorded = readLedger(ledger);
  t.notOk(
    recorded.some((e) => e.kind === 'sysctl' && e.rel === 'ipv4/tcp_fwmark_accept'),
    'a sysctl that already had the value is not recorded',
  );
  if (hasMigrate)
    t.ok(
      recorded.some((e) => e.kind === 'sysctl' && e.rel === 'ipv4/tcp_migrate_req' && e.found === '0'),
      'the value found is recorded',
    );
  t.ok(
    recorded.some((e) => e.kind === 'route' && e.what === 'inpod-return' && e.netnsPath === path),
    'so is the route',
  );

  setOrigSrcReturnPath(path, true, ledger); // a restarted loader arms the pod again
  if (hasMigrate)
    t.ok(
      readLedger(ledger).some((e) => e.kind === 'sysctl' && e.rel === 'ipv4/tcp_migrate_req' && e.found === '0'),
      'its own write is not taken for the value found',
    );

  setOrigSrcReturnPath(path, false, ledger);
  t.equal(
    withNetns(path, () => readNetSysctl('ipv4/tcp_fwmark_accept')),
    '1',
    'tcp_fwmark_accept stays as the pod had it (it used to be reset to 0)',
  );
  if (hasMigrate)
    t.equal(
      withNetns(path, () => readNetSysctl('ipv4/tcp_migrate_req')),
      '0',
      'tcp_migrate_req back to 0, as found',
    );
  t.notMatch(
    ip(['-n', ns, '-4', 'rule', 'show', 'pref', String(ORIG_SRC_RULE_PREF)]),
    `lookup ${ORIG_SRC_ROUTE_TABLE}`,
    'the rule is gone',
  );
  t.equal(ip(['-n', ns, '-4', 'route', 'show', 'table', String(ORIG_SRC_ROUTE_TABLE)]).trim(), '', 'and its table');
  t.notOk(existsSync(ledger), 'nothing left in the ledger: the file is gone');
});

t.test(
  'ambpf uninstall restores rp_filter, removes the policy route where it was added, the state file, and says so',
  { timeout: 120_000 },
  async (t) => {
    const env = await makeEnv(t);
    const { z, a } = env.pods;
    const dir = mkdtempSync(join(tmpdir(), `${env.prefix}-run-`));
    t.teardown(() => rmSync(dir, { recursive: true, force: true }));
    const ledger = ledgerPath(env.bpffs, dir); // next to the state file, as `ambpf run` keeps it
    const hostRp = `ipv4/conf/${z.hostIf}/rp_filter`;
    withNetns(env.node, () => writeNetSysctl(hostRp, '2')); // the node's own choice, loose mode

    const dp = await openDatapath({ bpffs: env.bpffs, cgroup: env.cgroup, netns: env.node, ledger });
    t.teardown(() => dp.close());
    dp.maps.config.set(s.defaultConfig());
    dp.maps.ztunnel.set(
      s.ztunnelValue({
        ip: z.ip,
        netnsCookie: netnsCookie(z.netns),
        hostIfindex: withNetns(env.node, () => ifIndex(z.hostIf)),
        mac: z.mac,
        hostMac: z.hostMac,
      }),
    );
    const standIn = await env.server('z', ['15006,15008', '--transparent']);
    // A non-default table and preference: uninstall must remove what was added, not eth0/table 100.
    await dp.attachZtunnel({ netnsPath: z.netns, pid: standIn.pid, hostIfname: z.hostIf, table: 177, pref: 177 });
    dp.attachInbound(a.hostIf);
    t.equal(
      withNetns(env.node, () => readNetSysctl(hostRp)),
      '0',
      "rp_filter off on ztunnel's host veth",
    );
    t.match(
      ip(['-n', z.netns.replace('/run/netns/', ''), '-4', 'rule', 'show', 'pref', '177']),
      'lookup 177',
      "the policy rule is in ztunnel's netns",
    );
    const stateFile = join(dir, 'state.json');
    writeFileSync(stateFile, '{}');
    dp.close();

    const r = spawnSync(
      'nsenter',
      [`--net=${env.node}`, 'bin/ambpf', 'uninstall', '--bpffs', env.bpffs, '--state-file', stateFile, '-j'],
      {
        encoding: 'utf8',
        timeout: 60_000,
        env: { ...process.env, AMBPF_LOG_LEVEL: 'error' },
      },
    );
    t.equal(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout) as {
      links: string[];
      maps: string[];
      sysctls: string[];
      routes: string[];
      stateFile: string | null;
      failed: string[];
    };
    t.ok(out.links.includes('sk_lookup') && out.links.includes(`tc-${a.hostIf}`), 'links detached');
    t.ok(out.maps.includes('ambpf_pods'), 'maps unpinned');
    t.same(
      out.sysctls,
      [`net.ipv4.conf.${z.hostIf}.rp_filter=2 in ${env.node}`],
      'the sysctl restored, named with its value',
    );
    t.same(
      out.routes,
      [`ip rule pref 177 iif eth0 lookup 177 + local route in table 177 in ${z.netns}`],
      'the route removed, named where',
    );
    t.equal(out.stateFile, stateFile, 'the state file removed');
    t.same(out.failed, []);

    t.equal(
      withNetns(env.node, () => readNetSysctl(hostRp)),
      '2',
      'rp_filter is back to what the node had',
    );
    t.notMatch(
      ip(['-n', z.netns.replace('/run/netns/', ''), '-4', 'rule', 'show', 'pref', '177']),
      'lookup 177',
      'the rule is gone',
    );
    t.equal(
      ip(['-n', z.netns.replace('/run/netns/', ''), '-4', 'route', 'show', 'table', '177']).trim(),
      '',
      'and its route',
    );
    t.notOk(existsSync(stateFile), 'no state file');
    t.notOk(existsSync(ledger), 'no ledger');
    t.notOk(existsSync(env.bpffs), 'no pins');

    const again = spawnSync(
      'nsenter',
      [`--net=${env.node}`, 'bin/ambpf', 'uninstall', '--bpffs', env.bpffs, '--state-file', stateFile],
      {
        encoding: 'utf8',
        timeout: 60_000,
        env: { ...process.env, AMBPF_LOG_LEVEL: 'error' },
      },
    );
    t.equal(again.status, 0, 'a second uninstall is fine');
    t.equal(again.stdout, `nothing of ambpf's under ${env.bpffs}\n`);
  },
);
