// `ambpf bench`: one command, one testbed, every path side by side (docs/architecture.md "Testbed and benchmark").
//   1. a two-node testbed without the stand-in; raw sinks where node 1 keeps ztunnel's ports (its
//      ztunnel pod; inpod: inside its first mesh pod, held by ztunnel's cgroup);
//   2. the matrix, rounds x paths (rotated) x workloads x placements (matrix.ts);
//   3. control plane: pod change -> map entry, reconcile of N pods, cold start, RSS;
//   4. end to end through the ztunnel stand-in (HTTP workloads);
//   5. results.json, results.md and one SVG per workload in --out.
// The testbed (and with it every process, rule, pin and cgroup made here) is removed at the end,
// also on failure.
import { cpSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startTestbed, defaultSpec, startStandIns, stopStandIns, type Testbed } from '../testbed/index.ts';
import type { TestbedSpec } from '../testbed/spec.ts';
import { logger } from '../log.ts';
import { chartSpec, renderSvg } from './charts.ts';
import {
  measurePodChange,
  measurePodChangeWatch,
  measureReconcile,
  summarizePodChange,
  writePodsWithOptOut,
} from './control-plane.ts';
import { wrkScript } from './load.ts';
import { describeMachine } from './machine.ts';
import { runDnsPhase } from './dns.ts';
import {
  APP_PORT,
  runE2ePhase,
  runSinkPhase,
  sinkActors,
  sinkCapturedPods,
  startHttpSink,
  type MatrixOptions,
} from './matrix.ts';
import type { PathContext } from './paths.ts';
import { resultsMarkdown } from './report.ts';
import { profileRows } from './profile.ts';
import { BpfRunTimeStats, statsCostPerRunNs } from '../libbpf/index.ts';
import { median, spread } from './stats.ts';
import { summarize } from './summary.ts';
import { buildTransparentShim } from './transparent-shim.ts';
import type { BenchConfig, BenchResults, ControlPlaneResults, Sample } from './types.ts';
import type { AaVerdict } from './aa.ts';
import { cpuPlan } from './cpus.ts';
import { measureScale } from './scale.ts';
import { SAFETY_NET_MS } from '../reconcile/resync.ts';
import { distIsFresh } from '../cli/build-js.ts';

const log = logger('bench');
/** The repository whose bin/ambpf the testbed starts (src/testbed/loader.ts AMBPF_BIN). */
const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url));

export interface BenchOptions extends BenchConfig {
  readonly outDir: string;
  /** The command line, recorded in the results. */
  readonly command: string;
  readonly prefix?: string;
  /** Pod changes timed for the pod-change figure. */
  readonly podChanges: number;
  readonly reconcileSizes: readonly number[];
  /** Concurrent wrk connections. */
  readonly connections: number;
  /** inpod control plane: mesh pods of the node-scale run with ZDS (scale.ts); 0 skips it. */
  readonly scalePods?: number;
  /** Called once the testbed exists, so a signal handler can take it down. */
  readonly onTestbed?: (tb: Testbed) => void;
}

export interface BenchOutput {
  readonly results: BenchResults;
  readonly files: readonly string[];
}

/**
 * The testbed: defaultSpec's two nodes and pods; inpod makes every pod dual-stack (IPv4 first, so a
 * pod's `ip` stays its IPv4 address), which the same-node-v6 cells need and inpod's datapath captures.
 */
export function benchSpec(topology: BenchConfig['topology']): TestbedSpec {
  const spec = defaultSpec();
  if (topology !== 'inpod') return spec;
  return { ...spec, pods: spec.pods.map((p) => ({ ...p, ipFamilies: ['IPv4', 'IPv6'] as const })) };
}

