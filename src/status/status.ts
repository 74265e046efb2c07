// `ambpf status`: one screen answering "is ambpf doing its job on this node?" — what is attached,
// how full the maps are, whether ztunnel is known, which counters move, and when the loader last
// reconciled (and what it could not apply).
import type { DatapathMaps } from '../bpf/datapath-maps.ts';
import { STAT_NAMES, ZT_READY } from '../bpf/schema.ts';
import type { StateFile } from '../state/state-file.ts';
import type { AttachedRow } from './links.ts';
import type { BpfMap } from '../libbpf/index.ts';
import { readMapHealth } from '../metrics/map-health.ts';
import { renderTable } from './table.ts';
import { outsideMessage, readZtunnelCgroupReport, type ZtunnelCgroupReport } from '../agent/ztunnel-cgroup.ts';

export { PRESSURE_AT } from '../metrics/map-health.ts';

export interface MapFill {
  readonly map: string;
  /** null for socket storage (no max_entries: only failed inserts). */
  readonly entries: number | null;
  readonly maxEntries: number | null;
  /** entries / maxEntries, 0..1. */
  readonly fill: number | null;
  readonly pressure: boolean;
  /** Inserts the programs could not make since the map was created (ambpf_stats mapfull_*). */
  readonly failedInserts: number;
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
  /** inpod with ZDS: the connected ztunnels' cgroups as the loader last checked them; null: no report. */
  readonly ztunnelCgroup: ZtunnelCgroupReport | null;
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
    /** Pods of the state file (the loader wants them captured) whose IP ambpf_pods lacks: a full map
     * or a failed pass leaves a pod outside the mesh, and this says which. */
    readonly notInMap: readonly string[];
  };
}

export interface StatusInput {
  readonly bpffs: string;
  readonly maps: DatapathMaps;
  readonly links: readonly AttachedRow[];
  readonly stateFile: string;
  readonly state: StateFile | null;
  readonly now?: number;
  /** The topology's own maps (inpod), opened from their pins, for the fill table. */
  readonly extraMaps?: Readonly<Record<string, BpfMap>>;
  /** The loader's ztunnel cgroup report; default: read beside the state file. */
  readonly ztunnelCgroup?: ZtunnelCgroupReport | null;
}

/** Every map of MAP_SPECS present: the shared ones in `maps`, the topology's own in `extra`. */
export function mapFill(maps: DatapathMaps, extra: Readonly<Record<string, BpfMap>> = {}): MapFill[] {
  return readMapHealth({ ...extra, ...maps.raw }, maps.stats()).map((h) => ({
    map: h.map,
    entries: h.entries,
    maxEntries: h.maxEntries,
    fill: h.fill,
    pressure: h.pressure,
    failedInserts: h.failedByPrograms,
  }));
}

function ztunnelStatus(maps: DatapathMaps): ZtunnelStatus | null {
  // An all-zero slot is "never written": the loader has not found ztunnel.
  if (maps.ztunnel.raw().every((b) => b === 0)) return null;
  const z = maps.ztunnel.get();
  return {
    ip: z.ip,
    ip6: z.ip6,
    ready: (z.flags & ZT_READY) !== 0,
    ports: { outbound: z.portOut, inbound: z.portIn, hbone: z.portHbone, dns: z.portDns },
    mark: `0x${z.mark.toString(16)}/0x${z.markMask.toString(16)}`,
    hostIfindex: z.hostIfindex,
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
    maps: mapFill(i.maps, i.extraMaps),
    ztunnel: ztunnelStatus(i.maps),
    ztunnelCgroup: i.ztunnelCgroup !== undefined ? i.ztunnelCgroup : readZtunnelCgroupReport(i.stateFile),
    counters: groupCounters(i.maps.stats()),
    reconcile: {
      stateFile: i.stateFile,
      found: st !== null,
      node: st?.node ?? null,
      updatedAt: st?.updatedAt ?? null,
      ageSeconds: Number.isNaN(updated) ? null : Math.max(0, Math.round((now - updated) / 1000)),
      pods: st ? st.pods.length : null,
      problems: st?.problems ?? [],
      notInMap: missingPods(i.maps, st),
    },
  };
}

function missingPods(maps: DatapathMaps, st: StateFile | null): string[] {
  if (!st) return [];
  const inMap = new Set(maps.pods.keys());
  return st.pods
    .filter((p) => p.ips.length > 0 && !p.ips.some((ip) => inMap.has(ip)))
    .map((p) => `${p.namespace}/${p.name}`);
}

