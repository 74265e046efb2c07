// The inpod topology (ztunnel >= 1.23 listens inside every mesh pod's netns): the same desired state
// and discovery as the node topology, but a mesh pod is captured inside its own netns. Per pod, in
// order:
//  1. arm: sk_lookup on its netns + the spoofed legs' return route, then its ambpf_netns/ambpf_pods
//     entries (the pass's map phase). From here its traffic can only reach ztunnel's ports: with no
//     ztunnel listening, its connects are refused and inbound SYNs answered with a RST (fail closed);
//  2. hand it to ztunnel (ZDS Add; src/agent/handoff.ts, after the pass);
//  3. once ztunnel acked: its 15001/15006/15008 listeners found in the pod's netns and registered.
// Pods that leave lose their map entries first, then their sk_lookup link and listener entries, and
// then ztunnel is told (Del).
//
// plan() decides every pod's capture steps (arm, listeners, wait) from the pins, the maps and /proc
// before anything is written; capture carries them out in order, release undoes the pods that left.
// A scoped pass (PassInput.scope: one CNI ADD, one watch event, one ZDS ack) does the same for the
// scope's pods only: their pins, their map keys (those they hold now and held before), their handoff;
// the other pods' pins, maps and /proc are not read.
import { existsSync, statSync } from 'node:fs';
import type { InpodDatapath, KeepDstPod } from '../bpf/datapath-inpod.ts';
import type { DatapathMaps } from '../bpf/datapath-maps.ts';
import {
  podListenerInodes,
  SocketHolderCache,
  type ListenerInodes,
  type SocketHolder,
} from '../bpf/inpod-listeners.ts';
import {
  LISTENER_HBONE,
  LISTENER_INBOUND,
  POD_AMBIENT,
  POD_IS_ZTUNNEL,
  POD_LOCAL_ROUTE,
  PORT_HBONE,
  PORT_INBOUND,
  PORT_OUTBOUND,
  dnsCaptureFlags,
  ztunnelValue,
} from '../bpf/schema.ts';
import type { Problem } from '../state/desired.ts';
import type { Resolution, ResolvedPod } from '../node/discovery.ts';
import type { Current, NetnsEntry, PodEntry, Target, ZtunnelEntry } from './plan.ts';
import type { PodListeners } from '../bpf/datapath-inpod.ts';
import {
  readCurrent,
  restrictToKeys,
  type Attempt,
  type Captured,
  type PassInput,
  type Topology,
  type TopologyHealth,
  type TopologyPass,
} from './topology.ts';

export type { Attempt } from './topology.ts';

const PORTS = { outbound: PORT_OUTBOUND, inbound: PORT_INBOUND, hbone: PORT_HBONE } as const;
const NO_MAC = '00:00:00:00:00:00';
/** Captured pods whose listeners one safety-net pass re-reads from /proc (InpodTopology.rescan). */
export const SAFETY_NET_PODS = 16;
/**
 * With ZDS, captured pods whose listeners one resync tick looks up in the sockmap (in turn, so each pod
 * is looked at every pods / LISTENER_CHECKS_PER_TICK ticks): a restarted ztunnel is announced over ZDS,
 * so the ticks are only a backstop. Within LISTENER_WATCH_MS of a ztunnel connecting or leaving (a
 * rolling upgrade: the old one closes its listeners in every pod) every tick looks at every pod.
 */
export const LISTENER_CHECKS_PER_TICK = 32;
export const LISTENER_WATCH_MS = 60_000;

/** What was handed to the datapath for one pod, to notice a ztunnel restart (new listeners). */
interface PodCaptured {
  readonly pid: number;
  readonly ips: readonly string[];
  readonly inodes: ListenerInodes;
  readonly netnsPath: string;
}

/**
 * Who hands captured pods to ztunnel (ZDS, src/agent/handoff.ts). Without one (no --zds-socket),
 * ztunnel is taken to find the pods by itself and every armed pod is looked at for listeners.
 */
export interface ZtunnelHandoff {
  /** ztunnel acked an Add for this pod's current netns. */
  served(uid: string, netnsCookie: bigint): boolean;
  /** pids of the connected ztunnel processes (SO_PEERCRED): they hold the pods' listeners. */
  peerPids(): readonly number[];
  /**
   * After a pass: these pods are armed (Add the new ones), every other pod is not (Del). With a scope
   * (a scoped pass), only the pods of the scope are looked at: `armed` lists those of them armed.
   */
  sync(armed: readonly ResolvedPod[], scope?: ReadonlySet<string>): void;
  /** Each armed pod's ZDS state, for the state file. */
  status(): ReadonlyArray<{ uid: string; state: string; error: string | undefined }>;
  /** ms since the epoch when a ztunnel last connected or left (undefined: never). */
  peersChangedAt?(): number | undefined;
}

