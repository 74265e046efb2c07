// The node topology (ztunnel in its own pod, ztunnel <= 1.22): inbound traffic of a mesh pod is
// steered by tc on its host-side veth into ztunnel's netns, where sk_lookup hands it to ztunnel's
// listeners. A pass: plan (target from the resolution, stale tc pins found), capture (stale pins
// removed, ztunnel's netns made to accept steered connections), the maps, release (tc follows the
// maps: on for new pods' veths, off for those that left).
import type { Datapath } from '../bpf/datapath.ts';
import type { DatapathMaps } from '../bpf/datapath-maps.ts';
import { listeningInodes } from '../bpf/datapath-ztunnel.ts';
import { PORT_HBONE, PORT_INBOUND } from '../bpf/schema.ts';
import { describeError } from '../errors.ts';
import { logger } from '../log.ts';
import type { Resolution } from '../node/discovery.ts';
import { buildTarget, type Plan, type Target } from './plan.ts';
import {
  readCurrent,
  type Captured,
  type PassContext,
  type PassInput,
  type Released,
  type Step,
  type Topology,
  type TopologyHealth,
  type TopologyPass,
} from './topology.ts';

const log = logger('reconcile');

/** How long a failed attach to ztunnel's netns is not retried while nothing about ztunnel changed. */
const ZTUNNEL_RETRY_MS = 1000;
/** How long ztunnel's listening-socket inodes are reused between passes. */
const ZTUNNEL_LISTENERS_TTL_MS = 1000;

type Stale = ReturnType<Datapath['staleInbound']>[number];

export class NodeTopology implements Topology {
  readonly kind = 'node' as const;
  readonly #dp: Datapath;
  /** ztunnel's listeners are copied into the sockmap once per ztunnel process. */
  #ztunnelAttachedFor: string | undefined;
  #ztunnelFailed: { key: string; error: string; retryAt: number } | undefined;
  #inodesCache: { pid: number; at: number; value: string } | undefined;

  constructor(dp: Datapath) {
    this.#dp = dp;
  }

  get maps(): DatapathMaps {
    return this.#dp.maps;
  }

  plan({ resolution }: PassInput): TopologyPass {
    const target = buildTarget(resolution);
    // A tc link pinned for an interface that is gone, or that now names another interface, steers
    // nothing: unpinned first, so the plan attaches to the interface as it is now.
    const stale = this.#dp.staleInbound();
    const steps: Step[] = [
      ...stale.map((s) => ({ kind: 'unpin-stale-tc', subject: s.ifname })),
      ...(target.ztunnel ? [{ kind: 'ztunnel-inbound', subject: resolution.ztunnel?.name ?? '' }] : []),
    ];
    return {
      steps,
      capture: (cx) => this.#capture(resolution, target, stale, cx),
      release: (maps, cx) => Promise.resolve(this.#release(maps, cx)),
    };
  }

  async #capture(resolution: Resolution, target: Target, stale: readonly Stale[], cx: PassContext): Promise<Captured> {
    const dp = this.#dp;
    for (const { ifname, pinned, current } of stale) {
      cx.attempt(`stale inbound link tc-${ifname}`, () => dp.detachInbound(ifname));
      log.info({ ifname, pinned, current }, 'removed a stale inbound link');
    }
    // tcx pins and, on kernels without tcx (< 6.6), ambpf's clsact filters found in the kernel.
    const current = readCurrent(dp.maps, dp.inboundInterfaces());
    cx.lap('plan');
    // ztunnel's side first (listeners, policy route, sk_lookup): the ztunnel entry the maps get next is
    // what starts tc steering into ztunnel's netns, which must already accept what arrives.
    await this.#ensureZtunnelInbound(resolution, target, cx);
    return { target, current, unresolved: [] };
  }