/** One line per ztunnel connected over ZDS; a PROBLEM with the fix for one outside the attach cgroup. */
export function renderZtunnelCgroup(z: ZtunnelCgroupReport | null): string[] {
  if (!z || z.ztunnels.length === 0) return [];
  return z.ztunnels.map((c) =>
    c.placement === 'outside'
      ? `  PROBLEM: ${outsideMessage(z.attach, c)}`
      : c.placement === 'inside'
        ? `  ztunnel pid ${c.pid} (ZDS): cgroup ${c.cgroup}, inside ${z.attach}`
        : `  ztunnel pid ${c.pid} (ZDS): cgroup not readable, not checked against ${z.attach}`,
  );
}

const pct = (f: number): string => `${(f * 100).toFixed(f > 0 && f < 0.001 ? 2 : 1)}%`;

export function renderStatus(r: StatusReport): string {
  const out: string[] = [`ambpf status (bpffs ${r.bpffs})`, ''];
  const attached = r.links.filter((l) => l.progId !== null && !l.problem).length;
  out.push(`Attached (${attached} of ${r.links.length}):`);
  out.push(
    renderTable(
      ['HOOK', 'KIND', 'LINK', 'PROG', 'NAME', 'TARGET'],
      r.links.map((l) => [
        l.hook,
        l.kind,
        l.linkId === null ? '-' : String(l.linkId),
        l.progId === null ? '-' : String(l.progId),
        l.progName ?? '-',
        l.problem ? `${l.target}  PROBLEM: ${l.problem}` : l.target,
      ]),
      '  ',
    ),
  );
  out.push('Maps:');
  out.push(
    renderTable(
      ['MAP', 'ENTRIES', 'MAX', 'FAILED INSERTS', 'FILL'],
      r.maps.map((m) => [
        m.map,
        m.entries === null ? '-' : String(m.entries),
        m.maxEntries === null ? '-' : String(m.maxEntries),
        String(m.failedInserts),
        m.fill === null ? 'socket storage' : m.pressure ? `${pct(m.fill)}  PRESSURE` : pct(m.fill),
      ]),
      '  ',
    ),
  );
  const z = r.ztunnel;
  out.push(
    z
      ? `ztunnel: ${z.ip}${z.ip6 ? ` ${z.ip6}` : ''} ${z.ready ? 'READY' : 'NOT READY (nothing is redirected)'}, ports out ${z.ports.outbound} in ${z.ports.inbound} hbone ${z.ports.hbone} dns ${z.ports.dns}, mark ${z.mark}, host ifindex ${z.hostIfindex}`
      : 'ztunnel: unknown (nothing is redirected until the loader finds ztunnel)',
  );
  out.push(...renderZtunnelCgroup(r.ztunnelCgroup));
  out.push('');
  const progs = Object.keys(r.counters);
  if (progs.length === 0) out.push('Counters: all zero.');
  else {
    out.push('Counters (non-zero):');
    for (const p of progs) {
      out.push(
        `  ${p.padEnd(12)} ${Object.entries(r.counters[p]!)
          .map(([k, v]) => `${k} ${v}`)
          .join(', ')}`,
      );
    }
  }
  out.push('');
  const rc = r.reconcile;
  if (!rc.found)
    out.push(`Last reconcile: unknown (no state file at ${rc.stateFile}; pass the --state-file of \`ambpf run\`).`);
  else {
    out.push(
      `Last reconcile: ${rc.updatedAt}${rc.ageSeconds === null ? '' : ` (${rc.ageSeconds} s ago)`}, node ${rc.node}, ${rc.pods} ambient pod${rc.pods === 1 ? '' : 's'}, ` +
        (rc.problems.length ? `${rc.problems.length} problem${rc.problems.length === 1 ? '' : 's'}:` : 'no problems.'),
    );
    for (const p of rc.problems) out.push(`  - ${p.object}: ${p.reason}`);
    if (rc.notInMap.length > 0) {
      const pods = r.maps.find((m) => m.map === 'ambpf_pods');
      const full = pods && pods.entries !== null && pods.entries >= (pods.maxEntries ?? Infinity);
      out.push(
        `NOT CAPTURED: ${rc.notInMap.length} pod${rc.notInMap.length === 1 ? '' : 's'} the loader wants ${rc.notInMap.length === 1 ? 'is' : 'are'} not in ambpf_pods` +
          (full
            ? ` (ambpf_pods is full: ${pods.entries} of ${pods.maxEntries}; raise --max-pods and restart with fresh maps)`
            : " (see the loader's log)") +
          ':',
      );
      for (const p of rc.notInMap) out.push(`  - ${p}`);
    }
  }
  return out.join('\n') + '\n';
}