/**
 * One step of a pod's capture, decided before any of them runs. In a pass a pod has at most one arm
 * step, followed by either a listeners step or a wait; a pod whose arm fails takes no further step.
 */
export type InpodStep =
  /** sk_lookup on the pod's netns + tc + the spoofed legs' return route (datapath armPod). */
  | { readonly kind: 'arm'; readonly subject: string; readonly pod: ResolvedPod }
  /** ztunnel's listeners found in the pod's netns, registered for it (datapath setListeners). */
  | { readonly kind: 'listeners'; readonly subject: string; readonly pod: ResolvedPod; readonly found: FoundListeners }
  /** ztunnel serves the pod but its listeners cannot be registered yet: retried next pass. */
  | { readonly kind: 'wait'; readonly subject: string; readonly pod: ResolvedPod; readonly reason: string };

/** A pod that left (or whose netns was replaced): its listener entries, links and return route go. */
export interface ReleaseStep {
  readonly kind: 'release';
  readonly subject: string;
  readonly netnsCookie: bigint;
  readonly ips: readonly string[];
  readonly netnsPath: string | undefined;
}

/** What a capture left for the release and the handoff. */
interface CaptureDone {
  readonly captured: Captured;
  /** Pods whose capture is armed (in the target), for the handoff. */
  readonly armed: readonly ResolvedPod[];
  /** Pods armed by this pass. */
  readonly attached: readonly string[];
  /** A scoped pass: the netns cookies its release looks at (the scope's, before and now). */
  readonly candidates: ReadonlySet<bigint> | undefined;
}

interface FoundListeners {
  readonly inodes: ListenerInodes;
  readonly held: PodListeners;
}

const sameInodes = (a: ListenerInodes, b: ListenerInodes): boolean =>
  a.outbound === b.outbound &&
  a.inbound === b.inbound &&
  a.hbone === b.hbone &&
  a.outbound2 === b.outbound2 &&
  a.inbound2 === b.inbound2 &&
  a.hbone2 === b.hbone2;

/** The inodes found (a port without a listener has none). */
const listenerInodes = (i: ListenerInodes): string[] => Object.values(i).filter((x): x is string => x !== undefined);

/** ztunnel's three listeners in the pod's netns, with the ztunnel process holding each; else why not. */
function findListeners(inodes: ListenerInodes, holders: Map<string, SocketHolder>): FoundListeners | string {
  const get = (inode: string | undefined): SocketHolder | undefined =>
    inode === undefined ? undefined : holders.get(inode);
  const outbound = get(inodes.outbound);
  const inbound = get(inodes.inbound);
  const hbone = get(inodes.hbone);
  if (!outbound || !inbound || !hbone) {
    const missing = Object.entries({ [PORTS.outbound]: outbound, [PORTS.inbound]: inbound, [PORTS.hbone]: hbone })
      .filter(([, h]) => !h)
      .map(([p]) => p);
    return `ztunnel holds no listener on port ${missing.join(', ')} in the pod's netns yet`;
  }
  return {
    inodes,
    held: {
      outbound,
      inbound,
      hbone,
      outbound2: get(inodes.outbound2),
      inbound2: get(inodes.inbound2),
      hbone2: get(inodes.hbone2),
    },
  };
}

export interface InpodTopologyOptions {
  /** Who tells ztunnel about captured pods (ZDS); see ZtunnelHandoff. */
  readonly handoff?: ZtunnelHandoff | undefined;
}

