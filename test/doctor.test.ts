// `ambpf doctor` on this machine: every feature present, exit 0; JSON agrees; the pure parts
// (mounts parsing, version comparison, rendering of missing features) checked on their own.
import t from 'tap';
import { execFileSync, spawnSync } from 'node:child_process';
import { readMounts, mountsOf, versionAtLeast } from '../src/doctor/system.ts';
import { renderReport, type DoctorReport } from '../src/doctor/report.ts';
import { kernelChoices, MIN_KERNEL } from '../src/doctor/choices.ts';

t.test('ambpf doctor prints every feature present and exits 0', async (t) => {
  // Other test files make their own netns concurrently: only the doctor's own probe names count.
  const doctorNetns = (): string[] =>
    execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })
      .split('\n')
      .filter((l) => l.startsWith('ambpf-doctor-'));
  const before = doctorNetns();
  const r = spawnSync('bin/ambpf', ['doctor'], { encoding: 'utf8', timeout: 120_000 });
  t.equal(r.status, 0, r.stdout + r.stderr);
  for (const f of [
    'kernel',
    'BTF',
    'bpffs',
    'cgroup v2',
    'cgroup_sock_addr',
    'sk_lookup',
    'sockhash',
    'sk_storage',
    'get_netns_cookie in cgroup_sock_addr',
    'sk_assign in sched_cls',
    'tcx',
    'clang',
  ]) {
    t.match(r.stdout, new RegExp(`\\b${f}\\b\\s+yes`), `${f} present`);
  }
  t.notMatch(r.stdout, /MISSING/);
  t.match(r.stdout, /All \d+ checks passed/);
  t.match(r.stdout, /\nLoader choices on Linux \S+:\n {2}minimum kernel {2}5\.10: this kernel .* is supported/);
  t.match(r.stdout, /\n {2}tc attach {7}tcx link: /, 'this kernel has tcx (the doctor probe says so above)');
  t.match(r.stdout, /\n {2}sk_msg attach {3}prog_attach: .*sockmap links \(6\.10\+\) work here too/);
  t.same(doctorNetns(), before, 'the tcx probe netns is gone');
});

t.test('ambpf doctor -j is the same report as JSON', async (t) => {
  const out = execFileSync('bin/ambpf', ['doctor', '-j'], { encoding: 'utf8', timeout: 120_000 });
  const report = JSON.parse(out) as DoctorReport;
  t.equal(report.ok, true);
  t.ok(report.checks.length >= 30);
  t.same(
    report.choices.map((c) => [c.what, c.choice]),
    [
      ['minimum kernel', MIN_KERNEL],
      ['tc attach', 'tcx link'],
      ['sk_msg attach', 'prog_attach'],
      ['inpod IPv6', 'as IPv4'],
      ['early close', 'sock_release'],
      ['node IPv6', 'as IPv4'],
    ],
  );
  const bpffs = report.checks.find((c) => c.name === 'bpffs');
  t.same(bpffs?.detail.split(', '), mountsOf('bpf'), 'bpffs discovered from /proc/mounts');
  const r = spawnSync('bin/ambpf', ['doctor', '--bogus'], { encoding: 'utf8' });
  t.equal(r.status, 2);
  t.match(r.stderr, /unknown argument --bogus/);
});

t.test('mounts come from /proc/mounts text, escapes decoded', async (t) => {
  const text =
    'bpf /sys/fs/bpf bpf rw 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\nnone /mnt/with\\040space cgroup2 rw 0 0\n';
  const m = readMounts(text);
  t.same(mountsOf('bpf', m), ['/sys/fs/bpf']);
  t.same(mountsOf('cgroup2', m), ['/sys/fs/cgroup/unified', '/mnt/with space']);
  t.same(mountsOf('tmpfs', m), []);
});

