// From samples to the summary table: per (phase, placement, workload, metric, path) the median and
// min-max over the measured rounds (warm-up excluded) and the ratio to `direct` (or another base
// path) computed round by round. Pure, so results.md and the charts show exactly what results.json holds.
import { ratiosPerRound, spread } from './stats.ts';
import type { PathName, Sample, SummaryRow } from './types.ts';

type Key = string;
const keyOf = (s: Pick<Sample, 'phase' | 'placement' | 'workload'>, metric: string, path: PathName): Key =>
  `${s.phase}|${s.placement}|${s.workload}|${metric}|${path}`;

export function summarize(
  samples: readonly Sample[],
  paths: readonly PathName[],
  basePath: PathName = 'direct',
): SummaryRow[] {
  // cell -> round -> value
  const byCell = new Map<Key, Map<number, number>>();
  const order: Array<{
    phase: Sample['phase'];
    placement: Sample['placement'];
    workload: Sample['workload'];
    metric: string;
  }> = [];
  const seen = new Set<string>();
  for (const s of samples) {
    if (s.warmup) continue;
    for (const [metric, value] of Object.entries(s.metrics)) {
      const k = keyOf(s, metric, s.path);
      let rounds = byCell.get(k);
      if (!rounds) byCell.set(k, (rounds = new Map()));
      rounds.set(s.round, value);
      const groupKey = `${s.phase}|${s.placement}|${s.workload}|${metric}`;
      if (!seen.has(groupKey)) {
        seen.add(groupKey);
        order.push({ phase: s.phase, placement: s.placement, workload: s.workload, metric });
      }
    }
  }
  const rows: SummaryRow[] = [];
  for (const g of order) {
    const base = byCell.get(keyOf(g, g.metric, basePath));
    for (const path of paths) {
      const rounds = byCell.get(keyOf(g, g.metric, path));
      if (!rounds) continue;
      const sp = spread([...rounds.values()]);
      const row: SummaryRow = { ...g, path, median: sp.median, min: sp.min, max: sp.max, n: sp.n };
      if (path !== basePath && base) {
        const r = spread([...ratiosPerRound(rounds, base).values()]);
        rows.push(r.n > 0 ? { ...row, ratio: r } : row);
      } else {
        rows.push(row);
      }
    }
  }
  return rows;
}
