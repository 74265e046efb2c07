// Doubles for the inpod topology's unit tests: a datapath that keeps pins and maps in memory and
// records every call (which pod's pins and map keys a pass touched), and a handoff that records syncs.
import type { InpodDatapath, PodArm } from '../../src/bpf/datapath-inpod.ts';
import type { ResolvedPod } from '../../src/node/discovery.ts';
import type { ZtunnelHandoff } from '../../src/reconcile/topology-inpod.ts';
import type { NetnsEntry, PodEntry } from '../../src/reconcile/plan.ts';

export function pod(name: string, cookie: bigint, pid: number): ResolvedPod {
  return {
    uid: `uid-${name}`,
    name,
    namespace: 'mesh',
    ips: [`198.18.9.${cookie}`],
    serviceAccount: 'default',
    pid,
    pids: pid === 0 ? [] : [pid],
    netnsPath: `/nonexistent/${name}`,
    netnsCookie: cookie,
    hostLink: undefined,
  };
}

export interface Table<K, V> {
  entries(): Array<[K, V]>;
  keys(): K[];
  get(k: K): V | undefined;
  set(k: K, v: V): void;
  delete(k: K): boolean;
}

/** An in-memory stand-in for one pinned map; `capacity` makes it refuse inserts past that many. Every
 * call is logged in `calls` (`get 10.0.0.1`, `walk`). */
export function table<K, V>(calls: string[] = [], capacity = Infinity): Table<K, V> {
  const m = new Map<K, V>();
  return {
    entries: () => {
      calls.push('walk');
      return [...m];
    },
    keys: () => [...m.keys()],
    get: (k) => {
      calls.push(`get ${k}`);
      return m.get(k);
    },
    set: (k, v) => {
      calls.push(`set ${k}`);
      if (!m.has(k) && m.size >= capacity) throw new Error('map is full (E2BIG)');
      m.set(k, v);
    },
    delete: (k) => {
      calls.push(`delete ${k}`);
      return m.delete(k);
    },
  };
}

/** ambpf_ztunnel's one entry (flags 0: no ztunnel). */
function ztunnelSlot(calls: string[]): { get(): { flags: number }; set(v: { flags: number }): void; clear(): void } {
  let value = { flags: 0 };
  return {
    get: () => value,
    set: (v) => {
      calls.push('set ztunnel');
      value = v;
    },
    clear: () => {
      calls.push('clear ztunnel');
      value = { flags: 0 };
    },
  };
}

/** A datapath double: pins in a Set, writes recorded in order, maps in memory, every look recorded. */
export function fakeDatapath(o: { armFails?: ReadonlySet<bigint>; podsCapacity?: number } = {}): {
  dp: InpodDatapath;
  log: string[];
  /** Pin and map reads and writes, by what they were about (`isArmed 11`, `get 198.18.9.11`, `walk`). */
  looks: string[];
  pinned: Set<bigint>;
  maps: { pods: Table<string, PodEntry>; netns: Table<bigint, NetnsEntry> };
} {
  const log: string[] = [];
  const looks: string[] = [];
  const pinned = new Set<bigint>();
  const maps = {
    pods: table<string, PodEntry>(looks, o.podsCapacity),
    netns: table<bigint, NetnsEntry>(looks),
  };
  const double = {
    maps: { ...maps, ztunnel: ztunnelSlot(looks) },
    attachedPods: () => {
      looks.push('attachedPods');
      return new Set(pinned);
    },
    isArmed: (cookie: bigint) => {
      looks.push(`isArmed ${cookie}`);
      return pinned.has(cookie);
    },
    hasListener: () => false,
    keepDstFor: () => () => false,
    armPod: (p: PodArm) => {
      log.push(`arm ${p.netnsCookie}`);
      if (o.armFails?.has(p.netnsCookie)) throw new Error('sk_lookup attach failed');
      pinned.add(p.netnsCookie);
      return 'created';
    },
    setListeners: () => log.push('listeners'),
    detachPod: (cookie: bigint) => {
      log.push(`release ${cookie}`);
      return pinned.delete(cookie);
    },
  };
  // The double implements the part of InpodDatapath the topology calls.
  return { dp: double as unknown as InpodDatapath, log, looks, pinned, maps };
}

/** A handoff that serves no pod yet (ZDS Add not acked): no listeners are looked for. */
export function handoff(
  synced: Array<readonly string[]>,
  scopes: Array<ReadonlySet<string> | undefined> = [],
): ZtunnelHandoff {
  return {
    served: () => false,
    peerPids: () => [],
    sync: (armed, scope) => {
      synced.push(armed.map((p) => p.name));
      scopes.push(scope);
    },
    status: () => [],
  };
}
