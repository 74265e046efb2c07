// Reconcile for the inpod topology: the same desired state and discovery as the node topology, but a
// mesh pod is captured inside its own netns, where ztunnel holds its listeners. Per pod, in order:
//  1. arm: sk_lookup on its netns + the spoofed legs' return route, then its ambpf_netns/ambpf_pods
//     entries (the pass's map phase). From here its traffic can only reach ztunnel's ports: with no
//     ztunnel listening, its connects are refused and inbound SYNs answered with a RST (fail closed);
//  2. hand it to ztunnel (ZDS Add; src/agent/handoff.ts, after the pass);
//  3. once ztunnel acked: its 15001/15006/15008 listeners found in the pod's netns and registered.
// Pods that leave lose their map entries first, then their sk_lookup link and listener entries, and
// then ztunnel is told (Del).
import { existsSync } from 'node:fs';
import type { InpodDatapath } from '../bpf/datapath-inpod.ts';
import { podListenerInodes, socketHolders, type ListenerInodes, type SocketHolder } from '../bpf/inpod-listeners.ts';
import {
  LISTENER_HBONE, LISTENER_INBOUND, POD_AMBIENT, POD_IS_ZTUNNEL, PORT_HBONE, PORT_INBOUND, PORT_OUTBOUND, dnsCaptureFlags, ztunnelValue,
} from '../bpf/schema.ts';
import type { Problem } from '../state/desired.ts';
import type { Resolution, ResolvedPod } from '../node/discovery.ts';
import { inpodLinkName } from '../bpf/pins.ts';
import type { Current, NetnsEntry, PodEntry, Target, ZtunnelEntry } from './plan.ts';
import type { PodListeners } from '../bpf/datapath-inpod.ts';

const PORTS = { outbound: PORT_OUTBOUND, inbound: PORT_INBOUND, hbone: PORT_HBONE } as const;
const NO_MAC = '00:00:00:00:00:00';

/** What was handed to the datapath for one pod, to notice a ztunnel restart (new listeners). */
interface Captured {
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
  /** After a pass: these pods are armed (Add the new ones), every other pod is not (Del). */
  sync(armed: readonly ResolvedPod[]): void;
  /** Each armed pod's ZDS state, for the state file. */
  status(): ReadonlyArray<{ uid: string; state: string; error: string | undefined }>;
}

export interface InpodCapture {
  /** What the maps should hold: every armed pod. */
  readonly target: Target;
  /** Pods whose capture is armed (in the target), for the handoff. */
  readonly armed: readonly ResolvedPod[];
  /** Link pin names attached (or re-attached after a ztunnel restart) by this pass. */
  readonly attached: readonly string[];
  /** Pods whose netns has no ztunnel listeners yet: retried on the next pass. */
  readonly unresolved: readonly Problem[];
}

/** Runs fn, turning a throw into an error line (and keeping the pass going). */
export type Attempt = (what: string, fn: () => unknown) => boolean;

const sameInodes = (a: ListenerInodes, b: ListenerInodes): boolean =>
  a.outbound === b.outbound && a.inbound === b.inbound && a.hbone === b.hbone && a.inbound2 === b.inbound2 && a.hbone2 === b.hbone2;

/** ztunnel's three listeners in the pod's netns, with the ztunnel process holding each; else why not. */
function findListeners(pod: ResolvedPod, holders: Map<string, SocketHolder>): { inodes: ListenerInodes; held: PodListeners } | string {
  const inodes = podListenerInodes(pod.pid, PORTS);
  const get = (inode: string | undefined): SocketHolder | undefined => (inode === undefined ? undefined : holders.get(inode));
  const outbound = get(inodes.outbound);
  const inbound = get(inodes.inbound);
  const hbone = get(inodes.hbone);
  if (!outbound || !inbound || !hbone) {
    const missing = Object.entries({ [PORTS.outbound]: outbound, [PORTS.inbound]: inbound, [PORTS.hbone]: hbone }).filter(([, h]) => !h).map(([p]) => p);
    return `ztunnel holds no listener on port ${missing.join(', ')} in the pod's netns yet`;
  }
  return { inodes, held: { outbound, inbound, hbone, inbound2: get(inodes.inbound2), hbone2: get(inodes.hbone2) } };
}

