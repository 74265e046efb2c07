// `ambpf bench --profile`: what each eBPF program costs per request, from the kernel's own BPF
// run-time statistics (run_cnt, run_time_ns of bpf_prog_info, src/libbpf/stats.ts) read before and
// after every cell. Unlike the end-to-end rates this does not depend on the machine's noise: it is
// the figure issue 20's targets are judged on first.
//   pathPrograms   the programs of the running path: those using a map pinned in its loaders' bpffs dirs
//                  (so other ambpf instances on the machine never count)
//   readCounters   run_cnt / run_time_ns per program now
//   cellCost       per program (by name, summed over nodes) and in total: runs, ns, ns/run, runs and ns per request
//   profileRows    medians over rounds per (phase, placement, workload, path, program): results.json
//   profileTable   the same for results.md, beside the cell's end-to-end figure
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import {
  kindOfFd,
  listIds,
  mapInfoByFd,
  openPinnedFd,
  progInfoByFd,
  progRunStats,
  withFdById,
  type ProgRunStats,
} from '../libbpf/index.ts';
import { closeFd } from '../libbpf/handle.ts';
import { progName } from '../status/links.ts';
import { spread, type Spread } from './stats.ts';
import { PRIMARY_METRIC, type ProfileRow, type ProgCost, type Sample } from './types.ts';

export interface ProgRef {
  readonly id: number;
  readonly name: string;
}

/** The row of cellCost that sums every program of the path. */
export const ALL_PROGRAMS = 'all';

function pinnedMapIds(dir: string): Set<number> {
  const ids = new Set<number>();
  let names: string[];
  try {
    names = readdirSync(dir, { withFileTypes: true })
      .filter((d) => d.isFile())
      .map((d) => d.name);
  } catch {
    return ids;
  }
  for (const name of names) {
    let fd: number;
    try {
      fd = openPinnedFd(join(dir, name));
    } catch {
      continue; // removed while we looked
    }
    try {
      if (kindOfFd(fd) === 'map') ids.add(mapInfoByFd(fd).id);
    } finally {
      closeFd(fd);
    }
  }
  return ids;
}

/** Programs using any map pinned in `bpffsDirs`, sorted by name. */
export function pathPrograms(bpffsDirs: readonly string[]): ProgRef[] {
  const maps = new Set(bpffsDirs.flatMap((d) => [...pinnedMapIds(d)]));
  const out: ProgRef[] = [];
  for (const id of listIds('prog')) {
    try {
      const uses = withFdById('prog', id, (fd) => progInfoByFd(fd).mapIds.some((m) => maps.has(m)));
      if (uses) out.push({ id, name: progName(id) ?? `prog ${id}` });
    } catch {
      // unloaded meanwhile: not ours to count
    }
  }
  return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : a.id - b.id));
}

export function readCounters(progs: readonly ProgRef[]): Map<number, ProgRunStats> {
  const out = new Map<number, ProgRunStats>();
  for (const p of progs) {
    const s = progRunStats(p.id);
    if (s) out.set(p.id, s);
  }
  return out;
}

/** Per program name (summed over its instances, one per loader) and ALL_PROGRAMS: the cell's deltas. */
export function cellCost(
  progs: readonly ProgRef[],
  before: ReadonlyMap<number, ProgRunStats>,
  after: ReadonlyMap<number, ProgRunStats>,
  requests: number | undefined,
): ProgCost[] {
  const sums = new Map<string, { runs: bigint; ns: bigint }>();
  const add = (name: string, runs: bigint, ns: bigint): void => {
    const s = sums.get(name) ?? { runs: 0n, ns: 0n };
    sums.set(name, { runs: s.runs + runs, ns: s.ns + ns });
  };
  for (const p of progs) {
    const a = before.get(p.id);
    const b = after.get(p.id);
    if (!a || !b) continue;
    add(p.name, b.runCnt - a.runCnt, b.runTimeNs - a.runTimeNs);
    add(ALL_PROGRAMS, b.runCnt - a.runCnt, b.runTimeNs - a.runTimeNs);
  }
  return [...sums].map(([prog, s]) => {
    const runs = Number(s.runs);
    const ns = Number(s.ns);
    const perReq =
      requests !== undefined && requests > 0 ? { runsPerReq: runs / requests, nsPerReq: ns / requests } : {};
    return { prog, runs, ns, nsPerRun: runs > 0 ? ns / runs : 0, ...perReq };
  });
}