export async function runBench(o: BenchOptions): Promise<BenchOutput> {
  const startedAt = new Date().toISOString();
  const machine = await describeMachine();
  const samples: Sample[] = [];
  const coldStarts: number[] = [];
  const rss: number[] = [];
  const notes: string[] = [];
  const controlPlane: { -readonly [K in keyof ControlPlaneResults]: ControlPlaneResults[K] } = {};
  const cpus = cpuPlan(undefined, o.pin ?? true);
  let aa: AaVerdict | undefined;

  // --profile: the kernel's BPF run-time statistics for the whole run, released in the finally below
  // (and by the kernel if this process dies), so the machine never keeps paying for them.
  // Loaders started from the TypeScript sources (dist/ stale: src/ edited since `make js`) carry Node's
  // type stripper in their RSS and cold start: said in the notes, checked again before the control plane
  // (an edit during the run makes the later loaders run from the sources).
  const fromSources = new Set<string>();
  const checkDist = (phase: string): void => {
    if (distIsFresh(REPO_ROOT)) return;
    fromSources.add(phase);
    log.warn({ phase }, 'the loaders run from the TypeScript sources (dist/ is stale: run `make js`)');
  };
  checkDist('datapath');
  const stats = o.profile ? BpfRunTimeStats.enable() : undefined;
  // What an empty program measures per run (the part of every run that is not the program's): the
  // median of three measurements, before the testbed exists (nothing else of ours runs).
  const clockNsPerRun = stats ? statsClockNsPerRun() : undefined;
  let tb: Testbed;
  try {
    tb = await startTestbed(benchSpec(o.topology), {
      topology: o.topology,
      standIn: false,
      ...(o.prefix ? { prefix: o.prefix } : {}),
    });
  } catch (err) {
    stats?.close();
    throw err;
  }
  o.onTestbed?.(tb);
  const inpod = o.topology === 'inpod';
  try {
    const dir = join(tb.info.runDir, 'bench');
    mkdirSync(dir, { recursive: true });
    const podsFile = join(dir, 'pods.json');
    const [node1] = tb.nodes;
    if (!node1) throw new Error('the bench testbed has no node');
    const actors = sinkActors(tb);
    // inpod: only the sinks' pod has "ztunnel" listeners; the other mesh pods are opted out in the
    // sink phase so the loader does not retry them (a discovery pass every --resync-ms) mid-cell.
    const idle = inpod ? tb.pods.filter((p) => p.mesh && p.name !== actors.meshClient.name) : [];
    writePodsWithOptOut(tb, podsFile, idle);
    const ctx: PathContext = {
      tb,
      podsFile,
      loaderNodes: [node1],
      logDir: dir,
      captured: sinkCapturedPods(tb),
      cpus,
      ...(inpod ? { probe: { from: actors.meshClient, ip: actors.meshDst.ip, port: APP_PORT } } : {}),
    };
    const m: MatrixOptions = {
      paths: o.paths,
      workloads: o.workloads.filter((w) => w !== 'dns'),
      placements: o.placements,
      rounds: o.rounds,
      warmup: o.warmup,
      seconds: o.seconds,
      connections: o.connections,
      wrkScript: wrkScript(dir),
      shim: await buildTransparentShim(dir),
      dir,
      profile: o.profile ?? false,
      cpus,
      ...(o.maxRounds !== undefined ? { maxRounds: o.maxRounds } : {}),
      ...(o.maxMinutes !== undefined ? { maxMinutes: o.maxMinutes } : {}),
      ...(o.aaTolerance !== undefined ? { aaTolerance: o.aaTolerance } : {}),
    };
    const obs = {
      sample: (s: Sample) => samples.push(s),
      rounds: (v: AaVerdict) => (aa ??= v), // the sink phase's; the e2e phase runs fixed rounds
      loader: (c: readonly number[], r: readonly number[]) => {
        coldStarts.push(...c);
        rss.push(...r.map((k) => k / 1024));
      },
    };
    log.info({ prefix: tb.prefix, paths: o.paths, workloads: o.workloads, rounds: o.rounds }, 'bench: sink phase');
    await runSinkPhase(tb, ctx, m, obs);
    if (o.workloads.includes('dns')) {
      if (inpod) await runDnsPhase(tb, ctx, m, obs);
      else notes.push("DNS workload skipped: DNS capture is the inpod topology's (--topology inpod).");
    }

    if (o.controlPlane) {
      log.info('bench: control plane');
      if (inpod) {
        // An inpod pod enters the map only once captured: its ztunnel listeners must be there.
        const sink = await startHttpSink(tb, m);
        try {
          controlPlane.podChangeMs = summarizePodChange(
            await measurePodChange(ctx, node1, actors.meshClient, o.podChanges, idle),
          );
          controlPlane.podChangeWatchMs = summarizePodChange(
            await measurePodChangeWatch(ctx, node1, actors.meshClient, o.podChanges, idle),
          );
        } finally {
          await sink.stop();
        }
      } else {
        // ztunnel ready, as on a real node: its listeners (the HTTP sink's) are in ztunnel's netns.
        const sink = await startHttpSink(tb, m);
        try {
          controlPlane.podChangeMs = summarizePodChange(
            await measurePodChange(ctx, node1, actors.meshDst, o.podChanges),
          );
          controlPlane.podChangeWatchMs = summarizePodChange(
            await measurePodChangeWatch(ctx, node1, actors.meshDst, o.podChanges),
          );
        } finally {
          await sink.stop();
        }
      }
      controlPlane.reconcile = await measureReconcile(tb, o.reconcileSizes);
    }

    const httpWorkloads = o.workloads.filter((w) => w === 'connections' || w === 'latency');
    if (o.e2e && httpWorkloads.length > 0) {
      log.info('bench: end to end through the ztunnel stand-in');
      tb.writePodsList(podsFile);
      await startStandIns(tb);
      try {
        const captured = inpod ? tb.pods.filter((p) => p.mesh) : [];
        const { probe: _sinkProbe, ...e2eCtx } = ctx; // the sink phase's probe target is not the stand-ins'
        await runE2ePhase(
          tb,
          { ...e2eCtx, loaderNodes: tb.nodes, captured },
          {
            ...m,
            workloads: httpWorkloads,
            maxRounds: o.rounds,
            placements: o.placements.filter((p) => p !== 'same-node-v6'),
          },
          obs,
        );
        if (o.placements.includes('same-node-v6'))
          notes.push('same-node-v6 is measured in the sink phase only (the end-to-end phase runs IPv4).');
      } finally {
        await stopStandIns(tb);
      }
    } else if (o.e2e) {
      notes.push('End-to-end phase skipped: it runs the HTTP workloads (connections, latency) and none was requested.');
    }
  } catch (err) {
    // The run dir goes with the testbed: keep its logs (loaders, sinks) where the results would be.
    const logs = join(o.outDir, 'logs');
    try {
      cpSync(join(tb.info.runDir, 'bench'), logs, { recursive: true });
      log.error({ logs }, 'bench failed; its logs are kept');
    } catch (e) {
      log.warn({ err: e }, "could not keep the failed run's logs");
    }
    throw err;
  } finally {
    stats?.close();
    await tb.down();
  }

  if (o.controlPlane) checkDist('control plane');
  if (inpod && o.controlPlane && (o.scalePods ?? 0) > 0) {
    log.info({ pods: o.scalePods }, 'bench: the loader at node scale, with ZDS');
    controlPlane.scale = await measureScale({
      pods: o.scalePods ?? 0,
      changes: o.podChanges,
      idleSeconds: o.quick ? 2 : SAFETY_NET_MS / 1000,
      ...(o.prefix ? { prefix: o.prefix } : {}),
    });
  }
  if (coldStarts.length > 0) {
    const s = spread(coldStarts);
    controlPlane.coldStartMs = { samples: coldStarts, median: s.median, min: s.min, max: s.max };
  }
  if (rss.length > 0) controlPlane.rssMiB = { samples: rss, median: spread(rss).median, max: Math.max(...rss) };
  notes.push(...topologyNotes(o.topology));
  if (fromSources.size > 0) {
    notes.push(
      `The loaders of this run's ${[...fromSources].join(' and ')} phase ran from the TypeScript sources (dist/ did not match src/, or AMBPF_FROM_SOURCE or coverage asked for them): their RSS and cold start include Node's type stripper (~12 MiB at 250 pods). Run \`make js\` first and leave src/ alone while the bench runs.`,
    );
  }
  if (o.profile) {
    notes.push(
      "--profile: the kernel's BPF run-time statistics were on for the whole run (held by BPF_ENABLE_STATS, released at the end; kernel.bpf_stats_enabled itself untouched). They add two clock reads to every program run, so a profiled run's end-to-end figures are a little lower than an unprofiled one's; ns per request counts the programs of the path's loaders only (maps pinned in their bpffs dirs), summed over nodes.",
    );
  }

  const results: BenchResults = {
    version: 1,
    command: o.command,
    config: {
      topology: o.topology,
      paths: o.paths,
      workloads: o.workloads,
      placements: o.placements,
      rounds: o.rounds,
      warmup: o.warmup,
      seconds: o.seconds,
      e2e: o.e2e,
      controlPlane: o.controlPlane,
      quick: o.quick,
      profile: o.profile ?? false,
      ...(o.maxRounds !== undefined ? { maxRounds: o.maxRounds } : {}),
      ...(o.maxMinutes !== undefined ? { maxMinutes: o.maxMinutes } : {}),
      ...(o.aaTolerance !== undefined ? { aaTolerance: o.aaTolerance } : {}),
    },
    machine,
    startedAt,
    finishedAt: new Date().toISOString(),
    samples,
    summary: summarize(samples, o.paths),
    ...(o.profile ? { profile: profileRows(samples, clockNsPerRun) } : {}),
    ...(clockNsPerRun !== undefined ? { profileClockNsPerRun: clockNsPerRun } : {}),
    ...(aa ? { aa } : {}),
    cpus: cpus.note,
    controlPlane,
    notes,
  };
  return { results, files: await writeOutputs(o.outDir, results) };
}

