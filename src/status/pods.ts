// `ambpf pods`: every entry of the ambient-pod map decoded, joined with the pod it belongs to by IP
// from the loader's state file, and the drift between the two both ways (an entry the loader no
// longer wants, a pod it wants but the map lacks): what an operator looks at first when a pod is or
// is not redirected against expectations.
import type { DatapathMaps } from '../bpf/datapath-maps.ts';
import type { StateFile } from '../state/state-file.ts';
import { podFlagWords } from './flags.ts';
import { renderTable } from './table.ts';
import { compareIps } from '../ip.ts';

export type Drift = 'not-in-state-file' | 'not-in-map';

export interface PodRow {
  readonly ip: string;
  /** null for a pod of the state file the map lacks. */
  readonly netnsCookie: string | null;
  readonly hostIfindex: number | null;
  readonly hostIfname: string | null;
  readonly flags: readonly string[];
  /** Whether ambpf_netns knows the pod's netns (connect4 finds pods through it). */
  readonly netnsEntry: boolean | null;
  readonly name: string | null;
  readonly namespace: string | null;
  readonly node: string | null;
  /** null: in both (or no state file to compare with). */
  readonly drift: Drift | null;
  /** inpod with ZDS: whether ztunnel took the pod (acked / pending / nacked / no-ztunnel); null otherwise. */
  readonly zds: string | null;
  /** ztunnel's nack text or why the last Add failed. */
  readonly zdsError: string | null;
}

export interface PodsReport {
  readonly bpffs: string;
  readonly stateFile: string;
  /** false: no state file, names unknown and drift not computed. */
  readonly stateFound: boolean;
  readonly updatedAt: string | null;
  readonly pods: readonly PodRow[];
  readonly drift: number;
  /** ambpf_pods holds max_entries entries: a pod the map lacks did not fit (the loader logged it). */
  readonly podsMapFull: boolean;
}

export interface PodsInput {
  readonly bpffs: string;
  readonly stateFile: string;
  readonly state: StateFile | null;
  readonly maps: Pick<DatapathMaps, 'pods' | 'netns'>;
  /** Host interface name of an ifindex in the node's netns (null: unknown). */
  readonly ifName: (ifindex: number) => string | null;
}

export function collectPods(i: PodsInput): PodsReport {
  const byIp = new Map<string, StateFile['pods'][number]>();
  for (const p of i.state?.pods ?? []) for (const ip of p.ips) byIp.set(ip, p);
  const cookies = new Set(i.maps.netns.keys());
  const node = i.state?.node ?? null;
  const rows: PodRow[] = [];
  const inMap = new Set<string>();
  for (const [ip, v] of i.maps.pods.entries()) {
    inMap.add(ip);
    const pod = byIp.get(ip);
    rows.push({
      ip,
      netnsCookie: String(v.netnsCookie),
      hostIfindex: v.hostIfindex,
      // The loader recorded the name it attached to; the index is resolved only when it did not.
      hostIfname: pod?.hostIfname ?? (v.hostIfindex ? i.ifName(v.hostIfindex) : null),
      flags: podFlagWords(v.flags),
      netnsEntry: cookies.has(v.netnsCookie),
      name: pod?.name ?? null,
      namespace: pod?.namespace ?? null,
      node: pod ? node : null,
      drift: i.state && !pod ? 'not-in-state-file' : null,
      zds: pod?.zds?.state ?? null,
      zdsError: pod?.zds?.error ?? null,
    });
  }
  for (const [ip, pod] of byIp) {
    if (inMap.has(ip)) continue;
    rows.push({
      ip,
      netnsCookie: null,
      hostIfindex: null,
      hostIfname: pod.hostIfname,
      flags: [],
      netnsEntry: null,
      name: pod.name,
      namespace: pod.namespace,
      node,
      drift: 'not-in-map',
      zds: pod.zds?.state ?? null,
      zdsError: pod.zds?.error ?? null,
    });
  }
  rows.sort((a, b) => compareIps(a.ip, b.ip));
  return {
    bpffs: i.bpffs,
    stateFile: i.stateFile,
    stateFound: i.state !== null,
    updatedAt: i.state?.updatedAt ?? null,
    pods: rows,
    drift: rows.filter((r) => r.drift).length,
    podsMapFull: inMap.size >= i.maps.pods.map.maxEntries,
  };
}

const dash = (v: string | number | null): string => (v === null || v === '' ? '-' : String(v));

export function renderPods(r: PodsReport): string {
  const withZds = r.pods.some((p) => p.zds !== null);
  const rows = r.pods.map((p) => [
    p.ip,
    p.name ? `${p.namespace}/${p.name}` : '-',
    dash(p.node),
    dash(p.netnsCookie),
    p.hostIfindex === null ? dash(p.hostIfname) : `${dash(p.hostIfname)} (${p.hostIfindex})`,
    p.flags.join(',') || '-',
    p.drift === 'not-in-state-file'
      ? 'DRIFT: in map, not in state file'
      : p.drift === 'not-in-map'
        ? `DRIFT: in state file, not in map${r.podsMapFull ? ' (ambpf_pods is full: it may not fit; raise --max-pods)' : ''}`
        : p.netnsEntry === false
          ? 'no ambpf_netns entry'
          : p.zdsError
            ? `ztunnel: ${p.zdsError}`
            : '',
    // ZTUNNEL only where ambpf hands pods to ztunnel over ZDS (inpod): the node topology has no such state.
    ...(withZds ? [dash(p.zds)] : []),
  ]);
  const headers = [
    'POD IP',
    'POD',
    'NODE',
    'NETNS COOKIE',
    'HOST IF (INDEX)',
    'FLAGS',
    'NOTE',
    ...(withZds ? ['ZTUNNEL (ZDS)'] : []),
  ];
  let out = r.pods.length ? renderTable(headers, rows) : `ambpf_pods under ${r.bpffs} is empty.\n`;
  const inMap = r.pods.filter((p) => p.drift !== 'not-in-map').length;
  out += '\n';
  if (!r.stateFound) {
    out +=
      `${inMap} entr${inMap === 1 ? 'y' : 'ies'} in ambpf_pods. No state file at ${r.stateFile}: pod names unknown, drift not checked ` +
      '(pass the --state-file of `ambpf run`).\n';
  } else {
    out +=
      `${inMap} entr${inMap === 1 ? 'y' : 'ies'} in ambpf_pods; state file ${r.stateFile} updated ${r.updatedAt}. ` +
      (r.drift
        ? `${r.drift} drifted (the loader should repair them on its next pass; if they stay, check its log).\n`
        : 'No drift.\n');
  }
  return out;
}
