// `ambpf bench --quick` on a tiny matrix, on the real kernel (bench-quick-node.test.ts and
// bench-quick-inpod.test.ts, one file per topology so each stays inside tap's per-file timeout on a
// busy machine): the outputs exist and are well formed, every requested path, workload and placement
// has a sane (finite, non-zero, error-free) measurement, ratios are the same-round quotient of the
// samples, and the run leaves nothing behind. Never speeds.
import type { Test } from 'tap';
import { execFile } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { removeByPrefix, effectivePrefix } from '../../src/testbed/index.ts';
import {
  PRIMARY_METRIC,
  topologyPlacements,
  type BenchResults,
  type PathName,
  type WorkloadName,
} from '../../src/bench/types.ts';
import { testPrefix } from '../helpers/prefix.ts';
import { snapshot } from '../testbed/leak-check.ts';

export const run = promisify(execFile);
export const AMBPF = fileURLToPath(new URL('../../bin/ambpf', import.meta.url));
const WORKLOADS: WorkloadName[] = ['connections', 'bulk-1k'];
/** One quick run takes ~50 s (node) to ~100 s (inpod) idle, over twice that with both cores busy. */
export const QUICK_RUN_MS = 270_000;

/**
 * One `ambpf bench --quick` on `topology` with `paths`, and every check of its outputs. The end-to-end
 * phase and the control plane run only where asked (`full`), to keep the file under two minutes.
 */
