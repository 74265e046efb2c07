// Every map the loader or the programs fill: what a full one does (docs/maps.md says it at length),
// which counter the programs bump when an insert fails, and a monitor that keeps each map's fill
// and logs, naming the map, when it fills up or inserts start failing.
//
// A full map never breaks a connection that exists (its entry was written when it started) and
// never sends a captured pod's traffic around ztunnel: a failed insert either costs nothing
// (the connection takes the normal path, counted) or fails the new connection closed (counted).
//
// Counting a map's entries walks its keys (one syscall per key), so the monitor does it on its own
// clock, at most every `refreshMs`, and a /metrics scrape reads the cached figures: O(maps).
import { existsSync } from 'node:fs';
import { BpfMap } from '../libbpf/index.ts';
import { mapPin } from '../bpf/pins.ts';
import { isAmbpfMap } from '../bpf/names.ts';
import type { StatName, Stats } from '../bpf/schema.ts';
import { logger, type Logger } from '../log.ts';

export interface MapSpec {
  readonly map: string;
  /** loader: written by reconcile (a failure is a MapFullError it reports); programs: by the datapath. */
  readonly filledBy: 'loader' | 'programs';
  /** The ambpf_stats counter the programs bump on a failed insert (programs-filled maps). */
  readonly stat?: StatName;
  /** Socket storage has no max_entries: no fill, only failed inserts (no memory). */
  readonly sized: boolean;
  /** One line: what happens when it is full (docs/maps.md). */
  readonly whenFull: string;
}

export const MAP_SPECS: readonly MapSpec[] = [
  {
    map: 'ambpf_pods',
    filledBy: 'loader',
    sized: true,
    whenFull:
      'a new pod is not captured (reported: ambpf pods, ambpf status, log); pods already in the map are unaffected',
  },
  {
    map: 'ambpf_netns',
    filledBy: 'loader',
    sized: true,
    whenFull: "a new pod's outbound is not captured (reported as for ambpf_pods); existing pods unaffected",
  },
  {
    map: 'ambpf_pair_dst',
    filledBy: 'programs',
    stat: 'mapfull_pair_dst',
    sized: true,
    whenFull:
      'node: a new redirected connection reaches ztunnel without SO_ORIGINAL_DST, which closes it; existing connections unaffected',
  },
  {
    map: 'ambpf_sockhash',
    filledBy: 'programs',
    stat: 'mapfull_sockhash',
    sized: true,
    whenFull: 'node --splice: a new connection is not spliced and takes the normal path',
  },
  {
    map: 'ambpf_outflow',
    filledBy: 'programs',
    stat: 'mapfull_outflow',
    sized: true,
    whenFull:
      'node: a new outbound connection of a pod has its replies steered to ztunnel, which resets it; existing connections unaffected',
  },
  {
    map: 'ambpf_outflow6',
    filledBy: 'programs',
    stat: 'mapfull_outflow6',
    sized: true,
    whenFull:
      'node: a new outbound IPv6 connection of a pod has its replies steered to ztunnel, which resets it; existing connections unaffected',
  },
  {
    map: 'ambpf_orig_dst',
    filledBy: 'programs',
    stat: 'mapfull_orig_dst',
    sized: false,
    whenFull: 'node: no socket memory: the connect is not redirected (goes as asked), counted',
  },
  {
    map: 'ambpf_inpod_closed',
    filledBy: 'programs',
    stat: 'mapfull_inpod_closed',
    sized: true,
    whenFull:
      'inpod LRU: an evicted entry is the original of a client that closed before ztunnel accepted and was never asked for; an insert fails only without memory (that connection then gets no SO_ORIGINAL_DST, and ztunnel closes it)',
  },
  {
    map: 'ambpf_inpod_listen',
    filledBy: 'loader',
    sized: true,
    whenFull: "inpod: a new pod's inbound is refused (fail closed) until it fits; reported by the loader",
  },
  {
    map: 'ambpf_inpod_origsrc',
    filledBy: 'programs',
    stat: 'mapfull_inpod_origsrc',
    sized: true,
    whenFull:
      'inpod LRU: an evicted entry refuses one spoofed ztunnel leg, which ztunnel retries; never sent around ztunnel',
  },
  {
    map: 'ambpf_inpod_nodesyn',
    filledBy: 'programs',
    stat: 'mapfull_inpod_nodesyn',
    sized: true,
    whenFull: 'inpod LRU: an evicted entry sends that one kubelet probe through ztunnel (it still reaches the app)',
  },
  {
    map: 'ambpf_inpod_sk',
    filledBy: 'programs',
    stat: 'mapfull_inpod_sk',
    sized: false,
    whenFull: 'inpod: no socket memory: the connect is refused (EPERM, fail closed) unless --fail-open',
  },
  {
    map: 'ambpf_inpod_dns',
    filledBy: 'programs',
    stat: 'mapfull_inpod_dns',
    sized: false,
    whenFull: 'inpod: no socket memory: the DNS query is refused (EPERM, fail closed) unless --fail-open',
  },
];

