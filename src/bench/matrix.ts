// The measured matrix: rounds x sink groups x paths (rotated per round) x workloads x placements.
// Sinks start before a path comes up and stay for all of its cells; a path comes up, serves every
// cell of its group, and goes down again, so no path ever sees another path's rules or pins.
import { join } from 'node:path';
import type { Testbed } from '../testbed/testbed.ts';
import type { TestbedPod } from '../testbed/types.ts';
import { PORT_HBONE, PORT_INBOUND_PLAINTEXT, PORT_OUTBOUND } from '../testbed/ztunnel/config.ts';
import { logger } from '../log.ts';
import { runCell, type CellTarget, type Endpoint } from './cells.ts';
import { BenchError } from './errors.ts';
import { startPath, type PathContext } from './paths.ts';
import { cellCost, pathPrograms, readCounters } from './profile.ts';
import { inPod, startIperfServer, startNginx, type Sink, type SinkPlace } from './sinks.ts';
import { rotation } from './stats.ts';
import { aaOutside, aaRows, type AaVerdict } from './aa.ts';
import type { CpuPlan } from './cpus.ts';
import {
  isDirect,
  type BenchConfig,
  type PathName,
  type Phase,
  type Placement,
  type Sample,
  type WorkloadName,
} from './types.ts';

const log = logger('bench');

/** The port every redirected client addresses (any port works: it is the redirect that matters). */
export const APP_PORT = 8080;

export interface MatrixOptions extends Pick<
  BenchConfig,
  'paths' | 'workloads' | 'placements' | 'rounds' | 'warmup' | 'seconds' | 'maxRounds' | 'maxMinutes' | 'aaTolerance'
> {
  readonly connections: number;
  readonly wrkScript: string;
  readonly shim: string;
  readonly dir: string;
  /** Read the eBPF paths' programs' run-time statistics around every cell (the run turned them on). */
  readonly profile?: boolean;
  /** Where client and sinks run (cpus.ts); unpinned without. */
  readonly cpus?: CpuPlan | undefined;
}

export interface MatrixObserver {
  /** Every ActivePath of an eBPF path reports its cold start and RSS here. */
  loader(coldStartMs: readonly number[], rssKiB: readonly number[]): void;
  sample(s: Sample): void;
  /** The sink phase's rounds and A/A verdict (aa.ts). */
  rounds?(v: AaVerdict): void;
}

interface Group {
  readonly name: 'http' | 'bulk';
  readonly workloads: readonly WorkloadName[];
  start(): Promise<Sink[]>;
}

/** A cell's endpoint: ztunnel's own port for `direct`, the original destination for the others. */
function endpointFor(path: PathName, direct: Endpoint, redirected: Endpoint): Endpoint {
  return isDirect(path) ? direct : redirected;
}

/** A dual-stack pod's IPv6 address (the bench's inpod spec makes its pods dual-stack). */
export function ipv6Of(pod: TestbedPod): string {
  const ip = pod.ips.find((a) => a.includes(':'));
  if (!ip) throw new BenchError(`${pod.name} has no IPv6 address (the bench's inpod pods are dual-stack)`);
  return ip;
}

function findPod(tb: Testbed, pred: (p: TestbedPod) => boolean, what: string): TestbedPod {
  const p = tb.pods.find(pred);
  if (!p) throw new Error(`the bench testbed has no ${what}`);
  return p;
}

/** The pods the sink phase uses: all capture happens at node 1 (its ztunnel, or its mesh pod in inpod, holds the sinks). */
export interface SinkActors {
  readonly zpod: TestbedPod;
  readonly meshClient: TestbedPod;
  readonly meshDst: TestbedPod;
  readonly plainClient: TestbedPod;
  /** Where the sinks listen: ztunnel's pod (node); the mesh client's netns in ztunnel's cgroup (inpod). */
  readonly sinks: SinkPlace;
}

