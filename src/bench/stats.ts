// Pure statistics of the benchmark: medians, spreads, per-round ratios and the interleaving order.
// No I/O, so every number in results.json can be traced back to these few functions (and tested).

/** Median of the finite values (mean of the two middle ones for an even count); NaN when empty. */
export function median(values: readonly number[]): number {
  const v = values.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return Number.NaN;
  const mid = Math.floor(v.length / 2);
  return v.length % 2 === 1 ? (v[mid] as number) : ((v[mid - 1] as number) + (v[mid] as number)) / 2;
}

export interface Spread {
  readonly median: number;
  readonly min: number;
  readonly max: number;
  readonly n: number;
}

/** Median, min and max of the finite values. */
export function spread(values: readonly number[]): Spread {
  const v = values.filter((x) => Number.isFinite(x));
  if (v.length === 0) return { median: Number.NaN, min: Number.NaN, max: Number.NaN, n: 0 };
  return { median: median(v), min: Math.min(...v), max: Math.max(...v), n: v.length };
}

/**
 * Ratios of `path` to `base` computed pair by pair within the same round (never median/median), so
 * a slow round slows both sides of its own ratio. Rounds where either side is missing are skipped.
 */
export function ratiosPerRound(
  path: ReadonlyMap<number, number>,
  base: ReadonlyMap<number, number>,
): Map<number, number> {
  const out = new Map<number, number>();
  for (const [round, v] of path) {
    const b = base.get(round);
    if (b === undefined || !Number.isFinite(v) || !Number.isFinite(b) || b === 0) continue;
    out.set(round, v / b);
  }
  return out;
}

/**
 * Path order of round `round` (0-based): the list rotated by `round`, so every path runs first,
 * second, … equally often and a drift of the machine (thermal, page cache) hits all paths alike.
 */
export function rotation<T>(items: readonly T[], round: number): T[] {
  if (items.length === 0) return [];
  const k = ((round % items.length) + items.length) % items.length;
  return [...items.slice(k), ...items.slice(0, k)];
}

/** The whole schedule: round -> path order. Round 0 is the warm-up when `warmup` is true. */
export function schedule<T>(
  items: readonly T[],
  rounds: number,
  warmup: boolean,
): Array<{ round: number; warmup: boolean; order: T[] }> {
  const out: Array<{ round: number; warmup: boolean; order: T[] }> = [];
  const total = rounds + (warmup ? 1 : 0);
  for (let r = 0; r < total; r++) out.push({ round: r, warmup: warmup && r === 0, order: rotation(items, r) });
  return out;
}

/** Percentile (0-100) by nearest rank of the finite values; NaN when empty. */
export function percentile(values: readonly number[], p: number): number {
  const v = values.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return Number.NaN;
  const rank = Math.min(v.length, Math.max(1, Math.ceil((p / 100) * v.length)));
  return v[rank - 1] as number;
}
