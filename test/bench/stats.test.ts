// The pure statistics behind every number of `ambpf bench`: medians, spreads, ratios paired within
// a round (never a ratio of medians), the rotation that interleaves paths, and the summary table.
import t from 'tap';
import { median, percentile, ratiosPerRound, rotation, schedule, spread } from '../../src/bench/stats.ts';
import { summarize } from '../../src/bench/summary.ts';
import type { BenchResults, Sample } from '../../src/bench/types.ts';
import { versusIstioTable } from '../../src/bench/report.ts';

t.test('median: odd, even, unsorted, non-finite values ignored, empty is NaN', async (t) => {
  t.equal(median([3, 1, 2]), 2);
  t.equal(median([4, 1, 3, 2]), 2.5);
  t.equal(median([5, Number.NaN, 1, Number.POSITIVE_INFINITY, 3]), 3);
  t.ok(Number.isNaN(median([])));
});

t.test('spread: median with min and max and the count of finite values', async (t) => {
  t.same(spread([10, 30, 20, Number.NaN]), { median: 20, min: 10, max: 30, n: 3 });
  t.equal(spread([]).n, 0);
});

t.test('percentile by nearest rank', async (t) => {
  const v = Array.from({ length: 100 }, (_, i) => i + 1);
  t.equal(percentile(v, 50), 50);
  t.equal(percentile(v, 99), 99);
  t.equal(percentile(v, 100), 100);
  t.equal(percentile([7], 99), 7);
});

t.test('ratiosPerRound pairs values of the same round only', async (t) => {
  const path = new Map([
    [1, 90],
    [2, 50],
    [3, 80],
  ]);
  const base = new Map([
    [1, 100],
    [2, 100],
    [4, 100],
  ]);
  t.same(
    [...ratiosPerRound(path, base)],
    [
      [1, 0.9],
      [2, 0.5],
    ],
    'round 3 has no base, round 4 no path value',
  );
  // A slow round slows both sides: its ratio stays the same, unlike a ratio of medians.
  const r = ratiosPerRound(
    new Map([
      [1, 10],
      [2, 100],
    ]),
    new Map([
      [1, 20],
      [2, 200],
    ]),
  );
  t.same([...r.values()], [0.5, 0.5]);
  t.same([...ratiosPerRound(new Map([[1, 5]]), new Map([[1, 0]]))], [], 'a zero base gives no ratio');
});

t.test('rotation puts every path in every position once per cycle', async (t) => {
  const paths = ['direct', 'iptables', 'ebpf'];
  t.same(rotation(paths, 0), ['direct', 'iptables', 'ebpf']);
  t.same(rotation(paths, 1), ['iptables', 'ebpf', 'direct']);
  t.same(rotation(paths, 3), rotation(paths, 0));
  for (let pos = 0; pos < paths.length; pos++) {
    const firsts = new Set([0, 1, 2].map((r) => rotation(paths, r)[pos]));
    t.equal(firsts.size, 3, `position ${pos} sees every path`);
  }
  t.same(rotation([], 2), []);
});

t.test('schedule: a warm-up round first, then the measured rounds, interleaved', async (t) => {
  const s = schedule(['a', 'b'], 3, true);
  t.equal(s.length, 4);
  t.same(
    s.map((x) => x.warmup),
    [true, false, false, false],
  );
  t.same(
    s.map((x) => x.order.join('')),
    ['ab', 'ba', 'ab', 'ba'],
  );
  t.equal(schedule(['a'], 2, false).filter((x) => x.warmup).length, 0);
});

t.test('summarize: warm-up excluded, ratios from the same round, direct has no ratio', async (t) => {
  const mk = (round: number, path: Sample['path'], v: number, warmup = false): Sample => ({
    phase: 'sink',
    round,
    warmup,
    path,
    workload: 'connections',
    placement: 'same-node',
    metrics: { connPerSec: v },
    errors: 0,
  });
  const rows = summarize(
    [
      mk(0, 'direct', 1, true),
      mk(0, 'ebpf', 1000, true),
      mk(1, 'direct', 100),
      mk(1, 'ebpf', 90),
      mk(2, 'direct', 200),
      mk(2, 'ebpf', 190),
    ],
    ['direct', 'ebpf'],
  );
  t.equal(rows.length, 2);
  const [d, e] = rows;
  t.match(d, { path: 'direct', median: 150, min: 100, max: 200, n: 2 });
  t.notOk(d && 'ratio' in d);
  t.match(e, { path: 'ebpf', median: 140, min: 90, max: 190, n: 2 });
  t.equal(e?.ratio?.min, 0.9);
  t.equal(e?.ratio?.max, 0.95);
  t.equal(e?.ratio?.n, 2);
});

t.test('summarize against another base: eBPF / iptables paired per round; the report shows it', async (t) => {
  const mk = (round: number, path: Sample['path'], v: number): Sample => ({
    phase: 'sink',
    round,
    warmup: false,
    path,
    workload: 'connections',
    placement: 'same-node',
    metrics: { connPerSec: v },
    errors: 0,
  });
  const samples = [
    mk(1, 'iptables', 80),
    mk(1, 'ebpf', 100),
    mk(2, 'iptables', 50),
    mk(2, 'ebpf', 60),
    mk(1, 'direct', 120),
  ];
  const rows = summarize(samples, ['iptables', 'ebpf'], 'iptables');
  t.notOk(rows.find((r) => r.path === 'iptables')?.ratio, 'the base has no ratio');
  t.match(rows.find((r) => r.path === 'ebpf')?.ratio, { min: 1.2, max: 1.25, n: 2 });
  const results = {
    config: { paths: ['direct', 'iptables', 'ebpf'] },
    samples,
  } as unknown as BenchResults;
  const table = versusIstioTable(results) ?? '';
  t.match(
    table,
    /\| same-node \| connections \| connPerSec \(conn\/s, higher is better\) \| \*\*×1\.23\*\* \(1\.20–1\.25\) \|/,
  );
  t.equal(
    versusIstioTable({ config: { paths: ['direct', 'ebpf'] }, samples } as unknown as BenchResults),
    undefined,
    'no table without iptables',
  );
  // Against nftables the same way, its own column header.
  const nft = samples.map((s) => (s.path === 'iptables' ? { ...s, path: 'nftables' as const } : s));
  const nftTable =
    versusIstioTable(
      { config: { paths: ['direct', 'nftables', 'ebpf'] }, samples: nft } as unknown as BenchResults,
      'nftables',
    ) ?? '';
  t.match(nftTable, /\| ebpf \/ nftables \|/);
  t.match(nftTable, /\*\*×1\.23\*\* \(1\.20–1\.25\)/);
});