export class InpodTopology implements Topology {
  readonly kind = 'inpod' as const;
  readonly #dp: InpodDatapath;
  readonly #handoff: ZtunnelHandoff | undefined;
  /** netns cookie -> what this process handed to the datapath. */
  readonly #captured = new Map<bigint, PodCaptured>();
  /** uid -> the pod as last resolved and armed (kept armed through a pass that cannot resolve it). */
  readonly #lastResolved = new Map<string, ResolvedPod>();
  /** netns cookie -> where this process armed a pod (its return route is removed at release). */
  readonly #armedAt = new Map<bigint, { netnsPath: string; ips: readonly string[] }>();
  /** Captured pods whose listeners the next pass re-reads from /proc (the safety net: rescan()). */
  #verify = new Set<bigint>();
  /** netns cookie -> the pass that last read the pod's listeners from /proc (rescan() picks the oldest). */
  readonly #verifiedAt = new Map<bigint, number>();
  #passes = 0;
  /** Which ztunnel process holds which listener (ztunnel's fd table, read as little as possible). */
  readonly #holders = new SocketHolderCache();
  /** Where the next resync tick's look at the listeners starts (inspect). */
  #listenerCursor = 0;

  constructor(dp: InpodDatapath, o: InpodTopologyOptions = {}) {
    this.#dp = dp;
    this.#handoff = o.handoff;
  }

  get maps(): DatapathMaps {
    return this.#dp.maps;
  }

  /**
   * Have the next pass check captured pods' listeners again (the periodic safety-net pass): the
   * SAFETY_NET_PODS read longest ago, not all of them. Each /proc read walks the node's whole TCP hash
   * table: at 250 pods a pass over all of them cost the loader ~5 s of CPU every 30 s (17 % of a core
   * when idle, issue 20) and held up the pod changes queued behind it. All are re-read in turn.
   */
  rescan(): void {
    const age = (c: bigint): number => this.#verifiedAt.get(c) ?? -1;
    this.#verify = new Set([...this.#captured.keys()].sort((a, b) => age(a) - age(b)).slice(0, SAFETY_NET_PODS));
  }

  /**
   * A captured pod whose inbound listeners are still in the datapath's sockmap is taken as is: ztunnel
   * closes all of a pod's listeners together when it restarts or leaves the pod, and a closed socket
   * leaves the sockmap at once. Reading /proc/<pid>/net/tcp instead walks the kernel's whole TCP hash
   * table (every socket of the node, bucket locks held), which per pod and per pass cost tens of ms
   * and stalled traffic under load; it is kept for new pods and the safety-net pass.
   */
  #stillCaptured(pod: ResolvedPod): boolean {
    const prev = this.#captured.get(pod.netnsCookie);
    if (this.#verify.has(pod.netnsCookie) || !prev || prev.pid !== pod.pid) return false;
    if (prev.ips.length !== pod.ips.length || prev.ips.some((ip, i) => ip !== pod.ips[i])) return false;
    return this.#listening(pod.ips);
  }

  /** ztunnel's inbound and HBONE listeners for every one of these pod IPs are in the sockmap. */
  #listening(ips: readonly string[]): boolean {
    return ips.every((ip) => this.#dp.hasListener(ip, LISTENER_INBOUND) && this.#dp.hasListener(ip, LISTENER_HBONE));
  }

