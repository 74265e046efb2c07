// The A/A control as a stopping rule and as the noise beside every claim. `direct-aa` is the floor
// measured again in the same round; its per-round ratio to `direct` would be 1.00 on a quiet machine.
// After the minimum rounds the sink phase keeps adding rounds until, for every row a target is
// stated on (CLAIM_METRIC), the median of those ratios is within the tolerance (±3 %), or a cap on
// rounds or time stops it; the run says which. Pure: samples in, rows and a verdict out.
import { summarize } from './summary.ts';
import type { Phase, Placement, Sample, WorkloadName } from './types.ts';

/** The metric each workload's targets are stated on (issue 20): rates, not tail latency. */
export const CLAIM_METRIC: Readonly<Record<WorkloadName, string>> = {
  connections: 'connPerSec',
  latency: 'reqPerSec',
  'bulk-1k': 'gbps',
  'bulk-16k': 'gbps',
  'bulk-128k': 'gbps',
  dns: 'qps',
};

export interface AaRow {
  readonly phase: Phase;
  readonly placement: Placement;
  readonly workload: WorkloadName;
  readonly metric: string;
  /** direct-aa / direct per round, then median (min–max). */
  readonly ratio: { readonly median: number; readonly min: number; readonly max: number; readonly n: number };
}

export interface AaVerdict {
  /** Measured rounds the phase ran. */
  readonly rounds: number;
  readonly converged: boolean;
  /** Why it stopped: 'converged', 'round cap', 'time cap', 'fixed rounds' (no A/A control). */
  readonly stoppedBy: 'converged' | 'round cap' | 'time cap' | 'fixed rounds';
  readonly tolerance: number;
  /** Rows still outside the tolerance when it stopped. */
  readonly outside: readonly AaRow[];
}

/** The A/A ratio of every (phase, placement, workload) row, on its CLAIM_METRIC. */
export function aaRows(samples: readonly Sample[]): AaRow[] {
  return summarize(samples, ['direct', 'direct-aa'])
    .filter((r) => r.path === 'direct-aa' && r.metric === CLAIM_METRIC[r.workload] && r.ratio !== undefined)
    .map((r) => ({ phase: r.phase, placement: r.placement, workload: r.workload, metric: r.metric, ratio: r.ratio! }));
}

/** Rows whose A/A median is more than `tolerance` away from 1 (all rows when there is no A/A data). */
export function aaOutside(rows: readonly AaRow[], tolerance: number): AaRow[] {
  return rows.filter((r) => !(Math.abs(r.ratio.median - 1) <= tolerance));
}

/** One line for results.md. */
export function aaSentence(v: AaVerdict): string {
  const pct = `±${Math.round(v.tolerance * 100)} %`;
  if (v.stoppedBy === 'fixed rounds')
    return `${v.rounds} measured round(s), fixed (no A/A control in the paths, or no room above --rounds)`;
  if (v.converged) return `${v.rounds} measured round(s): the A/A median was within ${pct} on every claimed row`;
  const rows = v.outside.map((r) => `${r.placement} ${r.workload} ×${r.ratio.median.toFixed(2)}`).join(', ');
  return `${v.rounds} measured round(s), stopped by the ${v.stoppedBy}: **the A/A median never got within ${pct}** on ${rows}`;
}
