// The A/A stopping rule and the CPU placement of `ambpf bench` (src/bench/aa.ts, src/bench/cpus.ts):
// which rows count, when a run may stop, what it says when it never got there, where processes go.
import t from 'tap';
import { aaOutside, aaRows, aaSentence, CLAIM_METRIC } from '../../src/bench/aa.ts';
import { allowedCpus, cpuPlan, pinned } from '../../src/bench/cpus.ts';
import { versusIstioTable } from '../../src/bench/report.ts';
import type { BenchResults, PathName, Sample } from '../../src/bench/types.ts';

/** One connections cell per (round, path) with conn/s `v[path][round]`. */
function cells(v: Partial<Record<PathName, number[]>>): Sample[] {
  const out: Sample[] = [];
  for (const [path, values] of Object.entries(v) as Array<[PathName, number[]]>) {
    values.forEach((x, round) =>
      out.push({
        phase: 'sink',
        round,
        warmup: false,
        path,
        workload: 'connections',
        placement: 'same-node',
        metrics: { connPerSec: x, p99us: 100 * (round + 1), clientCpuUsPerReq: 50 },
        errors: 0,
      }),
    );
  }
  return out;
}

t.test('aaRows: direct-aa / direct per round on the claimed metric only', async (t) => {
  const rows = aaRows(cells({ direct: [100, 100, 100], 'direct-aa': [90, 101, 104] }));
  t.equal(rows.length, 1, 'connPerSec only: p99 and CPU are not claimed rows');
  t.equal(rows[0]?.metric, CLAIM_METRIC.connections);
  t.equal(rows[0]?.ratio.median, 1.01);
  t.equal(rows[0]?.ratio.min, 0.9);
  t.same(aaOutside(rows, 0.03), [], '1.01 is within ±3 %');
  t.equal(aaOutside(rows, 0.005).length, 1, '... but not within ±0.5 %');
  t.same(aaRows(cells({ direct: [100] })), [], 'no A/A path: no rows');
});

t.test('aaSentence says how many rounds ran and, when it never converged, where', async (t) => {
  const rows = aaRows(cells({ direct: [100, 100], 'direct-aa': [80, 85] }));
  t.match(
    aaSentence({ rounds: 7, converged: true, stoppedBy: 'converged', tolerance: 0.03, outside: [] }),
    /7 measured round\(s\): the A\/A median was within ±3 %/,
  );
  const never = aaSentence({
    rounds: 10,
    converged: false,
    stoppedBy: 'round cap',
    tolerance: 0.03,
    outside: aaOutside(rows, 0.03),
  });
  t.match(
    never,
    /stopped by the round cap: \*\*the A\/A median never got within ±3 %\*\* on same-node connections ×0\.8\d/,
  );
  t.match(
    aaSentence({ rounds: 3, converged: false, stoppedBy: 'fixed rounds', tolerance: 0.03, outside: [] }),
    /fixed/,
  );
});

t.test('the eBPF-vs-Istio table carries the A/A spread of every row it claims on', async (t) => {
  const samples = cells({
    direct: [100, 100, 100],
    'direct-aa': [95, 99, 102],
    iptables: [70, 70, 70],
    ebpf: [84, 84, 84],
  });
  const table =
    versusIstioTable({
      config: { paths: ['direct', 'direct-aa', 'iptables', 'ebpf'] },
      samples,
    } as unknown as BenchResults) ?? '';
  t.match(table, /\| A\/A: direct-aa \/ direct \|/);
  t.match(
    table,
    /\| same-node \| connections \| connPerSec \(conn\/s, higher is better\) \| \*\*×1\.20\*\* \(1\.20–1\.20\) \| ×0\.99 \(0\.95–1\.02\) \|/,
  );
});

t.test('cpus: allowed list parsing and the plan for 1, 2 and 4 CPUs', async (t) => {
  t.same(allowedCpus('Name:\tx\nCpus_allowed_list:\t0-2,5\n'), [0, 1, 2, 5]);
  t.same(allowedCpus('Cpus_allowed_list:\t3\n'), [3]);
  t.same(allowedCpus('nothing here'), []);
  const four = cpuPlan([0, 1, 2, 3]);
  t.same(four.roles, { loader: [0], server: [1], client: [2] }, 'one CPU each, the rest idle');
  const two = cpuPlan([0, 1]);
  t.same(two.roles, { loader: [0], server: [0], client: [1] }, 'the client alone on the second CPU');
  t.match(two.note, /2 CPUs/);
  const one = cpuPlan([0]);
  t.same(pinned(one, 'client', ['wrk', '-t1']), ['wrk', '-t1'], 'nothing pinned on one CPU');
  t.same(pinned(two, 'client', ['wrk', '-t1']), ['taskset', '-c', '1', 'wrk', '-t1']);
  t.same(pinned(undefined, 'server', ['nginx']), ['nginx'], 'no plan: unpinned');
});
