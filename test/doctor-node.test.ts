// `ambpf doctor`'s node checks (issue 19 items 3 and 5): the sysctls the datapath depends on, each
// with what to set; the node's pod capacity against the per-pod maps, or a plain "cannot tell".
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  capacityCheck,
  kubeletMaxPods,
  sysctlChecks,
  ztunnelCgroupCheck,
  KUBELET_DEFAULT_MAX_PODS,
} from '../src/doctor/node.ts';
import { ztunnelCgroupFile, type ZtunnelCgroupReport } from '../src/agent/ztunnel-cgroup.ts';
import type { DoctorReport } from '../src/doctor/report.ts';
import { testPrefix } from './helpers/prefix.ts';

const tmp = (t: { teardown(fn: () => void): void }): string => {
  const dir = mkdtempSync(join(tmpdir(), `${testPrefix()}-doctor-`));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
};

t.test('sysctls: each wrong one says what to set and why', async (t) => {
  const values: Record<string, string> = {
    'net.ipv4.conf.all.rp_filter': '1',
    'net.ipv4.ip_default_ttl': '64',
    'net.core.bpf_jit_enable': '1',
  };
  const checks = sysctlChecks((n) => values[n]);
  const rp = checks.find((c) => c.name === 'net.ipv4.conf.all.rp_filter');
  t.equal(rp?.ok, false);
  t.match(rp?.detail, /^1; set net\.ipv4\.conf\.all\.rp_filter=0 .*ztunnel's replies/);
  t.equal(checks.find((c) => c.name === 'net.ipv4.ip_default_ttl')?.ok, true);
  t.match(
    checks.find((c) => c.name === 'net.ipv4.tcp_migrate_req'),
    { ok: false, detail: /^not present on this kernel: .*5\.14/ },
  );
  t.ok(
    checks.every((c) => c.advisory),
    'warnings, not missing features',
  );
  values['net.ipv4.ip_default_ttl'] = '128';
  t.match(
    sysctlChecks((n) => values[n]).find((c) => c.name === 'net.ipv4.ip_default_ttl')?.detail,
    /set net\.ipv4\.ip_default_ttl=64/,
  );
});

t.test('pod capacity: kubelet maxPods against the maps, or why it cannot tell', async (t) => {
  const dir = tmp(t);
  const bpffs = join(dir, 'no-pins'); // nothing pinned: the configured sizes count
  const cfg = join(dir, 'config.yaml');
  writeFileSync(cfg, 'apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nmaxPods: 250\n');
  t.same(kubeletMaxPods(cfg), { maxPods: 250, from: cfg });
  t.match(capacityCheck({ bpffs, kubeletConfig: cfg }), {
    ok: true,
    detail: /at most 250 pods .* the maps hold 16384/,
  });
  const small = capacityCheck({ bpffs, kubeletConfig: cfg, maxPods: 100 });
  t.equal(small.ok, false, '--max-pods 100 < maxPods 250');
  t.match(small.detail, /may run 250 pods .* hold only 100 .* --max-pods >= 250/);
  writeFileSync(cfg, 'kind: KubeletConfiguration\n');
  t.same(kubeletMaxPods(cfg), { maxPods: KUBELET_DEFAULT_MAX_PODS, from: `${cfg} (no maxPods: kubelet's default)` });
  writeFileSync(cfg, 'maxPods: lots\n');
  t.match(kubeletMaxPods(cfg), { why: /maxPods is not a positive integer/ });
  const unknown = capacityCheck({ bpffs, kubeletConfig: join(dir, 'absent.yaml') });
  t.equal(unknown.ok, false);
  t.match(
    unknown.detail,
    /^cannot tell the node's pod capacity: cannot read .*absent\.yaml \(ENOENT\); pass --kubelet-config F or --node-max-pods N/,
  );
  t.match(capacityCheck({ bpffs, nodeMaxPods: 20000 }), {
    ok: false,
    detail: /may run 20000 pods \(--node-max-pods\)/,
  });
});

t.test('ambpf doctor: warnings do not change the exit status; the flags reach the checks', async (t) => {
  const dir = tmp(t);
  const cfg = join(dir, 'config.yaml');
  writeFileSync(cfg, 'maxPods: 300\n');
  const stateFile = join(dir, 'state.json');
  const zt: ZtunnelCgroupReport = {
    attach: '/sys/fs/cgroup/kubepods',
    updatedAt: new Date().toISOString(),
    ztunnels: [{ pid: 4242, cgroup: '/sys/fs/cgroup/system.slice/ztunnel.service', placement: 'outside' }],
  };
  writeFileSync(ztunnelCgroupFile(stateFile), JSON.stringify(zt));
  const r = spawnSync(
    'bin/ambpf',
    [
      'doctor',
      '-j',
      '--bpffs',
      join(dir, 'none'),
      '--kubelet-config',
      cfg,
      '--max-pods',
      '200',
      '--state-file',
      stateFile,
    ],
    { encoding: 'utf8', timeout: 120_000 },
  );
  const report = JSON.parse(r.stdout) as DoctorReport;
  const cap = report.checks.find((c) => c.group === 'capacity');
  t.match(cap, { ok: false, advisory: true, detail: /may run 300 pods/ });
  const cg = report.checks.find((c) => c.group === 'ztunnel');
  t.match(cg, { ok: false, advisory: true, detail: /pid 4242\) runs in cgroup .*ztunnel.service, outside/ });
  t.equal(
    r.status,
    report.checks.some((c) => !c.ok && !c.advisory) ? 1 : 0,
    'the exit status is about the kernel and tools only',
  );
  const bad = spawnSync('bin/ambpf', ['doctor', '--max-pods', 'x'], { encoding: 'utf8' });
  t.equal(bad.status, 2);
  t.match(bad.stderr, /--max-pods needs a positive integer/);
});

t.test('ztunnel cgroup: the requirement is said even before any ztunnel connected', async (t) => {
  t.equal(ztunnelCgroupFile('/run/ambpf/state.json'), '/run/ambpf/state.ztunnel-cgroup.json', 'named after it');
  const dir = tmp(t);
  const none = ztunnelCgroupCheck(join(dir, 'state.json'));
  t.match(none, { ok: true, advisory: true, detail: /ztunnel must run inside the cgroup/ });
  writeFileSync(ztunnelCgroupFile(join(dir, 'state.json')), '{"not":"ours"}');
  t.match(ztunnelCgroupCheck(join(dir, 'state.json')), { ok: true, detail: /no connected ztunnel recorded/ });
  const report: ZtunnelCgroupReport = {
    attach: '/sys/fs/cgroup/kubepods',
    updatedAt: '2026-01-01T00:00:00.000Z',
    ztunnels: [
      { pid: 7, cgroup: '/sys/fs/cgroup/kubepods/podz/ztunnel', placement: 'inside' },
      { pid: 8, cgroup: null, placement: 'unknown' },
    ],
  };
  writeFileSync(ztunnelCgroupFile(join(dir, 'state.json')), JSON.stringify(report));
  t.match(ztunnelCgroupCheck(join(dir, 'state.json')), {
    ok: true,
    detail: /pid 7 \(\/sys\/fs\/cgroup\/kubepods\/podz\/ztunnel\), 8 \(cgroup not readable\)/,
  });
});