/** Fill at which a map is called under pressure: the next burst of pods or connections may not fit. */
export const PRESSURE_AT = 0.8;

export interface MapHealth {
  readonly map: string;
  /** null for socket storage (no max_entries). */
  readonly entries: number | null;
  readonly maxEntries: number | null;
  /** entries / maxEntries, 0..1; null for socket storage. */
  readonly fill: number | null;
  readonly pressure: boolean;
  /** Failed inserts: by the programs (ambpf_stats) and by the loader (MapFullError), since load/start. */
  readonly failedByPrograms: number;
  readonly failedByLoader: number;
}

/** Entries of a map, walking at most limit + 1 keys (a map refilled while we walk cannot hold us). */
export function countEntries(map: Pick<BpfMap, 'nextKey'>, limit: number): number {
  let n = 0;
  for (let k = map.nextKey(null); k !== undefined && n <= limit; k = map.nextKey(k)) n++;
  return Math.min(n, limit);
}

/** The health of each map present in `maps` (absent ones are another topology's), now. */
export function readMapHealth(
  maps: Readonly<Record<string, Pick<BpfMap, 'nextKey' | 'maxEntries'>>>,
  stats: Stats | undefined,
  loaderFailures: Readonly<Record<string, number>> = {},
): MapHealth[] {
  const out: MapHealth[] = [];
  for (const spec of MAP_SPECS) {
    const m = maps[spec.map];
    if (!m) continue;
    const failedByPrograms = spec.stat && stats ? Number(stats[spec.stat] ?? 0n) : 0;
    const failedByLoader = loaderFailures[spec.map] ?? 0;
    if (!spec.sized || m.maxEntries === 0) {
      out.push({
        map: spec.map,
        entries: null,
        maxEntries: null,
        fill: null,
        pressure: false,
        failedByPrograms,
        failedByLoader,
      });
      continue;
    }
    const entries = countEntries(m, m.maxEntries);
    const fill = entries / m.maxEntries;
    out.push({
      map: spec.map,
      entries,
      maxEntries: m.maxEntries,
      fill,
      pressure: fill >= PRESSURE_AT,
      failedByPrograms,
      failedByLoader,
    });
  }
  return out;
}

/** The maps `names` (default: all of MAP_SPECS) pinned under bpffs, those present; close() releases the fds. */
export function openPinnedSpecMaps(
  bpffs: string,
  names: readonly string[] = MAP_SPECS.map((m) => m.map),
): { maps: Record<string, BpfMap>; close(): void } {
  const maps: Record<string, BpfMap> = {};
  for (const name of names) {
    if (!isAmbpfMap(name)) continue;
    const pin = mapPin(bpffs, name);
    if (!existsSync(pin)) continue;
    try {
      maps[name] = BpfMap.openPinned(pin);
    } catch {
      // a pin we cannot open (another version's): left out of the view
    }
  }
  return { maps, close: () => Object.values(maps).forEach((m) => m.close()) };
}

export interface MapMonitorOptions {
  readonly maps: () => Readonly<Record<string, Pick<BpfMap, 'nextKey' | 'maxEntries'>>> | undefined;
  readonly stats: () => Stats | undefined;
  /** Loader-side failed inserts by map (Reconciler.stats.mapFullByMap). */
  readonly loaderFailures?: () => Readonly<Record<string, number>>;
  /**
   * Changes whenever the loader wrote its maps (Reconciler.stats.passes): the maps the loader fills
   * (bounded by the pods of one node, and walked by every pass anyway) are then counted again at the
   * next read, so a scrape right after a pass shows it. The maps the programs fill (up to max_entries
   * connections) are only walked by refresh(), on the loader's clock.
   */
  readonly loaderGeneration?: () => number;
  readonly log?: Logger;
}

/**
 * Keeps each map's health, refreshed by refresh() (the loader calls it on a timer), and says in the
 * log, naming the map, when inserts into it failed since the last refresh and when its fill crosses
 * PRESSURE_AT (and when it is back under).
 */
export class MapMonitor {
  readonly #o: MapMonitorOptions;
  readonly #log: Logger;
  #last: MapHealth[] = [];
  #generation: number | undefined;
  readonly #failedSeen = new Map<string, number>();
  readonly #pressured = new Set<string>();