export function sinkActors(tb: Testbed): SinkActors {
  const [n1, n2] = tb.nodes;
  if (!n1 || !n2) throw new Error('the bench testbed needs two nodes');
  const zpod = findPod(tb, (p) => p.isZtunnel && p.node === n1.name, `ztunnel pod on ${n1.name}`);
  const meshClient = findPod(tb, (p) => p.mesh && p.node === n1.name, `mesh pod on ${n1.name}`);
  return {
    zpod,
    meshClient,
    meshDst: findPod(
      tb,
      (p) => p.mesh && p.node === n1.name && p.name !== meshClient.name,
      `second mesh pod on ${n1.name}`,
    ),
    plainClient: findPod(
      tb,
      (p) => !p.mesh && !p.isZtunnel && !p.hostNetwork && p.node === n2.name,
      `non-mesh pod on ${n2.name}`,
    ),
    sinks: tb.info.topology === 'inpod' ? { netns: meshClient, holder: zpod } : inPod(zpod),
  };
}

/** The pods whose capture an eBPF path must see in place before its cells run (inpod: the sinks' pod). */
export function sinkCapturedPods(tb: Testbed): TestbedPod[] {
  return tb.info.topology === 'inpod' ? [sinkActors(tb).meshClient] : [];
}

/** nginx on all three ztunnel ports where the sinks go. */
export function startHttpSink(tb: Testbed, o: Pick<MatrixOptions, 'dir' | 'shim' | 'cpus'>): Promise<Sink> {
  return startNginx(
    tb,
    sinkActors(tb).sinks,
    [PORT_OUTBOUND, PORT_INBOUND_PLAINTEXT, PORT_HBONE],
    join(o.dir, 'nginx-sink'),
    o.shim,
    o.cpus,
  );
}

/**
 * Client, endpoint and netns of a sink-phase cell. node: same-node = mesh pod -> its node's ztunnel
 * (15001, over the pod veth); cross-node = non-mesh pod on node 2 -> mesh pod on node 1, captured at
 * node 1 to ztunnel's 15006. inpod: same-node = the mesh pod's outbound, captured to 127.0.0.1:15001
 * inside its own netns (loopback, the floor being a plain loopback connection); cross-node = the same
 * non-mesh client -> the mesh pod, captured inside the pod to its 15006.
 */
function sinkTargets(tb: Testbed, placement: Placement, path: PathName): CellTarget {
  const { zpod, meshClient, meshDst, plainClient } = sinkActors(tb);
  const inpod = tb.info.topology === 'inpod';
  const nodeNs = tb.nodes.map((n) => n.netnsPath);
  if (placement === 'same-node-v6') {
    // The v4 same-node cell over native IPv6: the floor is [::1]:15001, the captured connect goes to
    // the destination's IPv6 address (ambpf: connect6 to [pod IPv6]:15001; Istio: ip6tables REDIRECT).
    if (!inpod) throw new BenchError('same-node-v6 is measured on the inpod topology only');
    return {
      client: meshClient,
      servers: [zpod],
      endpoint: endpointFor(path, { ip: '::1', port: PORT_OUTBOUND }, { ip: ipv6Of(meshDst), port: APP_PORT }),
      netns: [meshClient.netnsPath, zpod.netnsPath, ...nodeNs],
    };
  }
  if (placement === 'same-node') {
    return {
      client: meshClient,
      servers: [zpod],
      endpoint: endpointFor(
        path,
        { ip: inpod ? '127.0.0.1' : zpod.ip, port: PORT_OUTBOUND },
        { ip: meshDst.ip, port: APP_PORT },
      ),
      netns: [meshClient.netnsPath, zpod.netnsPath, ...nodeNs],
    };
  }
  // Inbound capture: the mesh pod on node 1 is the original destination; its ztunnel answers.
  return {
    client: plainClient,
    servers: [zpod],
    endpoint: endpointFor(
      path,
      { ip: inpod ? meshClient.ip : zpod.ip, port: PORT_INBOUND_PLAINTEXT },
      { ip: meshClient.ip, port: APP_PORT },
    ),
    netns: [plainClient.netnsPath, meshClient.netnsPath, zpod.netnsPath, ...nodeNs],
  };
}

