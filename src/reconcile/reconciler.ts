// The one path from cluster objects into the kernel: snapshot -> desired state -> node discovery
// -> target -> diff against the pinned maps and links -> apply. Passes are serialized (the newest
// snapshot wins), every pass is idempotent, and a failing entry (a full map, a vanished interface)
// is reported and counted without stopping the others.
import { writeFile, rename, mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';
import { computeDesiredState, type DesiredState, type Problem } from '../state/desired.ts';
import { resolveNode, type Resolution } from '../node/discovery.ts';
import { buildTarget, planReconcile, type Current, type Plan, type Target } from './plan.ts';
import { MapFullError, type Datapath } from '../bpf/datapath.ts';
import type { InpodDatapath } from '../bpf/datapath-inpod.ts';
import { InpodApplier, type Attempt, type ZtunnelHandoff } from './inpod.ts';
import type { ClusterSnapshot } from '../sources/types.ts';
import { ZT_READY, PORT_INBOUND, PORT_HBONE } from '../bpf/schema.ts';
import { listeningInodes } from '../bpf/datapath-ztunnel.ts';
import { describeError } from '../errors.ts';
import { logger } from '../log.ts';

const log = logger('reconcile');

export interface ReconcileStats {
  passes: number;
  errors: number;
  mapFull: number;
  /** Failed inserts by map name (the MapFullError's map): ambpf_map_insert_failures_total{by="loader"}. */
  mapFullByMap: Record<string, number>;
  lastDurationMs: number;
  lastAt: number | undefined;
  lastError: string | undefined;
}

export interface ReconcileResult {
  readonly desired: DesiredState;
  readonly plan: Plan;
  readonly errors: readonly string[];
  readonly unresolved: readonly Problem[];
}

/** What `ambpf pods` and `ambpf status` read to name the entries of the maps. */
export interface StateFile {
  readonly node: string;
  readonly updatedAt: string;
  readonly ztunnel: { name: string; namespace: string; ips: readonly string[] } | null;
  readonly pods: ReadonlyArray<{
    name: string; namespace: string; uid: string; ips: readonly string[]; hostIfname: string | null;
    /** inpod with ZDS: whether ztunnel took the pod (acked), is being asked (pending), refused it
     * (nacked, with ztunnel's error) or is not connected (no-ztunnel). Absent otherwise. */
    zds?: { state: string; error?: string };
  }>;
  readonly problems: readonly Problem[];
}

export interface ReconcilerOptions {
  readonly node: string;
  /** The node topology's datapath, or the inpod one (ztunnel listens in every pod's netns). */
  readonly datapath: Datapath | InpodDatapath;
  /** Where to write the state file (pod names for the inspection commands); none if undefined. */
  readonly stateFile?: string;
  readonly procRoot?: string;
  /** inpod: who tells ztunnel about captured pods (ZDS); see ZtunnelHandoff. */
  readonly handoff?: ZtunnelHandoff;
  /** Netns paths from the CNI plugin (uid -> path), read at each pass; see DiscoveryOptions. */
  readonly netnsHints?: () => ReadonlyMap<string, string>;
}

/** How long a failed attach to ztunnel's netns is not retried while nothing about ztunnel changed. */
const ZTUNNEL_RETRY_MS = 1000;
/** How long ztunnel's listening-socket inodes are reused between passes. */
const ZTUNNEL_LISTENERS_TTL_MS = 1000;

export class Reconciler {
  readonly stats: ReconcileStats = { passes: 0, errors: 0, mapFull: 0, mapFullByMap: {}, lastDurationMs: 0, lastAt: undefined, lastError: undefined };
  /** Whether the last pass left something to retry soon. */
  hasUnresolved = false;
  readonly #o: ReconcilerOptions;
  #queue: Promise<unknown> = Promise.resolve();
  #pending: ClusterSnapshot | undefined;
  #last: ClusterSnapshot | undefined;
  #reported = new Set<string>();
  /** ztunnel's listeners are copied into the sockmap once per ztunnel process. */
  #ztunnelAttachedFor: string | undefined;
  #ztunnelFailed: { key: string; error: string; retryAt: number } | undefined;
  #inodesCache: { pid: number; at: number; value: string } | undefined;
  /** Set in inpod mode: per-pod capture instead of tc + ztunnel's netns. */
  readonly #inpod: InpodApplier | undefined;

  constructor(options: ReconcilerOptions) {
    this.#o = options;
    if (isInpod(options.datapath)) this.#inpod = new InpodApplier(options.datapath);
  }

  /** Queue a pass for this snapshot; resolves when a pass that saw it (or a newer one) finished. */
  reconcile(snapshot: ClusterSnapshot): Promise<ReconcileResult | undefined> {
    this.#pending = snapshot;
    const run = this.#queue.then(() => {
      const next = this.#pending;
      this.#pending = undefined;
      return next ? this.#pass(next) : undefined;
    });
    this.#queue = run.catch(() => undefined);
    return run;
  }

  /** Re-run the last snapshot: pods whose sandbox was not up yet, a ztunnel that restarted. */
  resync(o: { rescanKernel?: boolean } = {}): Promise<ReconcileResult | undefined> {
    // rescanKernel: also re-read what is cached of the kernel's state (clsact filters), for the
    // periodic safety-net pass; event-driven passes trust the cache and stay fast.
    if (o.rescanKernel) {
      if (this.#inpod) this.#inpod.rescan();
      else (this.#o.datapath as Datapath).rescanInbound();
    }
    return this.#last ? this.reconcile(this.#pending ?? this.#last) : Promise.resolve(undefined);
  }

  async #pass(snapshot: ClusterSnapshot): Promise<ReconcileResult> {
    const started = performance.now();
    this.#last = snapshot;
    const errors: string[] = [];
    // Where a pass spends its time (ms per phase), logged with it: pod change -> kernel latency is
    // the sum, so a slow phase shows up in the loader's own log.
    const phases: Record<string, number> = {};
    let mark = started;
    const lap = (phase: string): void => {
      const now = performance.now();
      phases[phase] = Math.round((now - mark) * 10) / 10;
      mark = now;
    };
    const desired = computeDesiredState(snapshot, this.#o.node);
    const resolution = await resolveNode(desired, { procRoot: this.#o.procRoot, netnsHints: this.#o.netnsHints?.() });
    lap('resolve');
    const attempt: Attempt = (what, fn) => {
      try {
        fn();
        return true;
      } catch (err) {
        if (err instanceof MapFullError) {
          this.stats.mapFull++;
          const map = err.map ?? 'unknown';
          this.stats.mapFullByMap[map] = (this.stats.mapFullByMap[map] ?? 0) + 1;
        }
        errors.push(`${what}: ${describeError(err)}`);
        return false;
      }
    };
    const unresolved = [...desired.problems, ...resolution.unresolved];
    let retry = resolution.unresolved.length > 0;
    let plan: Plan;
    if (this.#inpod) {
      // Capture (listeners + sk_lookup) before a pod's map entries turn redirection on; release
      // after its entries are gone.
      const wanted = new Set(desired.ambientPods.map((p) => p.uid));
      const captured = this.#inpod.capture(resolution, attempt, this.#o.handoff, wanted);
      const before = readCurrent(this.#o.datapath);
      plan = planReconcile(captured.target, before);
      this.#applyMaps(plan, attempt);
      const detached = this.#inpod.release(captured.target, before, attempt);
      // Armed (maps written above) before ztunnel hears of a pod; released before it hears it went.
      this.#o.handoff?.sync(captured.armed);
      plan = { ...plan, inboundAttach: captured.attached, inboundDetach: detached };
      unresolved.push(...captured.unresolved);
      retry ||= captured.unresolved.length > 0;
    } else {
      plan = await this.#applyNode(resolution, attempt, errors, lap);
    }
    lap('apply');

    this.#report(unresolved, errors);
    this.hasUnresolved = retry || errors.length > 0;
    if (this.#o.stateFile) await writeStateFile(this.#o.stateFile, desired, resolution, this.#o.handoff).catch((err: unknown) => {
      errors.push(`state file ${this.#o.stateFile}: ${describeError(err)}`);
    });
    lap('stateFile');
    this.stats.passes++;
    this.stats.errors += errors.length;
    this.stats.lastDurationMs = performance.now() - started;
    this.stats.lastAt = Date.now();
    this.stats.lastError = errors.at(-1);
    log.info({
      pods: resolution.pods.length, ztunnel: resolution.ztunnel?.ips[0] ?? null,
      set: plan.podsSet.size + plan.netnsSet.size, deleted: plan.podsDelete.length + plan.netnsDelete.length,
      attached: plan.inboundAttach.length, detached: plan.inboundDetach.length,
      errors: errors.length, ms: Math.round(this.stats.lastDurationMs), phases,
    }, 'reconciled');
    return { desired, plan, errors, unresolved };
  }

  /** Node topology: maps, tc on the pods' host veths, ztunnel's netns. */
  async #applyNode(resolution: Resolution, attempt: Attempt, errors: string[], lap: (phase: string) => void): Promise<Plan> {
    const target = buildTarget(resolution);
    const dp = this.#o.datapath as Datapath;
    pruneStaleInbound(dp, attempt);
    const plan = planReconcile(target, readCurrent(dp));
    lap('plan');
    // ztunnel's side first (listeners, policy route, sk_lookup): the ztunnel entry written next is what
    // starts tc steering into ztunnel's netns, which must already accept what arrives.
    await this.#ensureZtunnelInbound(resolution, target, errors);
    lap('ztunnel');
    this.#applyMaps(plan, attempt);
    lap('maps');
    for (const ifname of plan.inboundAttach) attempt(`inbound tc on ${ifname}`, () => dp.attachInbound(ifname));
    for (const ifname of plan.inboundDetach) attempt(`inbound tc off ${ifname}`, () => dp.detachInbound(ifname));
    return plan;
  }

  /** The map half of a plan. Order matters for traffic: identities first (netns, pods), then
   * ztunnel, then removals, so a pass never leaves a pod half-known. */
  #applyMaps(plan: Plan, attempt: Attempt): void {
    const { maps } = this.#o.datapath;
    for (const [cookie, v] of plan.netnsSet) attempt(`ambpf_netns ${cookie}`, () => maps.netns.set(cookie, v));
    for (const [ip, v] of plan.podsSet) attempt(`ambpf_pods ${ip}`, () => maps.pods.set(ip, v));
    if (plan.ztunnel === null) attempt('ambpf_ztunnel clear', () => maps.ztunnel.clear());
    else if (plan.ztunnel) attempt('ambpf_ztunnel', () => maps.ztunnel.set(plan.ztunnel as NonNullable<typeof plan.ztunnel>));
    for (const ip of plan.podsDelete) attempt(`ambpf_pods delete ${ip}`, () => maps.pods.delete(ip));
    for (const cookie of plan.netnsDelete) attempt(`ambpf_netns delete ${cookie}`, () => maps.netns.delete(cookie));
  }

  /** Inbound steering ends in ztunnel's netns: its listeners in the sockmap, sk_lookup attached. */
  async #ensureZtunnelInbound(resolution: Resolution, target: Target, errors: string[]): Promise<void> {
    const z = resolution.ztunnel;
    if (!z || !target.ztunnel) {
      this.#ztunnelAttachedFor = undefined;
      return;
    }
    // Listener sockets leave the sockmap when they close: a restarted ztunnel (even in the same pod,
    // same netns, same sandbox pid) has new listening sockets, so they are part of the key.
    const inodes = this.#listenerInodes(z.pid);
    const key = `${z.uid}/${target.ztunnel.netnsCookie}/${inodes}`;
    const dp = this.#o.datapath as Datapath;
    if (this.#ztunnelAttachedFor === key && dp.ztunnelListenersPresent()) return;
    // A failed attempt costs tens of ms (every process of the pod is tried): with nothing changed
    // (same pod, netns and listening sockets) a pass for a pod event does not repeat it for a
    // while. A ztunnel that opens its listeners changes the key and is attempted at once.
    const failed = this.#ztunnelFailed;
    if (failed?.key === key && performance.now() < failed.retryAt) {
      errors.push(failed.error);
      return;
    }
    this.#ztunnelFailed = undefined;
    log.debug({ key, attachedFor: this.#ztunnelAttachedFor }, 'attaching to ztunnel\'s netns');
    // The listeners belong to ztunnel's process, not to the pod's sandbox: try the pod's processes.
    let lastErr: unknown;
    for (const pid of [...z.pids].reverse()) {
      try {
        await dp.attachZtunnel({
          netnsPath: z.netnsPath, pid, ifname: z.podLink?.ifname ?? 'eth0', hostIfname: z.hostLink?.ifname,
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
    errors.push(error);
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

  #report(problems: readonly Problem[], errors: readonly string[]): void {
    // Say each problem once, not on every pass; say when it went away.
    const now = new Set<string>();
    for (const p of problems) {
      const line = `${p.object}: ${p.reason}`;
      now.add(line);
      if (!this.#reported.has(line)) log.error({ object: p.object, reason: p.reason }, `cannot apply ${p.object}: ${p.reason}`);
    }
    for (const e of errors) {
      now.add(e);
      if (!this.#reported.has(e)) log.error({ error: e }, e);
    }
    for (const old of this.#reported) if (!now.has(old)) log.info({ resolved: old }, 'problem resolved');
    this.#reported = now;
  }

  /** False when ztunnel is known but its listeners left the sockmap (a restarted ztunnel process). */
  ztunnelListenersPresent(): boolean {
    if (this.#inpod) return this.#inpod.listenersPresent();
    return this.#ztunnelAttachedFor === undefined || (this.#o.datapath as Datapath).ztunnelListenersPresent();
  }

  /** Waits for queued passes. */
  async idle(): Promise<void> {
    await this.#queue;
  }
}

function isInpod(dp: Datapath | InpodDatapath): dp is InpodDatapath {
  return 'mode' in dp && dp.mode === 'inpod';
}

/**
 * A tc link pinned for an interface that is gone, or that now names another interface, steers
 * nothing: unpin it so the plan attaches to the interface as it is now.
 */
function pruneStaleInbound(dp: Datapath, attempt: Attempt): void {
  for (const { ifname, pinned, current } of dp.staleInbound()) {
    attempt(`stale inbound link tc-${ifname}`, () => dp.detachInbound(ifname));
    log.info({ ifname, pinned, current }, 'removed a stale inbound link');
  }
}

/** What the kernel holds now, from the maps and the pinned inbound links. */
export function readCurrent(dp: Pick<Datapath, 'maps' | 'bpffs'> & Partial<Pick<Datapath, 'inboundInterfaces'>>): Current {
  const zt = dp.maps.ztunnel.get();
  // Node topology: tcx pins and, on kernels without tcx (< 6.6), ambpf's clsact filters found in
  // the kernel. (The inpod datapath has no tc attachments; its per-pod links are its own business.)
  const inbound = new Set<string>(dp.inboundInterfaces?.() ?? []);
  return {
    pods: new Map(dp.maps.pods.entries()),
    netns: new Map(dp.maps.netns.entries()),
    ztunnel: (zt.flags & ZT_READY) !== 0 ? zt : undefined,
    inbound,
  };
}

async function writeStateFile(path: string, desired: DesiredState, resolution: Resolution, handoff: ZtunnelHandoff | undefined): Promise<void> {
  const hostIf = new Map(resolution.pods.map((p) => [p.uid, p.hostLink?.ifname ?? null]));
  const zds = new Map((handoff?.status() ?? []).map((z) => [z.uid, z.error === undefined ? { state: z.state } : { state: z.state, error: z.error }]));
  const state: StateFile = {
    node: desired.node,
    updatedAt: new Date().toISOString(),
    ztunnel: desired.ztunnel ? { name: desired.ztunnel.name, namespace: desired.ztunnel.namespace, ips: desired.ztunnel.ips } : null,
    pods: desired.ambientPods.map((p) => {
      const z = zds.get(p.uid);
      return { name: p.name, namespace: p.namespace, uid: p.uid, ips: p.ips, hostIfname: hostIf.get(p.uid) ?? null, ...(z ? { zds: z } : {}) };
    }),
    problems: desired.problems,
  };
  await mkdir(dirname(path), { recursive: true });
  const tmp = `${path}.${process.pid}.tmp`;
  await writeFile(tmp, JSON.stringify(state, null, 2) + '\n');
  await rename(tmp, path);
}