t.test('kernel versions compare numerically; missing features name their kernel', async (t) => {
  t.ok(versionAtLeast('6.18.44-fc', '6.6'));
  t.ok(versionAtLeast('5.10.0', '5.10'));
  t.notOk(versionAtLeast('5.9.16', '5.10'));
  t.notOk(versionAtLeast('6.1.0', '6.6'));
  const report: DoctorReport = {
    kernel: '6.1.0',
    ok: false,
    checks: [
      { group: 'system', name: 'BTF', ok: true, detail: '/sys/kernel/btf/vmlinux' },
      {
        group: 'link',
        name: 'tcx',
        ok: false,
        detail: 'bpf_link_create(BPF_TCX_INGRESS) failed with EINVAL',
        since: '6.6',
      },
    ],
    choices: kernelChoices(
      '6.1.0',
      { supported: false, detail: 'bpf_link_create(BPF_TCX_INGRESS) failed with EINVAL' },
      { supported: false, detail: 'EINVAL' },
    ),
  };
  const text = renderReport(report);
  t.match(text, /tcx\s+MISSING/);
  t.match(text, /1 missing:\n {2}- link tcx \(needs Linux 6\.6 or newer; this is 6\.1\.0\)/);
  t.match(
    text,
    /tc attach {7}clsact filter: no tcx links here \(bpf_link_create\(BPF_TCX_INGRESS\) failed with EINVAL; tcx needs 6\.6\+\)/,
  );
  t.match(text, /sk_msg attach {3}prog_attach: .*sockmap links need 6\.10\+ \(EINVAL\)/);
  t.match(
    text,
    /inpod IPv6 {6}as IPv4, without probes: IPv6 is captured both ways and ztunnel's spoofed legs reach the app \(5\.10\+\)/,
  );
  t.match(text, /but without tcx \(6\.6\+\) the probe program on the pod's eth0 is not attached/);
  t.match(text, /node IPv6 {7}as IPv4: connect6 to ztunnel's IPv6 address, .* \(5\.10\+\)/);
});

t.test('lockdown=confidentiality: doctor says what an early close loses', async (t) => {
  const yes = { supported: true, detail: '' };
  const early = (locked: boolean): string | undefined =>
    kernelChoices('6.18.0', yes, yes, locked).find((c) => c.what === 'early close')?.choice;
  t.equal(early(false), 'sock_release');
  t.equal(early(true), 'not kept');
});

t.test('the minimum kernel is 5.10: older kernels are told so', async (t) => {
  const yes = { supported: true, detail: '' };
  t.match(kernelChoices('5.10.0-46-amd64', yes, yes)[0]?.why, /is supported/);
  t.match(kernelChoices('5.4.0', yes, yes)[0]?.why, /older than 5\.10, the oldest the kernel matrix proves/);
});

t.test(
  'without clang, prebuilt objects for these sources satisfy the clang check; without them it is missing',
  async (t) => {
    execFileSync('bin/ambpf', ['build'], { stdio: 'ignore' });
    const withCache = spawnSync('bin/ambpf', ['doctor', '-j'], {
      encoding: 'utf8',
      env: { ...process.env, AMBPF_CLANG: '/nonexistent/clang' },
      timeout: 120_000,
    });
    const clang = (JSON.parse(withCache.stdout) as DoctorReport).checks.find((c) => c.name === 'clang');
    t.equal(clang?.ok, true);
    t.match(clang?.detail, /prebuilt objects/);
    const empty = spawnSync('bin/ambpf', ['doctor', '-j'], {
      encoding: 'utf8',
      env: { ...process.env, AMBPF_CLANG: '/nonexistent/clang', AMBPF_CACHE_DIR: '/nonexistent/ambpf-cache' },
      timeout: 120_000,
    });
    const missing = (JSON.parse(empty.stdout) as DoctorReport).checks.find((c) => c.name === 'clang');
    t.equal(missing?.ok, false);
    t.not(empty.status, 0, 'doctor exits non-zero');
  },
);