  /**
   * Every resolved pod's capture steps, from what is pinned, what the sockmap holds and, for pods
   * ztunnel serves whose listeners are not registered, the pod's /proc (reads only): arm a pod whose
   * sk_lookup link is not pinned; register ztunnel's listeners of a pod it serves, unless those
   * registered are the same; wait for a pod with no process to read them from yet.
   */
  #planCapture(resolution: Resolution, scope: ReadonlySet<string> | undefined): InpodStep[] {
    const dp = this.#dp;
    const handoff = this.#handoff;
    // A full pass lists the pins once; a scoped one looks at its pods' pins only.
    const pinned = scope === undefined ? dp.attachedPods() : undefined;
    const steps: InpodStep[] = [];
    for (const pod of resolution.pods) {
      if (scope !== undefined && !scope.has(pod.uid)) continue;
      const subject = `pod ${pod.namespace}/${pod.name}`;
      if (!(pinned ? pinned.has(pod.netnsCookie) : dp.isArmed(pod.netnsCookie)))
        steps.push({ kind: 'arm', subject, pod });
      if (handoff && !handoff.served(pod.uid, pod.netnsCookie)) continue;
      if (this.#stillCaptured(pod)) continue;
      if (pod.pid === 0) {
        // Armed from CNI ADD, before any process runs in it: ztunnel's sockets are read from one.
        steps.push({
          kind: 'wait',
          subject,
          pod,
          reason: "no process in the pod's netns yet to read ztunnel's listeners from",
        });
        continue;
      }
      const inodes = podListenerInodes(pod.pid, PORTS);
      this.#verifiedAt.set(pod.netnsCookie, this.#passes);
      // The same sockets as registered, still in the sockmap: nothing to do, and no need to read which
      // process holds them (ztunnel's whole fd table).
      const prev = this.#captured.get(pod.netnsCookie);
      if (prev && sameInodes(prev.inodes, inodes) && this.#listening(pod.ips)) continue;
      const wanted = listenerInodes(inodes);
      const ztunnelPids = [...(resolution.ztunnel?.pids ?? []), ...(handoff?.peerPids() ?? [])];
      const found = findListeners(inodes, this.#holders.find(ztunnelPids, wanted));
      if (typeof found === 'string') {
        steps.push({ kind: 'wait', subject, pod, reason: found });
        continue;
      }
      steps.push({ kind: 'listeners', subject, pod, found });
    }
    return steps;
  }

  /** Every entry the maps' target has for this pod is in the maps. */
  #inMaps(pod: ResolvedPod): boolean {
    const { maps } = this.#dp;
    return (
      maps.netns.get(pod.netnsCookie) !== undefined &&
      pod.ips.every((ip) => maps.pods.get(ip)?.netnsCookie === pod.netnsCookie)
    );
  }

  plan({ desired, resolution, scope }: PassInput): TopologyPass {
    // What the scope's pods held before this pass: a pod that left is known from here only.
    const before = scope === undefined ? undefined : this.#heldBy(scope);
    const steps = this.#planCapture(resolution, scope);
    const wanted = new Set(desired.ambientPods.map((p) => p.uid));
    let done: CaptureDone | undefined;
    return {
      steps,
      capture: (cx) => {
        done = this.#capture(steps, resolution, wanted, cx.attempt, scope, before);
        return Promise.resolve(done.captured);
      },
      release: (_maps, cx) => {
        if (!done) throw new Error('release before capture');
        const { target, current } = done.captured;
        const detached = this.#release(this.#planRelease(target, current, done.candidates), cx.attempt);
        // Armed (the maps were written before this) before ztunnel hears of a pod; released before it
        // hears it went. A pod whose entries did not make it into the maps (a full map, reported by the
        // map phase) is not handed over: its outbound would bypass connect4 while ztunnel served its
        // inbound. Unannounced, its CNI ADD fails and sk_lookup refuses its inbound (fail closed).
        const inScope = (pod: ResolvedPod): boolean => scope === undefined || scope.has(pod.uid);
        this.#handoff?.sync(
          done.armed.filter((pod) => inScope(pod) && this.#inMaps(pod)),
          scope,
        );
        return Promise.resolve({ attached: done.attached, detached });
      },
    };
  }

  /** The netns cookies and IPs the scope's pods were last armed with (before a scoped pass changes them). */
  #heldBy(scope: ReadonlySet<string>): { cookies: Set<bigint>; ips: Set<string> } {
    const cookies = new Set<bigint>();
    const ips = new Set<string>();
    for (const uid of scope) {
      const last = this.#lastResolved.get(uid);
      if (!last) continue;
      cookies.add(last.netnsCookie);
      for (const ip of last.ips) ips.add(ip);
      for (const ip of this.#armedAt.get(last.netnsCookie)?.ips ?? []) ips.add(ip);
      for (const ip of this.#captured.get(last.netnsCookie)?.ips ?? []) ips.add(ip);
    }
    return { cookies, ips };
  }

  /**
   * Before the maps are written: the planned steps, in order (a pod whose arm fails takes no further
   * step), then the maps' target: every armed pod.
   */
  #capture(
    steps: readonly InpodStep[],
    resolution: Resolution,
    wanted: ReadonlySet<string>,
    attempt: Attempt,
    scope: ReadonlySet<string> | undefined,
    before: { cookies: ReadonlySet<bigint>; ips: ReadonlySet<string> } | undefined,
  ): CaptureDone {
    const dp = this.#dp;
    const unresolved: Problem[] = [];
    const attached: string[] = [];
    const notArmed = new Set<bigint>();
    for (const step of steps) {
      const { pod } = step;
      if (notArmed.has(pod.netnsCookie)) continue;
      switch (step.kind) {
        case 'arm':
          attempt(`inpod capture of ${step.subject}`, () =>
            dp.armPod({ netnsPath: pod.netnsPath, netnsCookie: pod.netnsCookie }),
          );
          // Armed as soon as its sk_lookup link is pinned (a failure after that was reported above).
          if (dp.isArmed(pod.netnsCookie)) attached.push(step.subject);
          else notArmed.add(pod.netnsCookie);
          break;
        case 'wait':
          unresolved.push({ object: step.subject, reason: step.reason });
          break;
        case 'listeners': {
          const ok = attempt(`inpod listeners of ${step.subject}`, () =>
            dp.setListeners({
              netnsPath: pod.netnsPath,
              netnsCookie: pod.netnsCookie,
              ips: pod.ips,
              listeners: step.found.held,
            }),
          );
          const replaced = this.#captured.get(pod.netnsCookie)?.inodes;
          if (ok && replaced) this.#holders.forget(listenerInodes(replaced));
          if (ok)
            this.#captured.set(pod.netnsCookie, {
              pid: pod.pid,
              ips: pod.ips,
              inodes: step.found.inodes,
              netnsPath: pod.netnsPath,
            });
          break;
        }
      }
    }
    const armed = resolution.pods.filter((pod) => !notArmed.has(pod.netnsCookie));
    for (const pod of armed) this.#armedAt.set(pod.netnsCookie, { netnsPath: pod.netnsPath, ips: pod.ips });

