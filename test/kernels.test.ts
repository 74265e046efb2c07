// The kernel matrix (issue 10): kernels/run.sh boots Debian's 5.10, 6.1 and 6.12 under qemu and runs
// the checker on the host's kernel in a throwaway netns; every ambpf program must load, attach and pass
// its functional checks everywhere, and the checker's self-test must give its known answers (so a
// checker that saw nothing could not pass). Kernels are cached in .cache/kernels after the first run.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadMatrix } from '../src/kernels/report.ts';
import { parseConsole } from '../src/kernels/results.ts';
import { buildRows, problems, SELFTEST_OBJECT } from '../src/kernels/verdict.ts';

const KERNELS = ['5.10', '6.1', '6.12', 'host'];
const repo = join(import.meta.dirname, '..');
// Functional checks by suite (kernels/checker/func.c): "node" loads the node topology's objects
// together, "inpod" loads ambpf_inpod alone with AMBPF_CFG_INPOD (only one topology is active on a node).
const REQUIRED_CHECKS = [
  'node/connect lands on 15001',
  'node/getpeername gives the original',
  'node/SO_ORIGINAL_DST gives the original',
  'node/sk_lookup assigns to the 15006 listener',
  'node/tc steers a SYN for an ambient pod',
  'inpod/connect lands on 15001',
  'inpod/getpeername gives the original',
  'inpod/SO_ORIGINAL_DST gives the original',
  'inpod/sk_lookup assigns to the 15006 listener',
  'inpod/sk_lookup assigns dport 15008 to the 15008 listener',
  "node/tc passes the node's own SYN",
  "node/a 16 KiB getsockopt keeps the kernel's answer",
  "inpod/a 16 KiB getsockopt keeps the kernel's answer",
  'node/SO_ORIGINAL_DST after the client closed',
  'inpod/SO_ORIGINAL_DST after the client closed',
  'node/connect6 v4-mapped: lands on 15001, getpeername and SO_ORIGINAL_DST give the original',
  'inpod/connect6 v4-mapped: lands on 15001, getpeername and SO_ORIGINAL_DST give the original',
  'inpod/UDP to port 53 lands on 15053, the answer shows the server',
  'inpod/connected UDP to port 53: getpeername and the answer show the server',
  'inpod/TCP to port 53 lands on 15053, getpeername gives the original',
  'inpod/connect6 native IPv6: lands on [pod IPv6]:15001, getpeername and IP6T_SO_ORIGINAL_DST give the original',
  'inpod/sk_lookup assigns IPv6 to the 15006 listener',
  // The inpod datapath's once-per-connection paths (bpf/ambpf_inpod.bpf.c): ztunnel's spoofed inbound
  // leg (connect4/6 + sk_lookup), its DNS answers from a slot address (sendmsg4), an early close (sock_release).
  "inpod/connect4 adds 0x1000 to the SO_MARK of ztunnel's spoofed leg",
  "inpod/ztunnel's spoofed leg reaches the app (not 15006), the app's socket has mark 0x1000",
  "inpod/connect6 adds 0x1000 to the SO_MARK of ztunnel's spoofed IPv6 leg",
  "inpod/ztunnel's spoofed IPv6 leg reaches the app (not 15006), the app's socket has mark 0x1000",
  'inpod/two servers at once on one UDP socket: each answer shows its own server',
  'inpod/IP6T_SO_ORIGINAL_DST after the native IPv6 client closed',
  // The kept destination (inpod_keep_dst): over lo to ztunnel's 15001 from 5.17, refused before.
  "inpod/a kept destination reaches ztunnel's 15001 over lo, SO_ORIGINAL_DST from its own address",
  "inpod/a kept destination without ztunnel's 15001: no reset, its SYN retransmitted reaches ztunnel once back",
];