export class InpodApplier {
  readonly #dp: InpodDatapath;
  /** netns cookie -> what this process handed to the datapath. */
  readonly #captured = new Map<bigint, Captured>();
  /** uid -> the pod as last resolved and armed (kept armed through a pass that cannot resolve it). */
  readonly #lastResolved = new Map<string, ResolvedPod>();
  /** netns cookie -> where this process armed a pod (its return route is removed at release). */
  readonly #armedAt = new Map<bigint, { netnsPath: string; ips: readonly string[] }>();
  /** The next pass re-reads every captured pod's listeners from /proc (see capture()). */
  #verifyAll = false;

  constructor(dp: InpodDatapath) {
    this.#dp = dp;
  }

  /** Have the next pass check every captured pod's listeners again (the periodic safety-net pass). */
  rescan(): void {
    this.#verifyAll = true;
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
    if (this.#verifyAll || !prev || prev.pid !== pod.pid) return false;
    if (prev.ips.length !== pod.ips.length || prev.ips.some((ip, i) => ip !== pod.ips[i])) return false;
    return this.#listening(pod.ips);
  }

  /** ztunnel's inbound and HBONE listeners for every one of these pod IPs are in the sockmap. */
  #listening(ips: readonly string[]): boolean {
    return ips.every((ip) => this.#dp.hasListener(ip, LISTENER_INBOUND) && this.#dp.hasListener(ip, LISTENER_HBONE));
  }

  /**
   * First half of a pass, before the maps are written: arm every resolved pod (sk_lookup + return
   * route, skipped when already armed), and hand ztunnel's listeners of the pods it serves to the
   * datapath (skipped when nothing changed since last time).
   */
  capture(resolution: Resolution, attempt: Attempt, handoff?: ZtunnelHandoff, wanted?: ReadonlySet<string>): InpodCapture {
    const dp = this.#dp;
    const unresolved: Problem[] = [];
    let holders: Map<string, SocketHolder> | undefined; // ztunnel's fds, read only when needed
    const pinned = dp.attachedPods();
    const armed: ResolvedPod[] = [];
    const attached: string[] = [];
    for (const pod of resolution.pods) {
      if (!pinned.has(pod.netnsCookie)) {
        attempt(`inpod capture of pod ${pod.namespace}/${pod.name}`, () =>
          dp.armPod({ netnsPath: pod.netnsPath, netnsCookie: pod.netnsCookie }));
        // Armed as soon as its sk_lookup link is pinned (a failure after that was reported above).
        if (!dp.isArmed(pod.netnsCookie)) continue;
        attached.push(inpodLinkName(pod.netnsCookie));
      }
      armed.push(pod);
      this.#armedAt.set(pod.netnsCookie, { netnsPath: pod.netnsPath, ips: pod.ips });
      if (handoff && !handoff.served(pod.uid, pod.netnsCookie)) continue;
      if (this.#stillCaptured(pod)) continue;
      if (pod.pid === 0) {
        // Armed from CNI ADD, before any process runs in it: ztunnel's sockets are read from one.
        const reason = 'no process in the pod\'s netns yet to read ztunnel\'s listeners from';
        unresolved.push({ object: `pod ${pod.namespace}/${pod.name}`, reason });
        continue;
      }
      holders ??= socketHolders([...(resolution.ztunnel?.pids ?? []), ...(handoff?.peerPids() ?? [])]);
      const found = findListeners(pod, holders);
      if (typeof found === 'string') {
        unresolved.push({ object: `pod ${pod.namespace}/${pod.name}`, reason: found });
        continue;
      }
      const prev = this.#captured.get(pod.netnsCookie);
      if (prev && sameInodes(prev.inodes, found.inodes) && this.#listening(pod.ips)) continue;
      const ok = attempt(`inpod listeners of pod ${pod.namespace}/${pod.name}`, () =>
        dp.setListeners({ netnsPath: pod.netnsPath, netnsCookie: pod.netnsCookie, ips: pod.ips, listeners: found.held }));
      if (ok) this.#captured.set(pod.netnsCookie, { pid: pod.pid, ips: pod.ips, inodes: found.inodes, netnsPath: pod.netnsPath });
    }

    // A pod still wanted that this pass could not resolve (a /proc read racing its processes) stays
    // armed as it was while its netns lives: releasing it would send its traffic direct until the next
    // pass. A pod whose netns is gone has really left.
    const resolvedUids = new Set(resolution.pods.map((p) => p.uid));
    for (const [uid, last] of this.#lastResolved) {
      if (resolvedUids.has(uid)) continue;
      if (wanted?.has(uid) && dp.isArmed(last.netnsCookie) && existsSync(last.netnsPath)) armed.push(last);
      else this.#lastResolved.delete(uid);
    }
    for (const pod of resolution.pods) if (dp.isArmed(pod.netnsCookie)) this.#lastResolved.set(pod.uid, pod);

    this.#verifyAll = false;
    return { target: buildInpodTarget(armed, resolution), armed, attached, unresolved };
  }

  /**
   * Second half, after the maps dropped the pods that left (so nothing is redirected to them any
   * more): release every pod not in the target. `before` is what the maps held before this pass
   * (it names the pod IP of a pod captured by an earlier loader process). Returns the pins removed.
   */
  release(target: Target, before: Current, attempt: Attempt): string[] {
    const dp = this.#dp;
    const keep = new Set([...target.pods.values()].map((p) => p.netnsCookie));
    const detached: string[] = [];
    for (const cookie of new Set([...dp.attachedPods(), ...this.#captured.keys(), ...this.#armedAt.keys()])) {
      if (keep.has(cookie)) continue;
      // An IP the target still holds went to a new pod (IP reuse within one pass): its listener
      // entries are the new pod's now, captured above; only the old pod's link goes.
      const known = this.#captured.get(cookie) ?? this.#armedAt.get(cookie);
      const was = before.netns.get(cookie);
      const ips = (known?.ips ?? [...new Set([was?.podIp, was?.podIp6])].filter((ip): ip is string => ip !== undefined))
        .filter((ip) => !target.pods.has(ip));
      const netnsPath = known?.netnsPath;
      this.#armedAt.delete(cookie);
      if (attempt(`inpod release of netns ${cookie}`, () => dp.detachPod(cookie, ips, netnsPath))) detached.push(inpodLinkName(cookie));
      this.#captured.delete(cookie);
    }
    return detached;
  }

  /** False when ztunnel's listeners in a captured pod changed (ztunnel restarted): time for a pass. */
  listenersPresent(): boolean {
    // Map lookups only: this runs on every resync tick. A replaced 15001 listener comes with replaced
    // inbound ones (see #stillCaptured); the safety-net pass re-reads all three.
    return [...this.#captured.values()].every((c) => this.#listening(c.ips));
  }

  /** A pod ztunnel no longer serves (Del, ztunnel gone): its listeners are looked for afresh. */
  forget(netnsCookie: bigint): void {
    this.#captured.delete(netnsCookie);
  }
}

/** The maps' target: every armed pod; ztunnel for its mark, ports and bypass. */
export function buildInpodTarget(ready: readonly ResolvedPod[], resolution: Resolution): Target {
  const pods = new Map<string, PodEntry>();
  const netns = new Map<bigint, NetnsEntry>();
  for (const pod of ready) {
    // The pod's DNS capture override (annotation) rides along; without one the node's switch decides.
    const flags = POD_AMBIENT | dnsCaptureFlags(pod.dnsCapture);
    for (const ip of pod.ips) pods.set(ip, { netnsCookie: pod.netnsCookie, hostIfindex: 0, flags });
    // The IPv4 address when the pod has one: connect4 sends IPv4 (and v4-mapped) connects there;
    // connect6 sends native IPv6 connects to the IPv6 one (an IPv6-only pod has it in both fields).
    const ip6 = pod.ips.find((ip) => ip.includes(':'));
    netns.set(pod.netnsCookie, {
      podIp: pod.ips.find((ip) => !ip.includes(':')) ?? pod.ips[0]!,
      flags,
      ...(ip6 === undefined ? {} : { podIp6: ip6 }),
    });
  }
  const z = resolution.ztunnel;
  let ztunnel: ZtunnelEntry | undefined;
  if (z) {
    ztunnel = ztunnelValue({
      ip: z.ips.find((ip) => !ip.includes(':')) ?? z.ips[0]!,
      ip6: z.ips.find((ip) => ip.includes(':')) ?? null,
      netnsCookie: z.netnsCookie, hostIfindex: 0, mac: NO_MAC, hostMac: NO_MAC,
    });
    netns.set(z.netnsCookie, { podIp: ztunnel.ip, flags: POD_IS_ZTUNNEL });
  }
  return { pods, netns, ztunnel, inbound: new Set() };
}
