// results.md: the table a person reads at a glance. One row per (phase, placement, workload,
// metric), one column per path: median, min-max, and the per-round ratio to direct.
import { summarize } from './summary.ts';
import { profileTable } from './profile.ts';
import { aaSentence } from './aa.ts';
import { ISTIO_PATHS, METRICS, PRIMARY_METRIC, type BenchResults, type PathName, type SummaryRow } from './types.ts';

function fmt(v: number): string {
  if (!Number.isFinite(v)) return '–';
  const a = Math.abs(v);
  if (a >= 1000) return Math.round(v).toLocaleString('en-US');
  if (a >= 100) return v.toFixed(0);
  if (a >= 10) return v.toFixed(1);
  return v.toFixed(2);
}

function cell(r: SummaryRow | undefined): string {
  if (!r) return '';
  const base = `${fmt(r.median)} (${fmt(r.min)}–${fmt(r.max)})`;
  return r.ratio
    ? `${base} **×${r.ratio.median.toFixed(2)}** (${r.ratio.min.toFixed(2)}–${r.ratio.max.toFixed(2)})`
    : base;
}

export function resultsTable(rows: readonly SummaryRow[], paths: readonly PathName[]): string {
  const groups = new Map<string, Map<PathName, SummaryRow>>();
  for (const r of rows) {
    const k = `${r.phase}|${r.placement}|${r.workload}|${r.metric}`;
    let g = groups.get(k);
    if (!g) groups.set(k, (g = new Map()));
    g.set(r.path, r);
  }
  const lines = [
    `| phase | placement | workload | metric | ${paths.join(' | ')} |`,
    `|---|---|---|---|${paths.map(() => '---').join('|')}|`,
  ];
  for (const [k, g] of groups) {
    const [phase, placement, workload, metric] = k.split('|') as [string, string, string, string];
    lines.push(
      `| ${phase} | ${placement} | ${workload} | ${label(metric)} | ${paths.map((p) => cell(g.get(p))).join(' | ')} |`,
    );
  }
  return lines.join('\n') + '\n';
}

const label = (metric: string): string => {
  const info = METRICS[metric];
  return info ? `${metric} (${info.unit}, ${info.higherIsBetter ? 'higher' : 'lower'} is better)` : metric;
};

/**
 * The eBPF paths against one of Istio's paths (iptables, nftables), paired within each round like the
 * direct ratios (the targets of issues 8, 11 and 20 are stated against them). Primary metric and CPU
 * per request.
 */
export function versusIstioTable(r: BenchResults, base: PathName = 'iptables'): string | undefined {
  const ebpf = r.config.paths.filter((p) => p.startsWith('ebpf'));
  if (!r.config.paths.includes(base) || ebpf.length === 0) return undefined;
  const rows = summarize(r.samples, [base, ...ebpf], base).filter(
    (x) =>
      x.path !== base &&
      x.phase === 'sink' &&
      (x.metric === PRIMARY_METRIC[x.workload] ||
        x.metric === 'reqPerSec' ||
        x.metric === 'p50us' ||
        x.metric.endsWith('CpuUsPerReq')),
  );
  // The noise beside every claim: the A/A control's ratio on the same row (direct-aa / direct).
  const aa = r.config.paths.includes('direct-aa')
    ? summarize(r.samples, ['direct', 'direct-aa']).filter((x) => x.path === 'direct-aa')
    : [];
  const aaCell = (x: SummaryRow): string => {
    const a = aa.find(
      (z) => z.phase === x.phase && z.placement === x.placement && z.workload === x.workload && z.metric === x.metric,
    );
    return a?.ratio ? `×${a.ratio.median.toFixed(2)} (${a.ratio.min.toFixed(2)}–${a.ratio.max.toFixed(2)})` : '–';
  };
  const lines = [
    `| placement | workload | metric | ${ebpf.map((p) => `${p} / ${base}`).join(' | ')} | A/A: direct-aa / direct |`,
    `|---|---|---|${ebpf.map(() => '---').join('|')}|---|`,
  ];
  const seen = new Set<string>();
  for (const x of rows) {
    const k = `${x.placement}|${x.workload}|${x.metric}`;
    if (seen.has(k)) continue;
    seen.add(k);
    const cells = ebpf.map((p) => {
      const y = rows.find(
        (z) => z.path === p && z.placement === x.placement && z.workload === x.workload && z.metric === x.metric,
      );
      return y?.ratio ? `**×${y.ratio.median.toFixed(2)}** (${y.ratio.min.toFixed(2)}–${y.ratio.max.toFixed(2)})` : '';
    });
    lines.push(`| ${x.placement} | ${x.workload} | ${label(x.metric)} | ${cells.join(' | ')} | ${aaCell(x)} |`);
  }
  return lines.join('\n') + '\n';
}