t.test('console parsing survives kernel noise and reports a guest that never finished', async (t) => {
  const run = parseConsole(
    '6.1',
    [
      'KERNEL\t6.1.0-50-amd64',
      '[    1.2] random: crng init done RESULT\tambpf_x\tprog_a\tload\tok\tsock_ops, 9 insns',
      'RESULT\tambpf_x\tprog_a\tattach\tok\tcgroup link',
      'RESULT\tambpf_x\tprog_b\tload\tfail\tInvalid argument (sched_cls)',
      'VLOG\tambpf_x\tprog_b\t0: (85) call bpf_get_netns_cookie#122',
      'VLOG\tambpf_x\tprog_b\tunknown func bpf_get_netns_cookie#122',
      'VLOG\tambpf_x\tprog_b\tprocessed 1 insns (limit 1000000)',
      '[    2.0] Kernel panic - not syncing',
    ].join('\n'),
  );
  t.equal(run.release, '6.1.0-50-amd64');
  t.equal(run.done, false);
  const rows = buildRows([run]);
  const a = rows.find((r) => r.program === 'prog_a')?.cells.get('6.1');
  const b = rows.find((r) => r.program === 'prog_b')?.cells.get('6.1');
  t.match(a, { pass: true, text: 'cgroup link' });
  t.match(b, { pass: false, text: /unknown func bpf_get_netns_cookie#122/ });
  const found = problems([run], rows);
  t.match(found.join('\n'), /did not finish/);
  t.match(found.join('\n'), /ambpf_x\/prog_b fails/);
});

t.test('"na" passes only where it is the known answer', async (t) => {
  const keep = "a kept destination reaches ztunnel's 15001 over lo, SO_ORIGINAL_DST from its own address";
  const console_ = (release: string, status: string): string =>
    [`KERNEL\t${release}`, `RESULT\tinpod\t${keep}\tfunc\t${status}\tdetail`, 'DONE'].join('\n');
  const runs = [
    parseConsole('5.10', console_('5.10.0-46-amd64', 'na')),
    parseConsole('6.1', console_('6.1.0-50-amd64', 'na')),
    parseConsole('6.12', console_('6.12.1-amd64', 'ok')),
  ];
  const rows = buildRows(runs);
  const cells = rows.find((r) => r.key === `inpod/${keep}`)?.cells;
  t.match(cells?.get('5.10'), { pass: false, na: true, asExpected: true }, 'before 5.17: the known answer');
  t.match(cells?.get('6.1'), { pass: false, na: true, asExpected: false }, 'from 5.17: a check that did not run');
  t.match(cells?.get('6.12'), { pass: true, asExpected: true });
  t.same(
    problems(runs, rows)
      .filter((p) => p.includes(keep))
      .map((p) => p.split(':')[0]),
    ['6.1'],
  );
});

const skip =
  process.env['AMBPF_SKIP_KERNELS'] === '1'
    ? 'AMBPF_SKIP_KERNELS=1 is set: the kernel matrix was skipped on purpose'
    : process.getuid?.() !== 0
      ? 'the kernel matrix needs root (cgroups, netns, BPF)'
      : false;

t.test('every ambpf program passes on 5.10, 6.1, 6.12 and the host kernel', { skip, timeout: 200_000 }, async (t) => {
  const out = mkdtempSync(join(tmpdir(), 'ambpf-kernels-'));
  t.teardown(() => rmSync(out, { recursive: true, force: true }));

  // run.sh cleans up its guests, cgroup and temp files on SIGTERM, which the timeout sends.
  const r = spawnSync(join(repo, 'kernels/run.sh'), ['--out', out, '--no-docs', '--kernels', KERNELS.join(' ')], {
    encoding: 'utf8',
    timeout: 180_000,
    killSignal: 'SIGTERM',
  });
  if (r.status === 3) {
    t.fail(
      `a Debian kernel package could not be fetched, so the matrix cannot run (set AMBPF_SKIP_KERNELS=1 to skip it on purpose):\n${r.stderr}`,
    );
    return;
  }
  t.not(r.signal, 'SIGTERM', 'the matrix finished within 3 minutes');

  // The Debian package each guest kernel came from, as run.sh records it in the cache, for the table.
  const cache = process.env.AMBPF_KERNELS_CACHE ?? join(repo, '.cache/kernels');
  const packages = new Map(
    KERNELS.filter((k) => existsSync(join(cache, k, 'package'))).map(
      (k) => [k, readFileSync(join(cache, k, 'package'), 'utf8').trim()] as const,
    ),
  );
  const m = loadMatrix(out, KERNELS, packages);
  t.comment(m.markdown);
  for (const run of m.runs) t.ok(run.done, `the checker finished on ${run.kernel} (${run.release ?? 'no boot'})`);

  const rows = buildRows(m.runs);
  const objects = readdirSync(join(repo, 'bpf'))
    .filter((f) => f.endsWith('.bpf.c'))
    .map((f) => f.replace(/\.bpf\.c$/, ''));
  for (const obj of objects) {
    t.ok(
      rows.some((row) => row.object === obj),
      `programs of bpf/${obj}.bpf.c were found and checked`,
    );
  }
  // The datapath's functional checks must have run, and passed, on every kernel (a checker that
  // skipped them would otherwise be green).
  for (const check of REQUIRED_CHECKS) {
    const row = rows.find((r) => r.kind === 'func' && r.key === check);
    t.ok(row, `functional check "${check}" ran`);
    for (const kernel of KERNELS) {
      const cell = row?.cells.get(kernel);
      // "na" only where verdict.ts knows it for the known answer (a kept destination before 5.17).
      t.ok(
        cell?.pass || (cell?.na && cell.asExpected),
        `functional check "${check}" passes on ${kernel}: ${cell?.text ?? 'no result'}`,
      );
    }
  }
  for (const row of rows) {
    for (const [kernel, cell] of row.cells) {
      if (row.object === SELFTEST_OBJECT) {
        t.ok(
          cell.asExpected,
          `self-test ${row.program} on ${kernel} gives its known answer (got ${cell.pass ? 'pass' : 'fail'}: ${cell.text})`,
        );
      } else {
        t.ok(cell.pass || (cell.na && cell.asExpected), `${row.key} on ${kernel}: ${cell.text}`);
      }
    }
  }
  t.same(m.problems, [], 'no problem in the matrix');
  t.equal(r.status, 0, `kernels/run.sh exits 0 (stderr: ${r.stderr.trim().split('\n').slice(-3).join(' / ')})`);
});