/**
 * Medians over rounds (warm-up excluded) per (phase, placement, workload, path, program). With
 * `clockNsPerRun` (what an empty program measures per run), also the per-request figure less that for
 * each run, per round then median: the programs' own work.
 */
export function profileRows(samples: readonly Sample[], clockNsPerRun?: number): ProfileRow[] {
  const groups = new Map<
    string,
    {
      key: Omit<ProfileRow, 'nsPerRun' | 'runsPerReq' | 'nsPerReq' | 'netNsPerReq' | 'primary'>;
      costs: ProgCost[];
      primary: number[];
    }
  >();
  for (const s of samples) {
    if (s.warmup || !s.profile) continue;
    for (const c of s.profile) {
      const k = `${s.phase}|${s.placement}|${s.workload}|${s.path}|${c.prog}`;
      let g = groups.get(k);
      if (!g)
        groups.set(
          k,
          (g = {
            key: { phase: s.phase, placement: s.placement, workload: s.workload, path: s.path, prog: c.prog },
            costs: [],
            primary: [],
          }),
        );
      g.costs.push(c);
      g.primary.push(s.metrics[PRIMARY_METRIC[s.workload]] ?? Number.NaN);
    }
  }
  return [...groups.values()].map(({ key, costs, primary }) => {
    const perReq = costs.every((c) => c.nsPerReq !== undefined)
      ? {
          runsPerReq: spread(costs.map((c) => c.runsPerReq ?? Number.NaN)),
          nsPerReq: spread(costs.map((c) => c.nsPerReq ?? Number.NaN)),
          ...(clockNsPerRun !== undefined
            ? {
                netNsPerReq: spread(
                  costs.map((c) => (c.nsPerReq ?? Number.NaN) - (c.runsPerReq ?? Number.NaN) * clockNsPerRun),
                ),
              }
            : {}),
        }
      : {};
    return {
      ...key,
      nsPerRun: spread(costs.map((c) => c.nsPerRun)),
      ...perReq,
      primary: { metric: PRIMARY_METRIC[key.workload], value: spread(primary) },
    };
  });
}

const num = (v: number, digits = 0): string =>
  Number.isFinite(v)
    ? v.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits })
    : '–';
const range = (s: Spread | undefined, digits = 0): string =>
  s ? `${num(s.median, digits)} (${num(s.min, digits)}–${num(s.max, digits)})` : '–';

/**
 * results.md's profile table: one line per program that ran in a cell, the cell's total first. With an
 * empty program measured, a column net of it, and a sentence saying what it is.
 */
export function profileTable(rows: readonly ProfileRow[], clockNsPerRun?: number): string | undefined {
  if (rows.length === 0) return undefined;
  const order = (r: ProfileRow): string =>
    `${r.phase}|${r.placement}|${r.workload}|${r.path}|${r.prog === ALL_PROGRAMS ? '' : r.prog}`;
  const sorted = [...rows].sort((a, b) => (order(a) < order(b) ? -1 : order(a) > order(b) ? 1 : 0));
  const net = clockNsPerRun !== undefined;
  const lines = [
    ...(net
      ? [
          `The statistics time each run between two clock reads around the call into the program: a program that does nothing measures ${num(clockNsPerRun, 1)} ns per run on this machine in this run. "net of an empty run" is ns per request less that for each run (the programs' own work); the targets are judged on the measured column.`,
          '',
        ]
      : []),
    `| phase | placement | workload | path | program | ns per request |${net ? ' net of an empty run |' : ''} runs per request | ns per run | end to end |`,
    `|---|---|---|---|---|---|${net ? '---|' : ''}---|---|---|`,
  ];
  for (const r of sorted) {
    // A program that never ran in the cell (connect6 on a v4 run) says nothing: results.json keeps it.
    if (r.prog !== ALL_PROGRAMS && r.nsPerRun.max === 0 && (r.runsPerReq?.max ?? 0) === 0) continue;
    const prog = r.prog === ALL_PROGRAMS ? '**all programs**' : r.prog;
    const e2e = r.prog === ALL_PROGRAMS ? `${r.primary.metric} ${range(r.primary.value)}` : '';
    lines.push(
      `| ${r.phase} | ${r.placement} | ${r.workload} | ${r.path} | ${prog} | ${range(r.nsPerReq)} |${net ? ` ${range(r.netNsPerReq)} |` : ''} ${range(r.runsPerReq, 2)} | ${range(r.nsPerRun)} | ${e2e} |`,
    );
  }
  return lines.join('\n') + '\n';
}