  constructor(o: MapMonitorOptions) {
    this.#o = o;
    this.#log = o.log ?? logger('maps');
  }

  /** The figures of the last refresh (what a scrape reports), the loader's maps recounted after a pass. */
  current(): readonly MapHealth[] {
    const gen = this.#o.loaderGeneration?.();
    if (gen !== undefined && gen !== this.#generation) {
      this.#generation = gen;
      this.refresh((spec) => spec.filledBy === 'loader');
    }
    return this.#last;
  }

  /** Count the maps again (those `only` selects; default all) and log what changed. */
  refresh(only?: (spec: MapSpec) => boolean): readonly MapHealth[] {
    const all = this.#o.maps();
    if (!all) return this.#last;
    const maps = only
      ? Object.fromEntries(
          Object.entries(all).filter(([n]) => {
            const spec = MAP_SPECS.find((x) => x.map === n);
            return spec !== undefined && only(spec);
          }),
        )
      : all;
    const now = readMapHealth(maps, this.#o.stats(), this.#o.loaderFailures?.());
    for (const h of now) {
      const spec = MAP_SPECS.find((s) => s.map === h.map)!;
      const failed = h.failedByPrograms + h.failedByLoader;
      const seen = this.#failedSeen.get(h.map);
      // The first refresh takes the counters as they are (a restarted loader reads a pinned map's
      // history): only failures that happen while it watches are news.
      if (seen !== undefined && failed > seen) {
        this.#log.warn(
          { map: h.map, failed: failed - seen, total: failed, entries: h.entries, maxEntries: h.maxEntries },
          `map ${h.map}: ${failed - seen} insert${failed - seen === 1 ? '' : 's'} failed (full): ${spec.whenFull}`,
        );
      }
      this.#failedSeen.set(h.map, failed);
      if (h.pressure && !this.#pressured.has(h.map)) {
        this.#pressured.add(h.map);
        this.#log.warn(
          { map: h.map, entries: h.entries, maxEntries: h.maxEntries },
          `map ${h.map} is ${Math.round((h.fill ?? 0) * 100)}% full (${h.entries} of ${h.maxEntries}); when full: ${spec.whenFull}`,
        );
      } else if (!h.pressure && this.#pressured.delete(h.map)) {
        this.#log.info(
          { map: h.map, entries: h.entries, maxEntries: h.maxEntries },
          `map ${h.map} is below ${PRESSURE_AT * 100}% again`,
        );
      }
    }
    const fresh = new Map(now.map((h) => [h.map, h]));
    const merged = this.#last.map((h) => fresh.get(h.map) ?? h);
    for (const h of now) if (!this.#last.some((x) => x.map === h.map)) merged.push(h);
    this.#last = merged;
    return merged;
  }
}

/** Names `--map-sizes` accepts: the sized maps (socket storage has no size). */
export const SIZED_MAPS: readonly string[] = MAP_SPECS.filter((m) => m.sized).map((m) => m.map);

/**
 * `--max-pods N` and `--map-sizes name=N,...` as max_entries by map name (applied when a map is
 * created; a reused pin keeps its size). --max-pods sizes the per-pod maps: ambpf_pods and ambpf_netns
 * one entry per pod, ambpf_inpod_listen six per pod (15001, 15006 and 15008, twice during a ztunnel
 * rolling upgrade); --map-sizes names any sized map and wins. Throws a message for the usage error.
 */
export function mapSizesFrom(maxPods: number | undefined, spec: string | undefined): Record<string, number> {
  const out: Record<string, number> = {};
  if (maxPods !== undefined)
    Object.assign(out, { ambpf_pods: maxPods, ambpf_netns: maxPods, ambpf_inpod_listen: maxPods * 6 });
  for (const part of (spec ?? '')
    .split(',')
    .map((p) => p.trim())
    .filter(Boolean)) {
    const m = /^([a-z0-9_]+)=(\d+)$/.exec(part);
    const name = m ? (m[1]!.startsWith('ambpf_') ? m[1]! : `ambpf_${m[1]!}`) : '';
    const n = m ? Number(m[2]) : NaN;
    if (!m || !SIZED_MAPS.includes(name)) {
      throw new Error(`--map-sizes: '${part}' is not NAME=N with NAME one of ${SIZED_MAPS.join(', ')}`);
    }
    if (!Number.isSafeInteger(n) || n < 1)
      throw new Error(`--map-sizes: ${name} must be a positive integer, not ${m[2]}`);
    out[name] = n;
  }
  return out;
}