async function stopAll(sinks: readonly Sink[]): Promise<void> {
  for (const s of sinks) await s.stop();
}

/**
 * Whether to run another measured round: never below o.rounds; above it (up to o.maxRounds, within
 * o.maxMinutes) while the A/A control of any claimed row is outside its tolerance. undefined: go on.
 */
function stopVerdict(
  o: MatrixOptions,
  measured: number,
  samples: readonly Sample[],
  startedMs: number,
): AaVerdict | undefined {
  const tolerance = o.aaTolerance ?? 0.03;
  const maxRounds = Math.max(o.rounds, o.maxRounds ?? o.rounds);
  const adaptive = maxRounds > o.rounds && o.paths.includes('direct') && o.paths.includes('direct-aa');
  if (measured < o.rounds) return undefined;
  const outside = aaOutside(aaRows(samples), tolerance);
  const base = { rounds: measured, tolerance, outside };
  if (!adaptive) return { ...base, converged: outside.length === 0, stoppedBy: 'fixed rounds' };
  if (outside.length === 0) return { ...base, converged: true, stoppedBy: 'converged' };
  if (measured >= maxRounds) return { ...base, converged: false, stoppedBy: 'round cap' };
  if (o.maxMinutes !== undefined && performance.now() - startedMs > o.maxMinutes * 60_000)
    return { ...base, converged: false, stoppedBy: 'time cap' };
  return undefined;
}

/**
 * Runs `groups` x rotated paths for every round: o.rounds measured rounds (after the warm-up), then
 * more while stopVerdict says so. `targets(placement, path)` names client, server and endpoint of a cell.
 */
async function runRounds(
  tb: Testbed,
  phase: Phase,
  ctx: PathContext,
  o: MatrixOptions,
  groups: readonly Group[],
  targets: (placement: Placement, path: PathName) => CellTarget,
  obs: MatrixObserver,
): Promise<void> {
  const startedMs = performance.now();
  const mine: Sample[] = [];
  for (let round = 0; ; round++) {
    const warmup = o.warmup && round === 0;
    const measured = round - (o.warmup ? 1 : 0);
    const verdict = warmup ? undefined : stopVerdict(o, measured, mine, startedMs);
    if (verdict) {
      log.info({ phase, ...verdict, outside: verdict.outside.length }, 'rounds done');
      obs.rounds?.(verdict);
      break;
    }
    const order = rotation(o.paths, round);
    for (const group of groups) {
      if (group.workloads.length === 0) continue;
      const sinks = await group.start();
      try {
        for (const pathName of order) {
          const path = await startPath(ctx, pathName);
          try {
            await path.settle();
            // Listed once the path is up: its programs are loaded by then (captures attach, not load).
            const progs =
              o.profile && pathName.startsWith('ebpf') ? pathPrograms(ctx.loaderNodes.map((n) => n.bpffsDir)) : [];
            for (const workload of group.workloads) {
              for (const placement of o.placements) {
                const before = progs.length > 0 ? readCounters(progs) : undefined;
                const r = await runCell(tb, workload, targets(placement, pathName), o).catch((err: unknown) => {
                  const what = `${phase} round ${round}, path ${pathName}, ${workload} ${placement}`;
                  throw new BenchError(
                    `${what}: ${err instanceof Error ? err.message : String(err)}`,
                    { phase, round, path: pathName, workload, placement },
                    { cause: err },
                  );
                });
                const profile = before ? cellCost(progs, before, readCounters(progs), r.requests) : undefined;
                const sample: Sample = {
                  phase,
                  round,
                  warmup,
                  path: pathName,
                  workload,
                  placement,
                  metrics: r.metrics,
                  errors: r.errors,
                  ...(profile ? { profile } : {}),
                };
                log.info(
                  { phase, round, warmup, path: pathName, workload, placement, ...r.metrics, errors: r.errors },
                  'cell',
                );
                mine.push(sample);
                obs.sample(sample);
              }
            }
            if (path.coldStartMs.length > 0) obs.loader(path.coldStartMs, path.rssKiB());
          } finally {
            await path.down();
          }
        }
      } finally {
        await stopAll(sinks);
      }
    }
  }
}

