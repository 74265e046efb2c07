// Typed access to ambpf's maps: each map's keys and values go through the codecs of schema.ts, so
// callers (reconcile, status, tests) deal in IPs, cookies and objects, never in raw bytes.
// Works on maps of a loaded object and on maps opened from their pins (another process's datapath).
import { BpfMap } from '../libbpf/index.ts';
import { mapPin } from './pins.ts';
import * as s from './schema.ts';

/** What a write into a full map raises (TypedMap.set, SingletonMap.set): callers report and count it. */
export { MapFullError } from '../libbpf/index.ts';

import { MAP_NAMES, type MapName } from './names.ts';

export { MAP_NAMES, RETIRED_MAP_NAMES, type MapName } from './names.ts';

/** A hash map seen through a key codec and a value codec. */
export class TypedMap<K, V> {
  readonly map: BpfMap;
  readonly #encKey: (k: K) => Uint8Array;
  readonly #decKey: (b: Uint8Array) => K;
  readonly #encVal: (v: V) => Uint8Array;
  readonly #decVal: (b: Uint8Array) => V;

  constructor(
    map: BpfMap,
    key: [(k: K) => Uint8Array, (b: Uint8Array) => K],
    value: [(v: V) => Uint8Array, (b: Uint8Array) => V],
  ) {
    this.map = map;
    [this.#encKey, this.#decKey] = key;
    [this.#encVal, this.#decVal] = value;
  }

  get(key: K): V | undefined {
    const v = this.map.lookup(this.#encKey(key));
    return v === undefined ? undefined : this.#decVal(v);
  }

  /** Insert or replace; a full map raises MapFullError (the caller reports and counts it). */
  set(key: K, value: V): void {
    this.map.update(this.#encKey(key), this.#encVal(value));
  }

  /** true when the key was there. */
  delete(key: K): boolean {
    return this.map.delete(this.#encKey(key));
  }

  keys(): K[] {
    const out: K[] = [];
    for (let k = this.map.nextKey(null); k !== undefined; k = this.map.nextKey(k)) out.push(this.#decKey(k));
    return out;
  }

  /** Every entry; keys deleted while iterating are skipped. */
  entries(): Array<[K, V]> {
    const out: Array<[K, V]> = [];
    for (let k = this.map.nextKey(null); k !== undefined; k = this.map.nextKey(k)) {
      const v = this.map.lookup(k);
      if (v !== undefined) out.push([this.#decKey(k), this.#decVal(v)]);
    }
    return out;
  }
}

/** An ARRAY[1] map holding one struct (ztunnel, config). */
export class SingletonMap<V> {
  readonly map: BpfMap;
  readonly #enc: (v: V) => Uint8Array;
  readonly #dec: (b: Uint8Array) => V;
  static readonly #KEY = s.encodeU32Key(0);

  constructor(map: BpfMap, enc: (v: V) => Uint8Array, dec: (b: Uint8Array) => V) {
    this.map = map;
    this.#enc = enc;
    this.#dec = dec;
  }

  /** The raw slot: all zero until the loader writes it. */
  raw(): Uint8Array {
    return this.map.lookup(SingletonMap.#KEY) ?? new Uint8Array(this.map.valueSize);
  }

  get(): V {
    return this.#dec(this.raw());
  }

  set(value: V): void {
    this.map.update(SingletonMap.#KEY, this.#enc(value));
  }

  /** Back to all zero: for ztunnel that means "unknown", so nothing is redirected. */
  clear(): void {
    this.map.update(SingletonMap.#KEY, new Uint8Array(this.map.valueSize));
  }
}

const ipKey: [(k: string) => Uint8Array, (b: Uint8Array) => string] = [s.encodeIpKey, s.decodeIpKey];
const u64Key: [(k: bigint) => Uint8Array, (b: Uint8Array) => bigint] = [s.encodeU64Key, s.decodeU64Key];

/** The typed views over one set of ambpf maps. Does not own the BpfMaps (close them via their owner). */
export class DatapathMaps {
  readonly pods: TypedMap<string, s.PodValue>;
  readonly netns: TypedMap<bigint, s.NetnsValue>;
  readonly ztunnel: SingletonMap<s.ZtunnelValue>;
  readonly config: SingletonMap<s.ConfigValue>;
  readonly pairs: TypedMap<s.Tuple, s.PairValue>;
  /** Connections ambient pods opened themselves (flow as seen entering the pod) -> start time (ns). */
  readonly outflow: TypedMap<s.Flow4, bigint>;
  /** The same for IPv6, by the pod's own 4-tuple (local = the pod). */
  readonly outflow6: TypedMap<s.Tuple, bigint>;
  readonly raw: Readonly<Record<MapName, BpfMap>>;

  constructor(get: (name: MapName) => BpfMap) {
    const raw = {} as Record<MapName, BpfMap>;
    for (const n of MAP_NAMES) raw[n] = get(n);
    this.raw = raw;
    this.pods = new TypedMap(raw.ambpf_pods, ipKey, [s.encodePod, s.decodePod]);
    this.netns = new TypedMap(raw.ambpf_netns, u64Key, [s.encodeNetns, s.decodeNetns]);
    this.ztunnel = new SingletonMap(raw.ambpf_ztunnel, s.encodeZtunnel, s.decodeZtunnel);
    this.config = new SingletonMap(raw.ambpf_config, s.encodeConfig, s.decodeConfig);
    this.pairs = new TypedMap(raw.ambpf_pair_dst, [s.encodeTuple, s.decodeTuple], [s.encodePair, s.decodePair]);
    this.outflow = new TypedMap(raw.ambpf_outflow, [s.encodeFlow4, s.decodeFlow4], [s.encodeU64Key, s.decodeU64Key]);
    this.outflow6 = new TypedMap(raw.ambpf_outflow6, [s.encodeTuple, s.decodeTuple], [s.encodeU64Key, s.decodeU64Key]);
  }

  /** Every counter of ambpf_stats, summed over CPUs. */
  stats(): s.Stats {
    const out = {} as s.Stats;
    s.STAT_NAMES.forEach((name, i) => {
      const per = this.raw.ambpf_stats.lookupPerCpu(s.encodeU32Key(i));
      out[name] = per ? s.sumPerCpu(per) : 0n;
    });
    return out;
  }
}

/** Typed maps over the pins under bpffs (no object loaded); close() releases the fds. */
export function openPinnedMaps(bpffs: string): DatapathMaps & { close(): void } {
  const opened: BpfMap[] = [];
  try {
    const maps = new DatapathMaps((n) => {
      const m = BpfMap.openPinned(mapPin(bpffs, n));
      opened.push(m);
      return m;
    });
    return Object.assign(maps, { close: () => opened.forEach((m) => m.close()) });
  } catch (err) {
    opened.forEach((m) => m.close());
    throw err;
  }
}