    // A pod still wanted that this pass could not resolve (a /proc read racing its processes) stays
    // armed as it was while its netns lives: releasing it would send its traffic direct until the next
    // pass. A pod whose netns is gone has really left.
    const resolvedUids = new Set(resolution.pods.map((p) => p.uid));
    for (const [uid, last] of this.#lastResolved) {
      if (resolvedUids.has(uid)) continue;
      if (wanted.has(uid) && dp.isArmed(last.netnsCookie) && existsSync(last.netnsPath)) armed.push(last);
      else this.#lastResolved.delete(uid);
    }
    for (const pod of resolution.pods) {
      if (scope !== undefined && !scope.has(pod.uid)) continue;
      if (dp.isArmed(pod.netnsCookie)) this.#lastResolved.set(pod.uid, pod);
    }

    const target = buildInpodTarget(armed, resolution, dp.keepDstFor());
    if (scope === undefined || before === undefined) {
      // The safety net's listener re-reads were done by this pass's plan.
      this.#verify.clear();
      this.#passes++;
      // What the maps hold is read after the capture, as the release needs it: before this pass's writes.
      return {
        captured: { target, current: readCurrent(dp.maps), unresolved },
        armed,
        attached,
        candidates: undefined,
      };
    }
    // Scoped: the keys the scope's pods hold now or held before, and ztunnel's netns entry.
    const ips = new Set(before.ips);
    const cookies = new Set(before.cookies);
    for (const pod of [...resolution.pods, ...armed]) {
      if (!scope.has(pod.uid)) continue;
      cookies.add(pod.netnsCookie);
      for (const ip of pod.ips) ips.add(ip);
    }
    const candidates = new Set(cookies);
    if (resolution.ztunnel) cookies.add(resolution.ztunnel.netnsCookie);
    return { captured: { ...restrictToKeys(dp.maps, target, ips, cookies), unresolved }, armed, attached, candidates };
  }

  /**
   * Every pod not in the target, once the maps dropped it (so nothing is redirected to it any more).
   * `before` is what the maps held before this pass (it names the pod IP of a pod captured by an
   * earlier loader process).
   */
  #planRelease(target: Target, before: Current, candidates: ReadonlySet<bigint> | undefined): ReleaseStep[] {
    const keep = new Set([...target.pods.values()].map((p) => p.netnsCookie));
    const steps: ReleaseStep[] = [];
    const all = candidates ?? [...this.#dp.attachedPods(), ...this.#captured.keys(), ...this.#armedAt.keys()];
    for (const cookie of new Set(all)) {
      if (keep.has(cookie)) continue;
      // An IP the target still holds went to a new pod (IP reuse within one pass): its listener
      // entries are the new pod's now, captured above; only the old pod's link goes.
      const known = this.#captured.get(cookie) ?? this.#armedAt.get(cookie);
      const was = before.netns.get(cookie);
      const ips = (
        known?.ips ?? [...new Set([was?.podIp, was?.podIp6])].filter((ip): ip is string => ip !== undefined)
      ).filter((ip) => !target.pods.has(ip));
      steps.push({
        kind: 'release',
        subject: `netns ${cookie}`,
        netnsCookie: cookie,
        ips,
        netnsPath: known?.netnsPath,
      });
    }
    return steps;
  }

  /** Carries out the release steps; returns the pods released. */
  #release(steps: readonly ReleaseStep[], attempt: Attempt): string[] {
    const detached: string[] = [];
    for (const step of steps) {
      this.#armedAt.delete(step.netnsCookie);
      const ok = attempt(`inpod release of ${step.subject}`, () =>
        this.#dp.detachPod(step.netnsCookie, step.ips, step.netnsPath),
      );
      if (ok) detached.push(step.subject);
      const gone = this.#captured.get(step.netnsCookie)?.inodes;
      if (gone) this.#holders.forget(listenerInodes(gone));
      this.#captured.delete(step.netnsCookie);
      this.#verifiedAt.delete(step.netnsCookie);
    }
    return detached;
  }

  /** listenersPresent: false when ztunnel's listeners in a captured pod changed (ztunnel restarted). */
  inspect(): TopologyHealth {
    // Map lookups only: this runs on every resync tick. A replaced 15001 listener comes with replaced
    // inbound ones (see #stillCaptured); the safety-net pass re-reads all three.
    return { listenersPresent: this.#listenersPresent(), handoff: this.#handoff?.status() ?? [] };
  }

  /** Every captured pod's listeners are in the sockmap; with ZDS, a turn of them (LISTENER_CHECKS_PER_TICK). */
  #listenersPresent(): boolean {
    const captured = [...this.#captured.values()];
    const changedAt = this.#handoff?.peersChangedAt?.();
    const watching = changedAt !== undefined && Date.now() - changedAt < LISTENER_WATCH_MS;
    if (!this.#handoff || watching || captured.length <= LISTENER_CHECKS_PER_TICK)
      return captured.every((c) => this.#listening(c.ips));
    const start = this.#listenerCursor % captured.length;
    this.#listenerCursor = start + LISTENER_CHECKS_PER_TICK;
    for (let i = 0; i < LISTENER_CHECKS_PER_TICK; i++) {
      if (!this.#listening(captured[(start + i) % captured.length]!.ips)) return false;
    }
    return true;
  }
}

/** The maps' target: every armed pod; ztunnel for its mark, ports and bypass. */
/** The inode of a pod's netns; -1 once it is gone (nothing is kept for it then). */
function netnsIno(path: string): number {
  try {
    return statSync(path).ino;
  } catch {
    return -1;
  }
}

export function buildInpodTarget(
  ready: readonly ResolvedPod[],
  resolution: Resolution,
  keepsDst: (pod: KeepDstPod) => boolean = () => false,
): Target {
  const pods = new Map<string, PodEntry>();
  const netns = new Map<bigint, NetnsEntry>();
  for (const pod of ready) {
    // The pod's DNS capture override (annotation) rides along; without one the node's switch decides.
    const flags = POD_AMBIENT | dnsCaptureFlags(pod.dnsCapture);
    for (const ip of pod.ips) pods.set(ip, { netnsCookie: pod.netnsCookie, hostIfindex: 0, flags });
    // Only connect4/6 read POD_LOCAL_ROUTE (ambpf_netns), and only where the ledger proves the route.
    const keep = keepsDst({ netnsIno: netnsIno(pod.netnsPath), netnsCookie: pod.netnsCookie, ips: pod.ips })
      ? POD_LOCAL_ROUTE
      : 0;
    // The IPv4 address when the pod has one: connect4 sends IPv4 (and v4-mapped) connects there;
    // connect6 sends native IPv6 connects to the IPv6 one (an IPv6-only pod has it in both fields).
    const ip6 = pod.ips.find((ip) => ip.includes(':'));
    netns.set(pod.netnsCookie, {
      podIp: pod.ips.find((ip) => !ip.includes(':')) ?? pod.ips[0]!,
      flags: flags | keep,
      ...(ip6 === undefined ? {} : { podIp6: ip6 }),
    });
  }
  const z = resolution.ztunnel;
  let ztunnel: ZtunnelEntry | undefined;
  if (z) {
    ztunnel = ztunnelValue({
      ip: z.ips.find((ip) => !ip.includes(':')) ?? z.ips[0]!,
      ip6: z.ips.find((ip) => ip.includes(':')) ?? null,
      netnsCookie: z.netnsCookie,
      hostIfindex: 0,
      mac: NO_MAC,
      hostMac: NO_MAC,
    });
    netns.set(z.netnsCookie, { podIp: ztunnel.ip, flags: POD_IS_ZTUNNEL });
  }
  return { pods, netns, ztunnel, inbound: new Set() };
}
