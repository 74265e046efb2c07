// The contract between the reconciler and a topology (where ztunnel listens: its own pod, `node`, or
// every mesh pod's netns, `inpod`). The reconciler owns the pass and the shared maps; a topology owns
// what is attached around them. One pass, in this order:
//   plan     decide from what the kernel holds: reads pins, maps and /proc, writes nothing;
//   capture  what must be in place before the maps redirect a pod (ztunnel's side, the pod's capture);
//            returns the maps' target and what they hold now;
//   (maps)   the reconciler writes the diff (plan.ts);
//   release  what must follow the maps: undo for pods that left, only once nothing redirects to them
//            (node: tc on the pods' veths, on for the pods the maps now hold, off for those they dropped).
// and at any time: inspect (health for the resync policy and the state file), rescan (the next pass
// re-reads what the topology caches of the kernel). Kernel I/O and pin names stay in src/bpf/.
//
// A pass may be scoped (PassInput.scope: the uids of the pods that changed, e.g. one CNI ADD or one watch
// event): the same steps, restricted to those pods and to the map keys they hold or held. The resolution
// still names every pod (the others as the last pass resolved them), so the maps' target is the same
// one a full pass computes; a topology may narrow its work to the scope (inpod does) or ignore it and
// do a full pass (node does): both leave the kernel as a full pass would.
import type { DatapathMaps } from '../bpf/datapath-maps.ts';
import { ZT_READY } from '../bpf/schema.ts';
import type { Resolution } from '../node/discovery.ts';
import type { DesiredState, Problem } from '../state/desired.ts';
import type { Current, Plan, Target } from './plan.ts';

export type TopologyKind = 'node' | 'inpod';

/** Runs fn, turning a throw into an error line (and keeping the pass going); false when it threw. */
export type Attempt = (what: string, fn: () => unknown) => boolean;

/** What a pass gives its topology to report through. */
export interface PassContext {
  readonly attempt: Attempt;
  /** An error that is not one call's (a failed attach retried later): reported and counted. */
  readonly fail: (error: string) => void;
  /** Marks the end of a named phase for the pass's timing log. */
  readonly lap: (phase: string) => void;
}

export interface PassInput {
  readonly desired: DesiredState;
  readonly resolution: Resolution;
  /** Pod uids this pass is about (the rest is as the last pass left it); undefined: every pod. */
  readonly scope?: ReadonlySet<string> | undefined;
}

/** One thing a pass will do to the kernel, decided by plan() before any of it is done. */
export interface Step {
  readonly kind: string;
  /** What it is about, for the log: a pod, an interface, a pin. */
  readonly subject: string;
}

export interface Captured {
  /** What the maps should hold (a scoped pass: restricted to the keys its pods hold or held). */
  readonly target: Target;
  /** What they hold now (before this pass writes them), for the same keys as target. */
  readonly current: Current;
  /** What this pass could not do yet and will retry (a pod with no listeners yet). */
  readonly unresolved: readonly Problem[];
}

export interface Released {
  /** Attachments made (inpod: pods armed; node: interfaces steered), by pin or interface name. */
  readonly attached: readonly string[];
  readonly detached: readonly string[];
}

/** One pass of a topology, planned; capture and release run once each, in that order. */
export interface TopologyPass {
  readonly steps: readonly Step[];
  capture(cx: PassContext): Promise<Captured>;
  release(maps: Plan, cx: PassContext): Promise<Released>;
}

/** A pod's handoff to ztunnel as the state file shows it (inpod with ZDS; none otherwise). */
export interface HandoffStatus {
  readonly uid: string;
  readonly state: string;
  readonly error: string | undefined;
}

export interface TopologyHealth {
  /** False when ztunnel's listeners left the datapath (ztunnel restarted): time for a pass. */
  readonly listenersPresent: boolean;
  readonly handoff: readonly HandoffStatus[];
}

export interface Topology {
  readonly kind: TopologyKind;
  /** The shared maps (docs/architecture.md "Maps") the reconciler writes. */
  readonly maps: DatapathMaps;
  plan(input: PassInput): TopologyPass;
  inspect(): TopologyHealth;
  /** The next pass re-reads from the kernel what passes in between trust (the safety-net pass). */
  rescan(): void;
}

/**
 * A scoped pass's view of the maps: the target and what the maps hold, both restricted to these pod
 * IPs and netns cookies (and ztunnel's entry), read key by key instead of walking the maps. The diff of
 * the two is the full pass's diff restricted to those keys.
 */
export function restrictToKeys(
  maps: DatapathMaps,
  target: Target,
  ips: ReadonlySet<string>,
  cookies: ReadonlySet<bigint>,
): { target: Target; current: Current } {
  const pick = <K, V>(from: ReadonlyMap<K, V>, keys: ReadonlySet<K>): Map<K, V> =>
    new Map([...keys].flatMap((k): Array<[K, V]> => (from.has(k) ? [[k, from.get(k)!]] : [])));
  const read = <K, V>(get: (k: K) => V | undefined, keys: ReadonlySet<K>): Map<K, V> =>
    new Map(
      [...keys].flatMap((k): Array<[K, V]> => {
        const v = get(k);
        return v === undefined ? [] : [[k, v]];
      }),
    );
  const zt = maps.ztunnel.get();
  return {
    target: { ...target, pods: pick(target.pods, ips), netns: pick(target.netns, cookies) },
    current: {
      pods: read((ip) => maps.pods.get(ip), ips),
      netns: read((c) => maps.netns.get(c), cookies),
      ztunnel: (zt.flags & ZT_READY) !== 0 ? zt : undefined,
      inbound: new Set(target.inbound),
    },
  };
}

/** What the shared maps hold now; `inbound`: the interfaces the topology steers (node only). */
export function readCurrent(maps: DatapathMaps, inbound: Iterable<string> = []): Current {
  const zt = maps.ztunnel.get();
  return {
    pods: new Map(maps.pods.entries()),
    netns: new Map(maps.netns.entries()),
    ztunnel: (zt.flags & ZT_READY) !== 0 ? zt : undefined,
    inbound: new Set(inbound),
  };
}
