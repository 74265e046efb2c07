// The --profile arithmetic, pure: per-cell deltas summed by program name over loaders, the total row,
// per-request figures only where requests are known, medians over rounds, and the Markdown table.
import t from 'tap';
import { ALL_PROGRAMS, cellCost, profileRows, profileTable, type ProgRef } from '../../src/bench/profile.ts';
import type { ProgRunStats } from '../../src/libbpf/index.ts';
import type { Sample } from '../../src/bench/types.ts';

const progs: ProgRef[] = [
  { id: 1, name: 'ambpf_connect4' },
  { id: 2, name: 'ambpf_connect4' }, // the same program loaded by a second node's loader
  { id: 3, name: 'ambpf_sockops' },
  { id: 4, name: 'ambpf_gone' },
];
const at = (entries: [number, number, number][]): Map<number, ProgRunStats> =>
  new Map(entries.map(([id, runs, ns]) => [id, { id, runCnt: BigInt(runs), runTimeNs: BigInt(ns) }]));

t.test('cellCost: deltas by program name, summed over instances, plus the total', async (t) => {
  const before = at([
    [1, 10, 1000],
    [2, 0, 0],
    [3, 5, 500],
    [4, 1, 1],
  ]);
  const after = at([
    [1, 110, 101_000],
    [2, 100, 50_000],
    [3, 405, 80_500],
  ]); // 4 unloaded meanwhile
  const c = cellCost(progs, before, after, 100);
  t.same(
    c.find((x) => x.prog === 'ambpf_connect4'),
    { prog: 'ambpf_connect4', runs: 200, ns: 150_000, nsPerRun: 750, runsPerReq: 2, nsPerReq: 1500 },
  );
  t.same(
    c.find((x) => x.prog === 'ambpf_sockops'),
    { prog: 'ambpf_sockops', runs: 400, ns: 80_000, nsPerRun: 200, runsPerReq: 4, nsPerReq: 800 },
  );
  t.same(
    c.find((x) => x.prog === ALL_PROGRAMS),
    { prog: ALL_PROGRAMS, runs: 600, ns: 230_000, nsPerRun: 230_000 / 600, runsPerReq: 6, nsPerReq: 2300 },
  );
  t.notOk(
    c.some((x) => x.prog === 'ambpf_gone'),
    'a program gone before the end is left out',
  );
  const bulk = cellCost(progs, before, after, undefined);
  t.notOk(
    bulk.some((x) => 'nsPerReq' in x || 'runsPerReq' in x),
    'no per-request figure without requests',
  );
  t.equal(
    cellCost(progs, before, before, 10).find((x) => x.prog === 'ambpf_sockops')?.nsPerRun,
    0,
    'no runs: 0 ns per run, not NaN',
  );
});

t.test("profileRows: medians over measured rounds, the cell's primary metric beside; profileTable", async (t) => {
  const mk = (round: number, warmup: boolean, nsPerReq: number, conn: number): Sample => ({
    phase: 'sink',
    round,
    warmup,
    path: 'ebpf',
    workload: 'connections',
    placement: 'same-node',
    metrics: { connPerSec: conn },
    errors: 0,
    profile: [
      { prog: ALL_PROGRAMS, runs: 10, ns: nsPerReq * 5, nsPerRun: nsPerReq / 2, runsPerReq: 2, nsPerReq },
      { prog: 'ambpf_connect6', runs: 0, ns: 0, nsPerRun: 0, runsPerReq: 0, nsPerReq: 0 },
    ],
  });
  const direct: Sample = {
    phase: 'sink',
    round: 1,
    warmup: false,
    path: 'direct',
    workload: 'connections',
    placement: 'same-node',
    metrics: { connPerSec: 9000 },
    errors: 0,
  };
  const rows = profileRows([
    mk(0, true, 99_999, 1),
    mk(1, false, 1000, 5000),
    mk(2, false, 3000, 7000),
    mk(3, false, 2000, 6000),
    direct,
  ]);
  const all = rows.find((r) => r.prog === ALL_PROGRAMS);
  t.match(all, {
    phase: 'sink',
    path: 'ebpf',
    workload: 'connections',
    nsPerReq: { median: 2000, min: 1000, max: 3000, n: 3 },
    runsPerReq: { median: 2 },
  });
  t.match(
    all?.primary,
    { metric: 'connPerSec', value: { median: 6000, n: 3 } },
    'the end-to-end figure of the same cells',
  );
  t.equal(rows.length, 2, 'no rows for a path without profile (direct)');
  const md = profileTable(rows) ?? '';
  t.match(
    md,
    /\| sink \| same-node \| connections \| ebpf \| \*\*all programs\*\* \| 2,000 \(1,000–3,000\) \| 2\.00 \(2\.00–2\.00\) \| 1,000 \(500–1,500\) \| connPerSec 6,000 \(5,000–7,000\) \|/,
  );
  t.notMatch(md, /ambpf_connect6/, 'a program that never ran is not listed');
  // An empty program measured at 100 ns per run: 2 runs per request come off every round.
  const net = profileRows([mk(1, false, 1000, 5000), mk(2, false, 3000, 7000)], 100);
  t.match(net.find((r) => r.prog === ALL_PROGRAMS)?.netNsPerReq, { median: 1800, min: 800, max: 2800, n: 2 });
  t.equal(all?.netNsPerReq, undefined, 'no net figure without the clock measured');
  const netMd = profileTable(net, 100) ?? '';
  t.match(netMd, /does nothing measures 100\.0 ns per run/, 'the table says what an empty run measures');
  t.match(netMd, /\| \*\*all programs\*\* \| 2,000 \(1,000–3,000\) \| 1,800 \(800–2,800\) \| 2\.00/);
  t.equal(profileTable([]), undefined, 'no table without profile rows');
});