const BULK: readonly WorkloadName[] = ['bulk-1k', 'bulk-16k', 'bulk-128k'];

/** Phase 1: raw sinks on ztunnel's ports where ztunnel listens (sinkActors); only the redirect is measured. */
export async function runSinkPhase(
  tb: Testbed,
  ctx: PathContext,
  o: MatrixOptions,
  obs: MatrixObserver,
): Promise<void> {
  const { sinks } = sinkActors(tb);
  const groups: Group[] = [
    {
      name: 'http',
      workloads: o.workloads.filter((w) => !BULK.includes(w)),
      start: async () => [await startHttpSink(tb, o)],
    },
    {
      name: 'bulk',
      workloads: o.workloads.filter((w) => BULK.includes(w)),
      // Both always run: the loader wants 15006 and 15008 held by one process even for same-node cells.
      start: async () => {
        const a = await startIperfServer(
          tb,
          sinks,
          PORT_OUTBOUND,
          join(o.dir, 'iperf-sink'),
          o.shim,
          undefined,
          o.cpus,
        );
        try {
          return [
            a,
            await startIperfServer(
              tb,
              sinks,
              PORT_INBOUND_PLAINTEXT,
              join(o.dir, 'iperf-sink'),
              o.shim,
              PORT_HBONE,
              o.cpus,
            ),
          ];
        } catch (err) {
          await a.stop();
          throw err;
        }
      },
    },
  ];
  await runRounds(tb, 'sink', ctx, o, groups, (placement, path) => sinkTargets(tb, placement, path), obs);
}

/**
 * Phase 2: end to end through the ztunnel stand-in (HBONE between the halves), HTTP workloads only.
 * same-node: mesh pod -> mesh pod on node 1; cross-node: mesh pod on node 1 -> mesh pod on node 2.
 * `direct` here is the unmeshed floor: the client reaches the destination's nginx with nothing installed.
 */
export async function runE2ePhase(tb: Testbed, ctx: PathContext, o: MatrixOptions, obs: MatrixObserver): Promise<void> {
  const { meshClient, meshDst } = sinkActors(tb);
  const [, n2] = tb.nodes;
  const remote = findPod(tb, (p) => p.mesh && p.node === n2?.name, 'mesh pod on the second node');
  const zpods = tb.pods.filter((p) => p.isZtunnel);
  const group: Group = {
    name: 'http',
    workloads: o.workloads.filter((w) => !BULK.includes(w)),
    start: async () => {
      const a = await startNginx(tb, inPod(meshDst), [APP_PORT], join(o.dir, 'nginx-e2e-local'), o.shim, o.cpus);
      try {
        return [a, await startNginx(tb, inPod(remote), [APP_PORT], join(o.dir, 'nginx-e2e-remote'), o.shim, o.cpus)];
      } catch (err) {
        await a.stop();
        throw err;
      }
    },
  };
  const allNs = [...tb.nodes.map((n) => n.netnsPath), ...tb.pods.filter((p) => !p.hostNetwork).map((p) => p.netnsPath)];
  await runRounds(
    tb,
    'e2e',
    ctx,
    o,
    [group],
    (placement) => {
      const dst = placement === 'same-node' ? meshDst : remote;
      return { client: meshClient, servers: [dst, ...zpods], endpoint: { ip: dst.ip, port: APP_PORT }, netns: allNs };
    },
    obs,
  );
}
