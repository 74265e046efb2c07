// Reconcile for the inpod topology: the same desired state and discovery as the node topology, but a
// mesh pod is captured inside its own netns, where ztunnel holds its listeners. A pod is put in
// ambpf_netns/ambpf_pods (which is what turns redirection on) only after ztunnel's 15001/15006/15008
// listeners were found in its netns and handed to the datapath, so a pod ztunnel has not reached yet
// is never redirected to a port nobody listens on. Pods that leave lose their map entries first, then
// their sk_lookup link and listener entries.
import type { InpodDatapath } from '../bpf/datapath-inpod.ts';
import { podListenerInodes, socketHolders, type ListenerInodes, type SocketHolder } from '../bpf/inpod-listeners.ts';
import { LISTENER_HBONE, LISTENER_INBOUND, POD_AMBIENT, POD_IS_ZTUNNEL, PORT_HBONE, PORT_INBOUND, PORT_OUTBOUND, ztunnelValue } from '../bpf/schema.ts';
import type { Problem } from '../state/desired.ts';
import type { Resolution, ResolvedPod } from '../node/discovery.ts';
import { INPOD_LINK_PREFIX } from '../bpf/datapath.ts';
import type { Current, NetnsEntry, PodEntry, Target, ZtunnelEntry } from './plan.ts';

const PORTS = { outbound: PORT_OUTBOUND, inbound: PORT_INBOUND, hbone: PORT_HBONE } as const;
const NO_MAC = '00:00:00:00:00:00';

/** What was handed to the datapath for one pod, to notice a ztunnel restart (new listeners). */
interface Captured {
  readonly pid: number;
  readonly ips: readonly string[];
  readonly inodes: ListenerInodes;
}

export interface InpodCapture {
  /** What the maps should hold: only pods whose capture is in place. */
  readonly target: Target;
  /** Link pin names attached (or re-attached after a ztunnel restart) by this pass. */
  readonly attached: readonly string[];
  /** Pods whose netns has no ztunnel listeners yet: retried on the next pass. */
  readonly unresolved: readonly Problem[];
}

/** Runs fn, turning a throw into an error line (and keeping the pass going). */
export type Attempt = (what: string, fn: () => unknown) => boolean;

const sameInodes = (a: ListenerInodes, b: ListenerInodes): boolean =>
  a.outbound === b.outbound && a.inbound === b.inbound && a.hbone === b.hbone;

/** ztunnel's three listeners in the pod's netns, with the ztunnel process holding each; else why not. */
function findListeners(pod: ResolvedPod, holders: Map<string, SocketHolder>): { inodes: ListenerInodes; held: { outbound: SocketHolder; inbound: SocketHolder; hbone: SocketHolder } } | string {
  const inodes = podListenerInodes(pod.pid, PORTS);
  const get = (inode: string | undefined): SocketHolder | undefined => (inode === undefined ? undefined : holders.get(inode));
  const outbound = get(inodes.outbound);
  const inbound = get(inodes.inbound);
  const hbone = get(inodes.hbone);
  if (!outbound || !inbound || !hbone) {
    const missing = Object.entries({ [PORTS.outbound]: outbound, [PORTS.inbound]: inbound, [PORTS.hbone]: hbone }).filter(([, h]) => !h).map(([p]) => p);
    return `ztunnel holds no listener on port ${missing.join(', ')} in the pod's netns yet`;
  }
  return { inodes, held: { outbound, inbound, hbone } };
}

export class InpodApplier {
  readonly #dp: InpodDatapath;
  /** netns cookie -> what this process handed to the datapath. */
  readonly #captured = new Map<bigint, Captured>();
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
  #stillCaptured(pod: ResolvedPod, pinned: ReadonlySet<bigint>): boolean {
    const prev = this.#captured.get(pod.netnsCookie);
    if (this.#verifyAll || !prev || prev.pid !== pod.pid || !pinned.has(pod.netnsCookie)) return false;
    if (prev.ips.length !== pod.ips.length || prev.ips.some((ip, i) => ip !== pod.ips[i])) return false;
    return this.#listening(pod.ips);
  }

  /** ztunnel's inbound and HBONE listeners for every one of these pod IPs are in the sockmap. */
  #listening(ips: readonly string[]): boolean {
    return ips.every((ip) => this.#dp.hasListener(ip, LISTENER_INBOUND) && this.#dp.hasListener(ip, LISTENER_HBONE));
  }

  /**
   * First half of a pass, before the maps are written: hand ztunnel's listeners of every resolved
   * pod to the datapath and attach its sk_lookup (skipped when nothing changed since last time).
   */
  capture(resolution: Resolution, attempt: Attempt): InpodCapture {
    const dp = this.#dp;
    const unresolved: Problem[] = [];
    const z = resolution.ztunnel;
    let holders: Map<string, SocketHolder> | undefined; // ztunnel's fds, read only when needed
    const pinned = dp.attachedPods();
    const ready: ResolvedPod[] = [];
    const attached: string[] = [];
    for (const pod of z ? resolution.pods : []) {
      if (this.#stillCaptured(pod, pinned)) {
        ready.push(pod);
        continue;
      }
      holders ??= socketHolders(z?.pids ?? []);
      const found = findListeners(pod, holders);
      if (typeof found === 'string') {
        unresolved.push({ object: `pod ${pod.namespace}/${pod.name}`, reason: found });
        continue;
      }
      const prev = this.#captured.get(pod.netnsCookie);
      if (prev && sameInodes(prev.inodes, found.inodes) && pinned.has(pod.netnsCookie) && this.#listening(pod.ips)) {
        ready.push(pod);
        continue;
      }
      const ok = attempt(`inpod capture of pod ${pod.namespace}/${pod.name}`, () =>
        dp.attachPod({ netnsPath: pod.netnsPath, netnsCookie: pod.netnsCookie, ips: pod.ips, listeners: found.held }));
      if (!ok) continue;
      this.#captured.set(pod.netnsCookie, { pid: pod.pid, ips: pod.ips, inodes: found.inodes });
      attached.push(`${INPOD_LINK_PREFIX}${pod.netnsCookie}`);
      ready.push(pod);
    }

    this.#verifyAll = false;
    return { target: buildInpodTarget(ready, resolution), attached, unresolved };
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
    for (const cookie of new Set([...dp.attachedPods(), ...this.#captured.keys()])) {
      if (keep.has(cookie)) continue;
      // An IP the target still holds went to a new pod (IP reuse within one pass): its listener
      // entries are the new pod's now, captured above; only the old pod's link goes.
      const ips = (this.#captured.get(cookie)?.ips ?? [before.netns.get(cookie)?.podIp].filter((ip): ip is string => ip !== undefined))
        .filter((ip) => !target.pods.has(ip));
      if (attempt(`inpod release of netns ${cookie}`, () => dp.detachPod(cookie, ips))) detached.push(`${INPOD_LINK_PREFIX}${cookie}`);
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
}

/** The maps' target: only pods whose capture is in place; ztunnel for its mark, ports and bypass. */
export function buildInpodTarget(ready: readonly ResolvedPod[], resolution: Resolution): Target {
  const pods = new Map<string, PodEntry>();
  const netns = new Map<bigint, NetnsEntry>();
  for (const pod of ready) {
    for (const ip of pod.ips) pods.set(ip, { netnsCookie: pod.netnsCookie, hostIfindex: 0, flags: POD_AMBIENT });
    netns.set(pod.netnsCookie, { podIp: pod.ips[0]!, flags: POD_AMBIENT });
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