/** The median of three statsCostPerRunNs; undefined (logged) when it cannot be measured. */
function statsClockNsPerRun(): number | undefined {
  try {
    const m = median([0, 1, 2].flatMap(() => statsCostPerRunNs() ?? []));
    return Number.isFinite(m) ? m : undefined;
  } catch (err) {
    log.warn({ err: String(err) }, "--profile: could not measure an empty program's run time");
    return undefined;
  }
}

/** How to read the placements and paths of this topology (results.md's notes). */
function topologyNotes(topology: BenchConfig['topology']): string[] {
  const common = [
    'TIME_WAIT sockets are destroyed (ss -K) in every netns of a cell before it runs; conntrack is not flushed (no conntrack tool on the machine).',
  ];
  if (topology === 'inpod') {
    return [
      "Sink phase (inpod): nginx (1 KiB answers) and iperf3 listen on 15001/15006/15008 inside the mesh pod app1-node1's netns, held by ztunnel's pod cgroup (where in-pod ztunnel listens; the loader captures only listeners held by ztunnel), with the same LD_PRELOAD on every path; the other mesh pods are opted out during the sink phase (no listeners there).",
      "same-node = the mesh pod's outbound connection (to another pod's IP) captured to its own IP:15001 in its own netns (direct = a plain loopback connection to 127.0.0.1:15001: the floor); cross-node = a non-mesh pod on node 2 reaching the mesh pod, captured inside the pod to its 15006 (direct = the client addressing pod-IP:15006 itself).",
      "same-node-v6 = same-node over native IPv6: every pod is dual-stack (fd00:a3bf::/32), the sinks listen on [::] for both families as ztunnel does, and the mesh pod connects to the other pod's IPv6 address, captured to [its IPv6]:15001 (ebpf: connect6; iptables: the ip6tables twin of the REDIRECT; nftables: the inet tables) (direct = [::1]:15001).",
      "iptables = Istio's golden in-pod rules, complete, installed by the baseline agent (istio-cni's role) on each node with a loader (nat REDIRECT to 15001/15006, DNS to 15053, raw conntrack zones, connmark 0x111 policy route; v4 and v6) in every mesh pod, plus the node's probe SNAT; nftables = the same as Istio 1.28's native nftables tables (inet istio-ambient-nat/-mangle/-raw); ebpf = ambpf run --mode inpod (connect4 to the pod's own IP:15001, getsockopt, sk_lookup to 15006 in the pod's netns).",
      "End-to-end phase: through the ztunnel stand-in running in every mesh pod's netns (HBONE between pods); direct = the same client reaching the destination nginx with nothing installed.",
      ...common,
    ];
  }
  return [
    "Sink phase: nginx (1 KiB answers) and iperf3 listen on ztunnel's ports 15001/15006/15008 in node 1's ztunnel pod, with an LD_PRELOAD that sets IP_TRANSPARENT (TPROXY needs it); direct = the client addresses ztunnel's IP and port itself.",
    "same-node = a mesh pod's outbound connection captured to its own node's ztunnel (15001); cross-node = a non-mesh pod on node 2 reaching a mesh pod on node 1, captured inbound and steered to 15006.",
    'End-to-end phase: through the ztunnel stand-in (HBONE between the two halves); direct = the same client reaching the destination nginx with nothing installed.',
    ...common,
  ];
}

/** results.json, one SVG per workload, results.md (which links the SVGs). */
export async function writeOutputs(outDir: string, results: BenchResults): Promise<string[]> {
  mkdirSync(outDir, { recursive: true });
  const files: string[] = [];
  const jsonPath = join(outDir, 'results.json');
  writeFileSync(jsonPath, JSON.stringify(results, null, 2) + '\n');
  files.push(jsonPath);
  const charts: string[] = [];
  for (const w of results.config.workloads) {
    const spec = chartSpec(w, results.summary);
    if (!spec) continue;
    const name = `bench-${w}.svg`;
    writeFileSync(join(outDir, name), await renderSvg(spec));
    charts.push(name);
    files.push(join(outDir, name));
  }
  const mdPath = join(outDir, 'results.md');
  writeFileSync(mdPath, resultsMarkdown(results, charts));
  files.push(mdPath);
  return files;
}
