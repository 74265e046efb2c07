// The one path from cluster objects into the kernel: snapshot -> desired state -> node discovery
// -> the topology's plan -> capture -> the maps' diff -> release (src/reconcile/topology.ts). Passes
// are serialized (the newest snapshot wins), every pass is idempotent, and a failing entry (a full
// map, a vanished interface) is reported and counted without stopping the others. When to run a pass
// without a new snapshot is src/reconcile/resync.ts's business.
import { writeFile, rename, mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';
import { computeDesiredState, type DesiredState, type Problem } from '../state/desired.ts';
import { resolveNode, type Resolution } from '../node/discovery.ts';
import { planReconcile, type Plan } from './plan.ts';
import { MapFullError, type DatapathMaps } from '../bpf/datapath-maps.ts';
import type { Attempt, HandoffStatus, PassContext, Topology } from './topology.ts';
import type { ClusterSnapshot } from '../sources/types.ts';
import type { StateFile } from '../state/state-file.ts';
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
  /** Whether the last pass left something to retry soon. */
  hasUnresolved = false;
  readonly #o: ReconcilerOptions;
  #queue: Promise<unknown> = Promise.resolve();
  #pending: ClusterSnapshot | undefined;
  #last: ClusterSnapshot | undefined;
  #reported = new Set<string>();

  constructor(options: ReconcilerOptions) {
    this.#o = options;
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
    // rescanKernel: also re-read what the topology caches of the kernel's state (clsact filters,
    // in-pod listeners), for the periodic safety-net pass; event-driven passes trust the cache.
    if (o.rescanKernel) this.#o.topology.rescan();
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
    const resolution = await resolveNode(desired, { procRoot: this.#o.procRoot, netnsHints: this.#o.netnsHints?.() });
    lap('resolve');
    const pass = topology.plan({ desired, resolution });
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

    this.#report(unresolved, errors);
    this.hasUnresolved = resolution.unresolved.length > 0 || captured.unresolved.length > 0 || errors.length > 0;
    if (this.#o.stateFile) {
      await writeStateFile(this.#o.stateFile, desired, resolution, topology.inspect().handoff).catch((err: unknown) => {
        errors.push(`state file ${this.#o.stateFile}: ${describeError(err)}`);
      });
    }
    lap('stateFile');
    this.stats.passes++;
    this.stats.errors += errors.length;
    this.stats.lastDurationMs = performance.now() - started;
    this.stats.lastAt = Date.now();
    this.stats.lastError = errors.at(-1);
    log.info(
      {
        pods: resolution.pods.length,
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

  #report(problems: readonly Problem[], errors: readonly string[]): void {
    // Say each problem once, not on every pass; say when it went away.
    const now = new Set<string>();
    for (const p of problems) {
      const line = `${p.object}: ${p.reason}`;
      now.add(line);
      if (!this.#reported.has(line))
        log.error({ object: p.object, reason: p.reason }, `cannot apply ${p.object}: ${p.reason}`);
    }
    for (const e of errors) {
      now.add(e);
      if (!this.#reported.has(e)) log.error({ error: e }, e);
    }
    for (const old of this.#reported) if (!now.has(old)) log.info({ resolved: old }, 'problem resolved');
    this.#reported = now;
  }

  /** False when ztunnel's listeners left the datapath (a restarted ztunnel process): time for a pass. */
  ztunnelListenersPresent(): boolean {
    return this.#o.topology.inspect().listenersPresent;
  }

  /** Waits for queued passes. */
  async idle(): Promise<void> {
    await this.#queue;
  }
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