export async function quickRun(
  t: Test,
  topology: 'node' | 'inpod',
  paths: readonly PathName[],
  full: boolean,
): Promise<void> {
  const prefix = testPrefix();
  const out = mkdtempSync(join(tmpdir(), 'ambpf-bench-test-'));
  const before = await snapshot(prefix);
  t.teardown(async () => {
    await removeByPrefix(effectivePrefix(prefix));
    rmSync(out, { recursive: true, force: true });
  });

  const argv = [
    'bench',
    '--quick',
    '--topology',
    topology,
    '--paths',
    paths.join(','),
    '--workloads',
    WORKLOADS.join(','),
    '--out',
    out,
    '--prefix',
    prefix,
  ];
  // The full run also profiles: the kernel's BPF run-time statistics per eBPF program and cell.
  if (!full) argv.push('--no-e2e', '--no-control-plane');
  else argv.push('--profile');
  const statsSysctl = readFileSync('/proc/sys/kernel/bpf_stats_enabled', 'utf8');
  const r = await run(AMBPF, argv, {
    timeout: QUICK_RUN_MS,
    env: { ...process.env, AMBPF_LOG_LEVEL: 'warn' },
    maxBuffer: 16 << 20,
  }).catch((err: unknown) => {
    // A failed bench keeps its loaders' logs in <out>/logs: show their last lines before out goes.
    const logs = join(out, 'logs');
    for (const f of existsSync(logs) ? readdirSync(logs).filter((n) => n.endsWith('.log')) : []) {
      t.comment(
        `--- ${f} (last 40 lines)\n${readFileSync(join(logs, f), 'utf8').trim().split('\n').slice(-40).join('\n')}`,
      );
    }
    throw err;
  });
  const listed = r.stdout.trim().split('\n');
  for (const f of ['results.json', 'results.md', ...WORKLOADS.map((w) => `bench-${w}.svg`)]) {
    t.ok(existsSync(join(out, f)), `${f} written`);
    t.ok(listed.includes(join(out, f)), `${f} printed on stdout`);
  }

  const res = JSON.parse(readFileSync(join(out, 'results.json'), 'utf8')) as BenchResults;
  t.equal(res.version, 1);
  t.equal(res.config.topology, topology);
  t.same(res.config.paths, paths);
  t.same(res.config.workloads, WORKLOADS);
  // inpod adds same-node-v6 (dual-stack pods, native IPv6 capture) to the default placements.
  const placements = topologyPlacements(topology);
  t.same(res.config.placements, placements);
  t.match(res.machine, { kernel: /\S/, cpuModel: /\S/ });
  t.ok(res.machine.cores >= 1);

  // The redirected paths address a port nothing listens on (8080 of a pod without a server): a cell
  // only measures something when the redirect took the connection to the sink.
  await t.test(
    'every path x workload x placement measured, with a finite non-zero primary metric and (almost) no errors',
    async (t) => {
      for (const placement of placements) {
        for (const workload of WORKLOADS) {
          for (const path of paths) {
            const cells = res.samples.filter(
              (s) => s.phase === 'sink' && s.placement === placement && s.workload === workload && s.path === path,
            );
            t.equal(cells.length, 1, `${path} ${workload} ${placement}: one sample in one round`);
            const v = cells[0]?.metrics[PRIMARY_METRIC[workload]] ?? Number.NaN;
            t.ok(Number.isFinite(v) && v > 0, `${path} ${workload} ${placement}: ${PRIMARY_METRIC[workload]} = ${v}`);
            // A loaded shared machine may time out a handful of connections; a broken redirect fails them all.
            if (workload === 'connections')
              t.ok(
                (cells[0]?.errors ?? 0) < 0.01 * v,
                `${path} ${workload} ${placement}: errors (${cells[0]?.errors}) under 1% of the requests`,
              );
          }
        }
      }
      const conn = res.samples.filter((s) => s.workload === 'connections');
      t.ok(
        conn.every((s) => (s.metrics['clientCpuUsPerReq'] ?? 0) > 0 && (s.metrics['serverCpuUsPerReq'] ?? 0) > 0),
        'CPU per request from both cgroups',
      );
      if (full) {
        t.ok(
          res.samples.some((s) => s.phase === 'e2e' && s.path === 'ebpf'),
          'the end-to-end phase ran through the stand-in',
        );
        t.notOk(
          res.samples.some((s) => s.phase === 'e2e' && s.placement === 'same-node-v6'),
          'same-node-v6 is a sink-phase row only',
        );
      } else
        t.notOk(
          res.samples.some((s) => s.phase === 'e2e'),
          '--no-e2e: no end-to-end phase',
        );
    },
  );

  await t.test('ratios are path / direct of the same round', async (t) => {
    let checked = 0;
    for (const row of res.summary) {
      if (row.path === 'direct') {
        t.notOk(row.ratio, 'direct has no ratio to itself');
        continue;
      }
      const same = (p: PathName) =>
        res.samples.find(
          (s) =>
            s.phase === row.phase &&
            s.placement === row.placement &&
            s.workload === row.workload &&
            s.path === p &&
            !s.warmup,
        );
      const a = same(row.path)?.metrics[row.metric];
      const b = same('direct')?.metrics[row.metric];
      if (a === undefined || b === undefined || b === 0) continue;
      t.ok(row.ratio, `${row.phase}/${row.placement}/${row.workload}/${row.metric}/${row.path} has a ratio`);
      t.ok(Math.abs((row.ratio?.median ?? Number.NaN) - a / b) < 1e-9, 'ratio = same-round quotient');
      checked++;
    }
    t.ok(checked >= paths.length - 1, `${checked} ratios checked`);
  });

  await t.test('results.md is a table with every path and workload, and says which topology', async (t) => {
    const md = readFileSync(join(out, 'results.md'), 'utf8');
    t.match(md, new RegExp(`\\| phase \\| placement \\| workload \\| metric \\| ${paths.join(' \\| ')} \\|`));
    for (const w of WORKLOADS)
      for (const p of placements) t.match(md, new RegExp(`\\| sink \\| ${p} \\| ${w} \\|`), `${p} ${w} row`);
    t.match(md, /×\d+\.\d\d/, 'ratios shown');
    t.match(md, new RegExp(`topology ${topology};`));
    if (topology === 'inpod') t.match(md, /127\.0\.0\.1:15001/, 'the notes say what inpod measures');
    if (full) {
      t.match(md, /reconcile 1,000 pods/);
      t.match(md, /cold start/);
    }
    if (full && topology === 'inpod') {
      // The node-scale run with ZDS (--quick: 10 mesh pods): all captured, RSS, idle CPU, pod change -> acked.
      t.match(
        md,
        /11 pods on the node \(10 mesh \+ ztunnel\), ZDS: loader start -> all captured and acked \| [\d,.]+ ms/,
      );
      t.match(
        md,
        /loader RSS at capture \/ after 2 s idle; idle CPU \(nothing changing\) \| [\d,.]+ MiB \/ [\d,.]+ MiB; [\d.]+ % of a core/,
      );
      t.match(md, /captured and acked by the stand-in over ZDS \(4 changes\) \| p50 [\d,.]+ ms, p99/);
    }
    t.match(md, /placement of processes: /, 'where client, server and loader ran');
  });

  await t.test('one SVG chart per workload, with every path on it', async (t) => {
    for (const w of WORKLOADS) {
      const svg = readFileSync(join(out, `bench-${w}.svg`), 'utf8');
      t.match(svg, /^<svg [^>]*xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
      t.match(svg, /<\/svg>\s*$/);
      for (const p of paths) t.ok(svg.includes(`>${p}<`), `${w}: ${p} labelled`);
    }
  });

  if (full) {
    await t.test('control plane figures present and positive', async (t) => {
      const cp = res.controlPlane;
      t.equal(cp.podChangeMs?.samples.length, 4);
      t.ok((cp.podChangeMs?.p50 ?? 0) > 0);
      t.equal(cp.podChangeWatchMs?.samples.length, 4, 'pod changes through the API server (watch) measured too');
      t.ok((cp.podChangeWatchMs?.p50 ?? 0) > 0);
      t.match(
        readFileSync(join(out, 'results.md'), 'utf8'),
        /pod label change via the API server \(watch\) -> ambpf_pods entry \(4 changes\)/,
        'and reported',
      );
      t.match(cp.reconcile, [{ pods: 1000 }]);
      t.ok((cp.reconcile?.[0]?.totalMs ?? 0) > 0);
      t.ok(
        (cp.coldStartMs?.median ?? 0) > 0 && (cp.coldStartMs?.samples.length ?? 0) >= 2,
        'a cold start per eBPF path slot',
      );
      t.ok((cp.rssMiB?.median ?? 0) > 0);
    });
  }

  if (full) {
    await t.test(
      '--profile: ns and runs per request of each eBPF program, beside the end-to-end figures',
      async (t) => {
        t.equal(res.config.profile, true);
        const all = (phase: string, placement: string) =>
          res.profile?.find(
            (r) =>
              r.phase === phase &&
              r.placement === placement &&
              r.workload === 'connections' &&
              r.path === 'ebpf' &&
              r.prog === 'all',
          );
        for (const placement of placements) {
          const row = all('sink', placement);
          // Every captured connection runs at least one program (connect4/6 same-node, sk_lookup cross-node).
          t.ok(
            (row?.runsPerReq?.median ?? 0) >= 1,
            `sink ${placement}: ${row?.runsPerReq?.median} program runs per connection`,
          );
          t.ok((row?.nsPerReq?.median ?? 0) > 0, `sink ${placement}: ${row?.nsPerReq?.median} ns per connection`);
          t.ok((row?.primary.value.median ?? 0) > 0, "with the cell's connPerSec beside it");
        }
        t.ok(
          res.profile?.some((r) => r.phase === 'e2e'),
          'the end-to-end phase is profiled too',
        );
        t.notOk(
          res.profile?.some((r) => !r.path.startsWith('ebpf')),
          'only eBPF paths have programs',
        );
        t.ok(
          res.samples.filter((s) => s.path === 'ebpf').every((s) => (s.profile?.length ?? 0) > 1),
          'every eBPF cell carries its programs',
        );
        t.ok((res.profileClockNsPerRun ?? 0) > 0, `an empty program measured: ${res.profileClockNsPerRun} ns per run`);
        t.match(
          readFileSync(join(out, 'results.md'), 'utf8'),
          /## BPF cost per request[^\n]*\n\nThe statistics time each run[^\n]*\n\n\| phase \| placement \| workload \| path \| program \| ns per request \| net of an empty run \|/,
        );
        t.equal(
          readFileSync('/proc/sys/kernel/bpf_stats_enabled', 'utf8'),
          statsSysctl,
          'kernel.bpf_stats_enabled as before the run',
        );
      },
    );
  }

  t.same(await snapshot(prefix), before, 'no netns, cgroup, iptables rule, pin or ipset left behind');
}
