// The one path from cluster objects into the kernel: snapshot -> desired state -> node discovery
// -> the topology's plan -> capture -> the maps' diff -> release (src/reconcile/topology.ts). Passes
// are serialized (the newest snapshot wins), every pass is idempotent, and a failing entry (a full
// map, a vanished interface) is reported and counted without stopping the others. When to run a pass
// without a new snapshot is src/reconcile/resync.ts's business.
//
// The fast path is the same pass, scoped: a snapshot that changed a few pods (src/reconcile/scope.ts
// compares it with the last pass's), or a pass asked for named pods (a ZDS ack, a retry), resolves
// only those pods and hands the topology their uids; the other pods keep the last pass's resolution,
// so the maps' target is the full one and the kernel ends as a full pass would leave it. A full pass
// runs for the first snapshot, after a pass that threw, when ztunnel changed, when many pods changed,
// and when asked (the safety net, a ztunnel restart).
import { writeFile, rename, mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';
import { computeDesiredState, type DesiredPod, type DesiredState, type Problem } from '../state/desired.ts';
import {
  resolveNode,
  stillResolved,
  type DiscoveryOptions,
  type Resolution,
  type ResolvedPod,
} from '../node/discovery.ts';
import { planReconcile, type Plan } from './plan.ts';
import { MapFullError, type DatapathMaps } from '../bpf/datapath-maps.ts';
import type { Attempt, HandoffStatus, PassContext, Topology } from './topology.ts';
import type { ClusterSnapshot } from '../sources/types.ts';
import type { StateFile } from '../state/state-file.ts';
import { describeError } from '../errors.ts';
import { logger } from '../log.ts';
import { changedPods, memoOf, type PassMemo } from './scope.ts';

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

/** The state file's type lives in src/state/ (re-exported for code that imports it from here). */
export type { StateFile } from '../state/state-file.ts';

export interface ReconcilerOptions {
  readonly node: string;
  /** Where ztunnel listens and what is attached around the maps: NodeTopology or InpodTopology. */
  readonly topology: Topology;
  /** Where to write the state file (pod names for the inspection commands); none if undefined. */
  readonly stateFile?: string;
  readonly procRoot?: string;
  /** Netns paths from the CNI plugin (uid -> path), read at each pass; see DiscoveryOptions. */
  readonly netnsHints?: () => ReadonlyMap<string, string>;
  /** Node discovery (src/node/discovery.ts); a test passes its own. */
  readonly discovery?: Discovery;
}

export interface Discovery {
  resolve(desired: DesiredState, o: DiscoveryOptions): Promise<Resolution>;
  /** An earlier resolution of the pod still holds (its process runs in that netns). */
  stillResolved(pod: ResolvedPod): boolean;
}

const NODE_DISCOVERY: Discovery = { resolve: resolveNode, stillResolved };

/**
 * An earlier resolution of a pod with what the cluster says of it now: the node's facts (processes,
 * netns, host link) from the one, every DesiredPod field from the other. Not `{ ...known, ...d }`: an
 * optional field the pod lost (its dns-capture annotation removed) would keep the old value.
 */
function withDesired(known: ResolvedPod, d: DesiredPod): ResolvedPod {
  const { pid, pids, netnsPath, netnsCookie, hostLink } = known;
  return { ...d, pid, pids, netnsPath, netnsCookie, hostLink };
}

/** Pods resolved by earlier passes kept for scoped passes (those that left too: a pod that opts out and
 * back in is resolved without a /proc scan). */
const KNOWN_PODS_MAX = 4096;

/** What a pass is asked for beside its snapshot: a full pass, and pods to include in its scope. */
export interface PassRequest {
  /** A full pass whatever changed (the safety net, ztunnel's listeners gone). */
  readonly full?: boolean;
  /** Pods the pass must look at even if their objects did not change (a ZDS ack, a retry). */
  readonly scope?: Iterable<string>;
}

/** A scope bigger than this share of the node's pods (and than MIN_FULL_PASS_PODS) runs as a full pass. */
const SCOPE_MAX_SHARE = 0.25;
const MIN_FULL_PASS_PODS = 16;

/** A problem or error line of a pass, with the pod it is about (undefined: not one pod's). */
interface OpenLine {
  readonly uid: string | undefined;
  /** A later pass may resolve it (discovery, capture, a kernel write), vs the objects' own (desired). */
  readonly retry: boolean;
}

export class Reconciler {
  readonly stats: ReconcileStats = {
    passes: 0,
    errors: 0,
    mapFull: 0,
    mapFullByMap: {},
    lastDurationMs: 0,
    lastAt: undefined,
    lastError: undefined,
  };
  readonly #o: ReconcilerOptions;
  #queue: Promise<unknown> = Promise.resolve();
  #pending: ClusterSnapshot | undefined;
  /** What the queued pass is asked for beside its snapshot (requests merge until it runs). */
  #wantFull = false;
  #wantScope = new Set<string>();
  #last: ClusterSnapshot | undefined;
  /** What the last pass saw and resolved: a scoped pass compares with the one and reuses the other. */
  #memo: PassMemo | undefined;
  #lastResolution: Resolution | undefined;
  /** uid -> the pod as a pass last resolved it (KNOWN_PODS_MAX, oldest out first). */
  readonly #known = new Map<string, ResolvedPod>();
  /** Problems and errors said (each once), with the pod each is about: what a retry looks at. */
  #open = new Map<string, OpenLine>();
  /** The last pass threw (set by the resync policy): retried as a full pass. */
  #failed = false;
  #stateWrite: { timer: NodeJS.Timeout; write: () => Promise<void> } | undefined;
  #stateWriting: Promise<void> = Promise.resolve();

  constructor(options: ReconcilerOptions) {
    this.#o = options;
  }

  /** Whether the last passes left something to retry soon. Set by the resync policy when a pass threw. */
  get hasUnresolved(): boolean {
    return this.#failed || [...this.#open.values()].some((l) => l.retry);
  }

  set hasUnresolved(v: boolean) {
    this.#failed = v;
  }

  /**
   * Queue a pass for this snapshot; resolves when a pass that saw it (or a newer one) finished. The
   * pass is scoped to the pods the snapshot changed (and `o.scope`) unless a full one is due.
   */
  reconcile(snapshot: ClusterSnapshot, o: PassRequest = {}): Promise<ReconcileResult | undefined> {
    this.#pending = snapshot;
    if (o.full) this.#wantFull = true;
    for (const uid of o.scope ?? []) this.#wantScope.add(uid);
    const run = this.#queue.then(() => {
      const next = this.#pending;
      if (!next) return undefined;
      const request = { full: this.#wantFull, scope: this.#wantScope };
      this.#pending = undefined;
      this.#wantFull = false;
      this.#wantScope = new Set();
      return this.#pass(next, request);
    });
    this.#queue = run.catch(() => undefined);
    return run;
  }

  /**
   * Re-run the last snapshot. rescanKernel: the safety net, a full pass that also re-reads what the
   * topology caches of the kernel (clsact filters, in-pod listeners; other passes trust the cache).
   * scope: these pods (a ZDS ack). retry: the pods the last passes could not finish (a sandbox not up
   * yet), or all of them if something not one pod's failed. Otherwise a full pass.
   */
  resync(
    o: { rescanKernel?: boolean; scope?: Iterable<string>; retry?: boolean } = {},
  ): Promise<ReconcileResult | undefined> {
    if (o.rescanKernel) this.#o.topology.rescan();
    if (!this.#last) return Promise.resolve(undefined);
    const snapshot = this.#pending ?? this.#last;
    if (o.rescanKernel) return this.reconcile(snapshot, { full: true });
    if (o.scope) return this.reconcile(snapshot, { scope: o.scope });
    if (!o.retry || this.#failed) return this.reconcile(snapshot, { full: true });
    const open = [...this.#open.values()].filter((l) => l.retry);
    if (open.some((l) => l.uid === undefined)) return this.reconcile(snapshot, { full: true });
    return this.reconcile(snapshot, { scope: open.map((l) => l.uid!) });
  }

  /**
   * The pods a pass looks at (undefined: all of them, a full pass) and, of those, the ones whose
   * objects changed.
   */
  #scopeOf(
    memo: PassMemo,
    podCount: number,
    request: { full: boolean; scope: Set<string> },
  ): { scope: Set<string>; changed: ReadonlySet<string> } | undefined {
    if (request.full || !this.#memo || !this.#lastResolution) return undefined;
    const changed = changedPods(this.#memo, memo);
    if (!changed) return undefined;
    const scope = new Set([...changed, ...request.scope]);
    // Past this, resolving the pods one by one costs more than one scan of /proc.
    return scope.size > Math.max(MIN_FULL_PASS_PODS, podCount * SCOPE_MAX_SHARE) ? undefined : { scope, changed };
  }

  /**
   * Discovery for a scoped pass: the others (and ztunnel) as the last pass left them; a pod of the
   * scope as an earlier pass resolved it while its process still runs in that netns (same IPs, same
   * CNI netns); a pod CNI ADD just handed over from its netns alone (no process to look for yet);
   * the rest from a /proc scan for those pods.
   */
  async #resolveScoped(
    desired: DesiredState,
    scope: ReadonlySet<string>,
    changed: ReadonlySet<string>,
    o: DiscoveryOptions,
  ): Promise<Resolution> {
    const last = this.#lastResolution!;
    const discovery = this.#o.discovery ?? NODE_DISCOVERY;
    const byUid = new Map(last.pods.filter((p) => !scope.has(p.uid)).map((p) => [p.uid, p]));
    const fromHint: DesiredState['ambientPods'][number][] = [];
    const scan: DesiredState['ambientPods'][number][] = [];
    for (const d of desired.ambientPods) {
      if (!scope.has(d.uid)) continue;
      const known = this.#known.get(d.uid);
      const hint = o.netnsHints?.get(d.uid);
      const same =
        known !== undefined &&
        known.ips.length === d.ips.length &&
        known.ips.every((ip, i) => ip === d.ips[i]) &&
        (hint === undefined || hint === known.netnsPath);
      if (same && discovery.stillResolved(known)) byUid.set(d.uid, withDesired(known, d));
      else if (hint !== undefined && changed.has(d.uid)) fromHint.push(d);
      else scan.push(d);
    }
    const unresolved: Problem[] = [];
    const some = async (pods: typeof scan, scanProcesses: boolean): Promise<void> => {
      if (pods.length === 0) return;
      const r = await discovery.resolve({ ...desired, ambientPods: pods, ztunnel: undefined }, { ...o, scanProcesses });
      for (const p of r.pods) byUid.set(p.uid, p);
      unresolved.push(...r.unresolved);
    };
    await some(scan, true);
    await some(fromHint, false);
    return {
      pods: desired.ambientPods.flatMap((d) => byUid.get(d.uid) ?? []),
      ztunnel: last.ztunnel,
      ztunnelWanted: last.ztunnelWanted,
      unresolved,
    };
  }

  #remember(resolution: Resolution): void {
    for (const p of resolution.pods) {
      this.#known.delete(p.uid);
      this.#known.set(p.uid, p);
    }
    for (const uid of this.#known.keys()) {
      if (this.#known.size <= KNOWN_PODS_MAX) break;
      this.#known.delete(uid);
    }
  }

  async #pass(snapshot: ClusterSnapshot, request: { full: boolean; scope: Set<string> }): Promise<ReconcileResult> {
    try {
      return await this.#run(snapshot, request);
    } catch (err) {
      // Whatever this pass did not finish, the next one redoes in full, and soon: the resync policy's
      // next tick (a pass a watch event, a CNI ADD or a ZDS ack started has no one else to retry it).
      this.#memo = undefined;
      this.#failed = true;
      throw err;
    }
  }

  async #run(snapshot: ClusterSnapshot, request: { full: boolean; scope: Set<string> }): Promise<ReconcileResult> {
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
    const cx: PassContext = { attempt, fail: (error) => errors.push(error), lap };
    const { topology } = this.#o;

    // sources -> desired state -> discovery -> plan -> topology/datapath -> kernel.
    const desired = computeDesiredState(snapshot, this.#o.node);
    const netnsHints = this.#o.netnsHints?.() ?? new Map<string, string>();
    const memo = memoOf(snapshot, desired, netnsHints);
    const scoped = this.#scopeOf(memo, desired.ambientPods.length, request);
    const scope = scoped?.scope;
    const discovery = { procRoot: this.#o.procRoot, netnsHints };
    const resolution = scoped
      ? await this.#resolveScoped(desired, scoped.scope, scoped.changed, discovery)
      : await (this.#o.discovery ?? NODE_DISCOVERY).resolve(desired, discovery);
    lap('resolve');
    const pass = topology.plan({ desired, resolution, scope });
    // Capture before the maps turn redirection on; release after the maps dropped what left.
    const captured = await pass.capture(cx);
    lap('capture');
    const mapPlan = planReconcile(captured.target, captured.current);
    applyMaps(topology.maps, mapPlan, attempt);
    lap('maps');
    const released = await pass.release(mapPlan, cx);
    lap('release');
    const plan: Plan = { ...mapPlan, inboundAttach: released.attached, inboundDetach: released.detached };
    const unresolved = [...desired.problems, ...resolution.unresolved, ...captured.unresolved];

    this.#report(desired, [...resolution.unresolved, ...captured.unresolved], errors, resolution, scope);
    this.#failed = false;
    this.#memo = memo;
    this.#lastResolution = resolution;
    this.#remember(resolution);
    this.#scheduleStateFile(desired, resolution);
    this.stats.passes++;
    this.stats.errors += errors.length;
    this.stats.lastDurationMs = performance.now() - started;
    this.stats.lastAt = Date.now();
    this.stats.lastError = errors.at(-1);
    log.info(
      {
        pods: resolution.pods.length,
        scope: scope?.size ?? 'all',
        ztunnel: resolution.ztunnel?.ips[0] ?? null,
        steps: pass.steps.length,
        set: plan.podsSet.size + plan.netnsSet.size,
        deleted: plan.podsDelete.length + plan.netnsDelete.length,
        attached: plan.inboundAttach.length,
        detached: plan.inboundDetach.length,
        errors: errors.length,
        ms: Math.round(this.stats.lastDurationMs),
        phases,
      },
      'reconciled',
    );
    return { desired, plan, errors, unresolved };
  }

  /**
   * Says each problem once, not on every pass, and when it went away. The objects' own problems
   * (desired) are whole in every pass; a scoped pass's other problems and errors replace only those of
   * its pods (a line not one pod's stays until a full pass).
   */
  #report(
    desired: DesiredState,
    pending: readonly Problem[],
    errors: readonly string[],
    resolution: Resolution,
    scope: ReadonlySet<string> | undefined,
  ): void {
    const uidOf = subjectsOf(desired, resolution);
    const now = new Map<string, OpenLine>();
    const say = (line: string, open: OpenLine, logIt: () => void): void => {
      now.set(line, open);
      if (!this.#open.has(line)) logIt();
    };
    const problems = desired.problems;
    for (const p of [...problems, ...pending]) {
      const line = `${p.object}: ${p.reason}`;
      const open = { uid: uidOf.get(p.object), retry: !problems.includes(p) };
      say(line, open, () => log.error({ object: p.object, reason: p.reason }, `cannot apply ${p.object}: ${p.reason}`));
    }
    for (const e of errors) say(e, { uid: errorSubject(e, uidOf), retry: true }, () => log.error({ error: e }, e));
    if (scope) {
      for (const [line, open] of this.#open) {
        if (open.retry && !now.has(line) && !(open.uid !== undefined && scope.has(open.uid))) now.set(line, open);
      }
    }
    for (const old of this.#open.keys()) if (!now.has(old)) log.info({ resolved: old }, 'problem resolved');
    this.#open = now;
  }

  /** The state file after a pass, off its path (a CNI ADD waits for the pass): coalesced, written in order. */
  #scheduleStateFile(desired: DesiredState, resolution: Resolution): void {
    const path = this.#o.stateFile;
    if (!path) return;
    const write = (): Promise<void> =>
      writeStateFile(path, desired, resolution, this.#o.topology.inspect().handoff).catch((err: unknown) => {
        this.stats.errors++;
        log.error({ error: describeError(err), path }, 'cannot write the state file');
      });
    if (this.#stateWrite) {
      this.#stateWrite.write = write;
      return;
    }
    const timer = setTimeout(() => {
      const w = this.#stateWrite!.write;
      this.#stateWrite = undefined;
      this.#stateWriting = this.#stateWriting.then(w);
    }, STATE_FILE_DELAY_MS);
    this.#stateWrite = { timer, write };
  }

  /** False when ztunnel's listeners left the datapath (a restarted ztunnel process): time for a pass. */
  ztunnelListenersPresent(): boolean {
    return this.#o.topology.inspect().listenersPresent;
  }

  /** Waits for queued passes and the state file they left to write. */
  async idle(): Promise<void> {
    await this.#queue;
    const pending = this.#stateWrite;
    if (pending) {
      clearTimeout(pending.timer);
      this.#stateWrite = undefined;
      this.#stateWriting = this.#stateWriting.then(pending.write);
    }
    await this.#stateWriting;
  }
}

/** How long after a pass its state file is written (passes within it write once). */
const STATE_FILE_DELAY_MS = 20;

/** `pod ns/name`, each IP and netns cookie of a pod -> its uid: who a problem or error is about. */
function subjectsOf(desired: DesiredState, resolution: Resolution): Map<string, string> {
  const out = new Map<string, string>();
  for (const p of desired.ambientPods) out.set(`pod ${p.namespace}/${p.name}`, p.uid);
  for (const p of resolution.pods) {
    out.set(`pod ${p.namespace}/${p.name}`, p.uid);
    for (const ip of p.ips) out.set(ip, p.uid);
    out.set(String(p.netnsCookie), p.uid);
  }
  return out;
}

/** The pod an error line is about: `inpod capture of pod ns/name: ...`, `ambpf_pods 10.0.0.1: ...`. */
function errorSubject(error: string, uidOf: ReadonlyMap<string, string>): string | undefined {
  const colon = error.indexOf(': ');
  const what = colon < 0 ? error : error.slice(0, colon);
  const pod = /pod (\S+\/\S+)$/.exec(what)?.[0];
  if (pod !== undefined) return uidOf.get(pod);
  return uidOf.get(what.slice(what.lastIndexOf(' ') + 1));
}

/** The map half of a plan. Order matters for traffic: identities first (netns, pods), then ztunnel,
 * then removals, so a pass never leaves a pod half-known. */
function applyMaps(maps: DatapathMaps, plan: Plan, attempt: Attempt): void {
  for (const [cookie, v] of plan.netnsSet) attempt(`ambpf_netns ${cookie}`, () => maps.netns.set(cookie, v));
  for (const [ip, v] of plan.podsSet) attempt(`ambpf_pods ${ip}`, () => maps.pods.set(ip, v));
  const zt = plan.ztunnel;
  if (zt === null) attempt('ambpf_ztunnel clear', () => maps.ztunnel.clear());
  else if (zt) attempt('ambpf_ztunnel', () => maps.ztunnel.set(zt));
  for (const ip of plan.podsDelete) attempt(`ambpf_pods delete ${ip}`, () => maps.pods.delete(ip));
  for (const cookie of plan.netnsDelete) attempt(`ambpf_netns delete ${cookie}`, () => maps.netns.delete(cookie));
}

async function writeStateFile(
  path: string,
  desired: DesiredState,
  resolution: Resolution,
  handoff: readonly HandoffStatus[],
): Promise<void> {
  const hostIf = new Map(resolution.pods.map((p) => [p.uid, p.hostLink?.ifname ?? null]));
  const zds = new Map(
    handoff.map((z) => [z.uid, z.error === undefined ? { state: z.state } : { state: z.state, error: z.error }]),
  );
  const state: StateFile = {
    node: desired.node,
    updatedAt: new Date().toISOString(),
    ztunnel: desired.ztunnel
      ? { name: desired.ztunnel.name, namespace: desired.ztunnel.namespace, ips: desired.ztunnel.ips }
      : null,
    pods: desired.ambientPods.map((p) => {
      const z = zds.get(p.uid);
      return {
        name: p.name,
        namespace: p.namespace,
        uid: p.uid,
        ips: p.ips,
        hostIfname: hostIf.get(p.uid) ?? null,
        ...(z ? { zds: z } : {}),
      };
    }),
    problems: desired.problems,
  };
  await mkdir(dirname(path), { recursive: true });
  const tmp = `${path}.${process.pid}.tmp`;
  await writeFile(tmp, JSON.stringify(state, null, 2) + '\n');
  await rename(tmp, path);
}
