// `ambpf status`: one screen answering "is ambpf doing its job on this node?" — what is attached,
// how full the maps are, whether ztunnel is known, which counters move, and when the loader last
// reconciled (and what it could not apply).
import type { DatapathMaps } from '../bpf/datapath-maps.ts';
import { STAT_NAMES, ZT_READY } from '../bpf/schema.ts';
import type { StateFile } from '../state/state-file.ts';
import type { AttachedRow } from './links.ts';
import { renderTable } from './table.ts';

import { FILL_MAPS } from '../bpf/names.ts';

export { FILL_MAPS };
/** Fill at which a map is called under pressure: the next burst of pods or connections may not fit. */
export const PRESSURE_AT = 0.8;

export interface MapFill {
  readonly map: string;
  readonly entries: number;
  readonly maxEntries: number;
  /** entries / maxEntries, 0..1. */
  readonly fill: number;
  readonly pressure: boolean;
}

export interface ZtunnelStatus {
  readonly ip: string;
  readonly ip6: string | null;
  readonly ready: boolean;
  readonly ports: { readonly outbound: number; readonly inbound: number; readonly hbone: number; readonly dns: number };
  readonly mark: string;
  readonly hostIfindex: number;
}

export interface StatusReport {
  readonly bpffs: string;
  readonly links: readonly AttachedRow[];
  readonly maps: readonly MapFill[];
  /** null: the ztunnel slot is empty (nothing is redirected). */
  readonly ztunnel: ZtunnelStatus | null;
  /** Non-zero counters of ambpf_stats, by program (connect4, sockops, tc, ...), as decimal strings. */
  readonly counters: Record<string, Record<string, string>>;
  readonly reconcile: {
    readonly stateFile: string;
    readonly found: boolean;
    readonly node: string | null;
    readonly updatedAt: string | null;
    readonly ageSeconds: number | null;
    readonly pods: number | null;
    readonly problems: StateFile['problems'];
  };
}

export interface StatusInput {
  readonly bpffs: string;
  readonly maps: DatapathMaps;
  readonly links: readonly AttachedRow[];
  readonly stateFile: string;
  readonly state: StateFile | null;
  readonly now?: number;
}

function countEntries(m: DatapathMaps['raw'][keyof DatapathMaps['raw']]): number {
  // Bounded by max_entries: a map being refilled while we walk cannot keep us here forever.
  let n = 0;
  for (let k = m.nextKey(null); k !== undefined && n <= m.maxEntries; k = m.nextKey(k)) n++;
  return n;
}

export function mapFill(maps: DatapathMaps): MapFill[] {
  return FILL_MAPS.map((name) => {
    const m = maps.raw[name];
    const entries = countEntries(m);
    const fill = m.maxEntries ? entries / m.maxEntries : 0;
    return { map: name, entries, maxEntries: m.maxEntries, fill, pressure: fill >= PRESSURE_AT };
  });
}

function ztunnelStatus(maps: DatapathMaps): ZtunnelStatus | null {
  // An all-zero slot is "never written": the loader has not found ztunnel.
  if (maps.ztunnel.raw().every((b) => b === 0)) return null;
  const z = maps.ztunnel.get();
  return {
    ip: z.ip, ip6: z.ip6, ready: (z.flags & ZT_READY) !== 0,
    ports: { outbound: z.portOut, inbound: z.portIn, hbone: z.portHbone, dns: z.portDns },
    mark: `0x${z.mark.toString(16)}/0x${z.markMask.toString(16)}`, hostIfindex: z.hostIfindex,
  };
}

/** Counters named <program>_<outcome> (schema.ts STAT_NAMES), non-zero ones only. */
export function groupCounters(stats: Record<string, bigint>): Record<string, Record<string, string>> {
  const out: Record<string, Record<string, string>> = {};
  for (const name of STAT_NAMES) {
    const v = stats[name] ?? 0n;
    if (v === 0n) continue;
    const i = name.indexOf('_');
    const prog = name.slice(0, i);
    (out[prog] ??= {})[name.slice(i + 1)] = String(v);
  }
  return out;
}

export function collectStatus(i: StatusInput): StatusReport {
  const st = i.state;
  const now = i.now ?? Date.now();
  const updated = st ? Date.parse(st.updatedAt) : NaN;
  return {
    bpffs: i.bpffs,
    links: i.links,
    maps: mapFill(i.maps),
    ztunnel: ztunnelStatus(i.maps),
    counters: groupCounters(i.maps.stats()),
    reconcile: {
      stateFile: i.stateFile,
      found: st !== null,
      node: st?.node ?? null,
      updatedAt: st?.updatedAt ?? null,
      ageSeconds: Number.isNaN(updated) ? null : Math.max(0, Math.round((now - updated) / 1000)),
      pods: st ? st.pods.length : null,
      problems: st?.problems ?? [],
    },
  };
}

const pct = (f: number): string => `${(f * 100).toFixed(f > 0 && f < 0.001 ? 2 : 1)}%`;

export function renderStatus(r: StatusReport): string {
  const out: string[] = [`ambpf status (bpffs ${r.bpffs})`, ''];
  const attached = r.links.filter((l) => l.progId !== null && !l.problem).length;
  out.push(`Attached (${attached} of ${r.links.length}):`);
  out.push(renderTable(['HOOK', 'KIND', 'LINK', 'PROG', 'NAME', 'TARGET'], r.links.map((l) => [
    l.hook, l.kind, l.linkId === null ? '-' : String(l.linkId), l.progId === null ? '-' : String(l.progId), l.progName ?? '-',
    l.problem ? `${l.target}  PROBLEM: ${l.problem}` : l.target,
  ]), '  '));
  out.push('Maps:');
  out.push(renderTable(['MAP', 'ENTRIES', 'MAX', 'FILL'], r.maps.map((m) => [
    m.map, String(m.entries), String(m.maxEntries), m.pressure ? `${pct(m.fill)}  PRESSURE` : pct(m.fill),
  ]), '  '));
  const z = r.ztunnel;
  out.push(z
    ? `ztunnel: ${z.ip}${z.ip6 ? ` ${z.ip6}` : ''} ${z.ready ? 'READY' : 'NOT READY (nothing is redirected)'}, ports out ${z.ports.outbound} in ${z.ports.inbound} hbone ${z.ports.hbone} dns ${z.ports.dns}, mark ${z.mark}, host ifindex ${z.hostIfindex}`
    : 'ztunnel: unknown (nothing is redirected until the loader finds ztunnel)');
  out.push('');
  const progs = Object.keys(r.counters);
  if (progs.length === 0) out.push('Counters: all zero.');
  else {
    out.push('Counters (non-zero):');
    for (const p of progs) {
      out.push(`  ${p.padEnd(12)} ${Object.entries(r.counters[p]!).map(([k, v]) => `${k} ${v}`).join(', ')}`);
    }
  }
  out.push('');
  const rc = r.reconcile;
  if (!rc.found) out.push(`Last reconcile: unknown (no state file at ${rc.stateFile}; pass the --state-file of \`ambpf run\`).`);
  else {
    out.push(`Last reconcile: ${rc.updatedAt}${rc.ageSeconds === null ? '' : ` (${rc.ageSeconds} s ago)`}, node ${rc.node}, ${rc.pods} ambient pod${rc.pods === 1 ? '' : 's'}, ` +
      (rc.problems.length ? `${rc.problems.length} problem${rc.problems.length === 1 ? '' : 's'}:` : 'no problems.'));
    for (const p of rc.problems) out.push(`  - ${p.object}: ${p.reason}`);
  }
  return out.join('\n') + '\n';
}