  #release(plan: Plan, cx: PassContext): Released {
    const dp = this.#dp;
    for (const ifname of plan.inboundAttach) cx.attempt(`inbound tc on ${ifname}`, () => dp.attachInbound(ifname));
    for (const ifname of plan.inboundDetach) cx.attempt(`inbound tc off ${ifname}`, () => dp.detachInbound(ifname));
    return { attached: plan.inboundAttach, detached: plan.inboundDetach };
  }

  /** Inbound steering ends in ztunnel's netns: its listeners in the sockmap, sk_lookup attached. */
  async #ensureZtunnelInbound(resolution: Resolution, target: Target, cx: PassContext): Promise<void> {
    const z = resolution.ztunnel;
    if (!z || !target.ztunnel) {
      this.#ztunnelAttachedFor = undefined;
      return;
    }
    // Listener sockets leave the sockmap when they close: a restarted ztunnel (even in the same pod,
    // same netns, same sandbox pid) has new listening sockets, so they are part of the key.
    const inodes = this.#listenerInodes(z.pid);
    const key = `${z.uid}/${target.ztunnel.netnsCookie}/${inodes}`;
    const dp = this.#dp;
    if (this.#ztunnelAttachedFor === key && dp.ztunnelListenersPresent()) return;
    // A failed attempt costs tens of ms (every process of the pod is tried): with nothing changed
    // (same pod, netns and listening sockets) a pass for a pod event does not repeat it for a
    // while. A ztunnel that opens its listeners changes the key and is attempted at once.
    const failed = this.#ztunnelFailed;
    if (failed?.key === key && performance.now() < failed.retryAt) {
      cx.fail(failed.error);
      return;
    }
    this.#ztunnelFailed = undefined;
    log.debug({ key, attachedFor: this.#ztunnelAttachedFor }, "attaching to ztunnel's netns");
    // The listeners belong to ztunnel's process, not to the pod's sandbox: try the pod's processes.
    let lastErr: unknown;
    for (const pid of [...z.pids].reverse()) {
      try {
        await dp.attachZtunnel({
          netnsPath: z.netnsPath,
          pid,
          ifname: z.podLink?.ifname ?? 'eth0',
          hostIfname: z.hostLink?.ifname,
        });
        this.#ztunnelAttachedFor = key;
        return;
      } catch (err) {
        lastErr = err;
      }
    }
    const error = `ztunnel inbound (pod ${z.namespace}/${z.name}): ${describeError(lastErr)}`;
    this.#ztunnelFailed = { key, error, retryAt: performance.now() + ZTUNNEL_RETRY_MS };
    // Read ztunnel's sockets afresh next time: listeners it opens now change the key at once.
    this.#inodesCache = undefined;
    cx.fail(error);
  }

  /**
   * ztunnel's listening sockets on 15006/15008 (inodes), from /proc/<pid>/net/tcp{,6}. Reading those
   * walks the kernel's whole TCP hash (~15 ms here), so a pass for a pod event reuses an answer
   * younger than ZTUNNEL_LISTENERS_TTL_MS: a restarted ztunnel is still noticed within that bound,
   * and at once when its old sockets close (they leave the sockmap: ztunnelListenersPresent).
   */
  #listenerInodes(pid: number): string {
    const cached = this.#inodesCache;
    const now = performance.now();
    if (cached?.pid === pid && now - cached.at < ZTUNNEL_LISTENERS_TTL_MS) return cached.value;
    const value = [PORT_INBOUND, PORT_HBONE].map((port) => [...listeningInodes(pid, port)].sort().join(',')).join('/');
    this.#inodesCache = { pid, at: now, value };
    return value;
  }

  /** listenersPresent: false when ztunnel is known but its listeners left the sockmap (it restarted). */
  inspect(): TopologyHealth {
    return {
      listenersPresent: this.#ztunnelAttachedFor === undefined || this.#dp.ztunnelListenersPresent(),
      handoff: [],
    };
  }

  /** The next inboundInterfaces() scans the kernel's clsact filters again. */
  rescan(): void {
    this.#dp.rescanInbound();
  }
}