export function controlPlaneTable(r: BenchResults): string {
  const cp = r.controlPlane;
  const lines = ['| figure | value |', '|---|---|'];
  if (cp.podChangeMs)
    lines.push(
      `| pods file change -> ambpf_pods entry (${cp.podChangeMs.samples.length} changes) | p50 ${fmt(cp.podChangeMs.p50)} ms, p99 ${fmt(cp.podChangeMs.p99)} ms, max ${fmt(cp.podChangeMs.max)} ms |`,
    );
  const w = cp.podChangeWatchMs;
  if (w)
    lines.push(
      `| pod label change via the API server (watch) -> ambpf_pods entry (${w.samples.length} changes) | p50 ${fmt(w.p50)} ms, p99 ${fmt(w.p99)} ms, max ${fmt(w.max)} ms |`,
    );
  for (const x of cp.reconcile ?? [])
    lines.push(
      `| reconcile ${x.pods.toLocaleString('en-US')} pods (plan + map write) | ${fmt(x.totalMs)} ms (plan ${fmt(x.planMs)} ms, write ${fmt(x.writeMs)} ms) |`,
    );
  if (cp.coldStartMs)
    lines.push(
      `| cold start: \`ambpf run\` -> /readyz 200 (${cp.coldStartMs.samples.length} starts) | median ${fmt(cp.coldStartMs.median)} ms (${fmt(cp.coldStartMs.min)}–${fmt(cp.coldStartMs.max)}) |`,
    );
  if (cp.rssMiB)
    lines.push(`| loader RSS after its cells | median ${fmt(cp.rssMiB.median)} MiB, max ${fmt(cp.rssMiB.max)} MiB |`);
  const sc = cp.scale;
  if (sc) {
    const on = `${sc.pods + 1} pods on the node (${sc.pods} mesh + ztunnel)`;
    lines.push(`| ${on}, ZDS: loader start -> all captured and acked | ${fmt(sc.captureAllMs)} ms |`);
    lines.push(
      `| ${on}: loader RSS at capture / after ${sc.idleSeconds} s idle; idle CPU (nothing changing) | ${fmt(sc.rssMiB)} MiB / ${sc.rssIdleMiB === undefined ? '-' : fmt(sc.rssIdleMiB)} MiB; ${sc.idleCpuPct.toFixed(2)} % of a core |`,
    );
    lines.push(
      `| ${on}: pod change -> released, or captured and acked by the stand-in over ZDS (${sc.podChangeMs.samples.length} changes) | p50 ${fmt(sc.podChangeMs.p50)} ms, p99 ${fmt(sc.podChangeMs.p99)} ms, max ${fmt(sc.podChangeMs.max)} ms |`,
    );
  }
  return lines.join('\n') + '\n';
}

export function resultsMarkdown(r: BenchResults, charts: readonly string[]): string {
  const m = r.machine;
  const c = r.config;
  const errors = r.samples.filter((s) => s.errors > 0);
  const profile = profileTable(r.profile ?? [], r.profileClockNsPerRun);
  const versus = ISTIO_PATHS.flatMap((base) => {
    const table = versusIstioTable(r, base);
    return table ? [`## eBPF vs ${base} (sink phase, ratio per round, then median (min–max))`, '', table] : [];
  });
  return [
    `# ambpf bench results`,
    '',
    `\`${r.command}\``,
    '',
    `- machine: ${m.cpuModel}, ${m.cores} cores, ${m.memoryMiB} MiB, Linux ${m.kernel} (${m.hostname})`,
    `- tools: ${Object.entries(m.tools)
      .map(([k, v]) => `${k} ${v}`)
      .join(', ')}`,
    `- run: ${r.startedAt} -> ${r.finishedAt}; topology ${c.topology}; ${r.aa ? aaSentence(r.aa) : `${c.rounds} measured round(s)`}${c.warmup ? ' after 1 warm-up round (discarded)' : ''}; ${c.seconds} s per cell; paths rotated every round`,
    ...(r.cpus ? [`- placement of processes: ${r.cpus}`] : []),
    '- cells: median (min–max) over rounds; **×ratio** = path / direct computed within each round, then median (min–max)',
    '',
    '## Datapath',
    '',
    resultsTable(r.summary, c.paths),
    errors.length > 0
      ? `Cells with socket or HTTP errors: ${errors.map((s) => `${s.path}/${s.workload}/${s.placement}/round ${s.round}: ${s.errors}`).join('; ')}\n`
      : 'No cell had socket or HTTP errors.\n',
    ...versus,
    ...(profile ? ['## BPF cost per request (--profile; median (min–max) over rounds)', '', profile] : []),
    '## Control plane',
    '',
    controlPlaneTable(r),
    ...(r.notes.length > 0 ? ['## Notes', '', ...r.notes.map((n) => `- ${n}`), ''] : []),
    ...(charts.length > 0 ? ['## Charts', '', ...charts.map((f) => `![${f}](${f})`), ''] : []),
  ].join('\n');
}
