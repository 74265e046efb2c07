// The shapes of a benchmark run and of results.json (the contract of `ambpf bench --out`).
import type { Spread } from './stats.ts';
import type { AaVerdict } from './aa.ts';

/**
 * `direct-aa` is the A/A control: `direct` measured a second time in the same round, so its ratio to
 * `direct` shows how far two identical paths drift apart on this machine (the noise floor of every
 * other ratio). Not in the default set.
 */
export const PATHS = ['direct', 'direct-aa', 'iptables', 'nftables', 'ebpf', 'ebpf-splice'] as const;
export type PathName = (typeof PATHS)[number];

/** Istio's own paths (the baselines the eBPF paths are judged against). */
export const ISTIO_PATHS: readonly PathName[] = ['iptables', 'nftables'];

/** Paths that install nothing and address ztunnel's port themselves. */
export const isDirect = (p: PathName): boolean => p === 'direct' || p === 'direct-aa';

/** dns: queries per second to ztunnel's DNS port (inpod only; src/bench/dns.ts). */
export const WORKLOADS = ['connections', 'latency', 'bulk-1k', 'bulk-16k', 'bulk-128k', 'dns'] as const;
export type WorkloadName = (typeof WORKLOADS)[number];

/**
 * same-node: a mesh pod's outbound connection captured to its own node's ztunnel (15001), where the
 * splice can apply. cross-node: a client on the other node reaching a mesh pod, captured inbound at
 * the pod's node and steered to its ztunnel (15006). same-node-v6: same-node over native IPv6 (a
 * dual-stack mesh pod's connect to another pod's IPv6 address, captured to [its IPv6]:15001; inpod
 * only, the topology whose datapath captures IPv6).
 */
export const PLACEMENTS = ['same-node', 'cross-node', 'same-node-v6'] as const;
export type Placement = (typeof PLACEMENTS)[number];

/** The placements a topology measures (and the default of `--placements`). */
export const topologyPlacements = (topology: 'node' | 'inpod'): readonly Placement[] =>
  topology === 'inpod' ? PLACEMENTS : PLACEMENTS.filter((p) => p !== 'same-node-v6');

/** sink: raw servers on ztunnel's ports (the redirect alone); e2e: through the ztunnel stand-in. */
export type Phase = 'sink' | 'e2e';

export interface MetricInfo {
  readonly unit: string;
  readonly higherIsBetter: boolean;
  readonly label: string;
}

/** Every metric a cell can report. */
export const METRICS: Readonly<Record<string, MetricInfo>> = {
  connPerSec: { unit: 'conn/s', higherIsBetter: true, label: 'new connections per second' },
  reqPerSec: { unit: 'req/s', higherIsBetter: true, label: 'requests per second' },
  p50us: { unit: 'µs', higherIsBetter: false, label: 'latency p50' },
  p99us: { unit: 'µs', higherIsBetter: false, label: 'latency p99' },
  p999us: { unit: 'µs', higherIsBetter: false, label: 'latency p99.9' },
  gbps: { unit: 'Gbit/s', higherIsBetter: true, label: 'throughput' },
  qps: { unit: 'queries/s', higherIsBetter: true, label: 'DNS queries per second' },
  avgUs: { unit: 'µs', higherIsBetter: false, label: 'latency average' },
  retransmits: { unit: 'segments', higherIsBetter: false, label: 'TCP retransmits' },
  clientCpuUsPerReq: { unit: 'µs CPU/req', higherIsBetter: false, label: 'client pod CPU per request' },
  serverCpuUsPerReq: { unit: 'µs CPU/req', higherIsBetter: false, label: 'server pod CPU per request' },
};

/** The metric charts and the headline column use, per workload. */
export const PRIMARY_METRIC: Readonly<Record<WorkloadName, string>> = {
  connections: 'connPerSec',
  latency: 'p99us',
  'bulk-1k': 'gbps',
  'bulk-16k': 'gbps',
  'bulk-128k': 'gbps',
  dns: 'qps',
};

/** One program's cost over one cell (`--profile`): kernel run-time statistics deltas. */
export interface ProgCost {
  /** Program name, or 'all' for the sum of the path's programs. */
  readonly prog: string;
  readonly runs: number;
  readonly ns: number;
  readonly nsPerRun: number;
  /** Per request (HTTP workloads; a request is a connection for `connections`). */
  readonly runsPerReq?: number;
  readonly nsPerReq?: number;
}

/** `--profile`: one program's cost in one cell, over the measured rounds. */
export interface ProfileRow {
  readonly phase: Phase;
  readonly placement: Placement;
  readonly workload: WorkloadName;
  readonly path: PathName;
  readonly prog: string;
  readonly nsPerRun: Spread;
  readonly runsPerReq?: Spread;
  readonly nsPerReq?: Spread;
  /** nsPerReq less, for each run, what an empty program measures (BenchResults.profileClockNsPerRun). */
  readonly netNsPerReq?: Spread;
  /** The cell's primary metric (connPerSec, p99us, gbps): the end-to-end figure beside it. */
  readonly primary: { readonly metric: string; readonly value: Spread };
}

/** One measurement: one path, one workload, one placement, one round. */
export interface Sample {
  readonly phase: Phase;
  readonly round: number;
  readonly warmup: boolean;
  readonly path: PathName;
  readonly workload: WorkloadName;
  readonly placement: Placement;
  readonly metrics: Readonly<Record<string, number>>;
  /** Socket errors, non-2xx answers: a cell with errors is reported, never silently averaged. */
  readonly errors: number;
  /** `--profile`, eBPF paths: what each program cost over this cell. */
  readonly profile?: readonly ProgCost[];
}

export interface SummaryRow {
  readonly phase: Phase;
  readonly placement: Placement;
  readonly workload: WorkloadName;
  readonly metric: string;
  readonly path: PathName;
  readonly median: number;
  readonly min: number;
  readonly max: number;
  readonly n: number;
  /** path / direct, computed per round then summarised; absent for direct itself or without direct. */
  readonly ratio?: { readonly median: number; readonly min: number; readonly max: number; readonly n: number };
}

export interface Machine {
  readonly kernel: string;
  readonly cpuModel: string;
  readonly cores: number;
  readonly memoryMiB: number;
  readonly hostname: string;
  readonly date: string;
  readonly tools: Readonly<Record<string, string>>;
}

export interface ControlPlaneResults {
  /** pods file edit -> ambpf_pods entry present (or gone), ms per change. */
  readonly podChangeMs?: {
    readonly samples: readonly number[];
    readonly p50: number;
    readonly p99: number;
    readonly max: number;
  };
  /** The same through a Kubernetes watch (the testbed's API server, `ambpf run --kubeconfig`). */
  readonly podChangeWatchMs?: {
    readonly samples: readonly number[];
    readonly p50: number;
    readonly p99: number;
    readonly max: number;
  };
  /** Pure reconcile (desired state + target + plan) and the map write of N pods, ms. */
  readonly reconcile?: ReadonlyArray<{
    readonly pods: number;
    readonly planMs: number;
    readonly writeMs: number;
    readonly totalMs: number;
  }>;
  /** `ambpf run` start -> /readyz answers 200, ms (objects prebuilt in the cache). */
  readonly coldStartMs?: {
    readonly samples: readonly number[];
    readonly median: number;
    readonly min: number;
    readonly max: number;
  };
  /** Loader RSS after its workloads ran, MiB. */
  readonly rssMiB?: { readonly samples: readonly number[]; readonly median: number; readonly max: number };
  /** inpod: the loader at node scale with ZDS (src/bench/scale.ts). */
  readonly scale?: ScaleResults;
}

export interface ScaleResults {
  readonly pods: number;
  /** Loader start -> every pod captured (armed, ZDS Add acked, listeners registered), ms. */
  readonly captureAllMs: number;
  /** Loader VmRSS the moment every pod is captured (the burst of passes and ZDS acks just ended), MiB. */
  readonly rssMiB: number;
  /** Loader VmRSS at the end of the idle window, once it gave back what the burst left (run's idle trim), MiB. */
  readonly rssIdleMiB?: number;
  /** Loader CPU over idleSeconds with nothing changing, % of one core. */
  readonly idleCpuPct: number;
  readonly idleSeconds: number;
  /** Pod label change in the pods file -> released, or captured and acked again (ZDS included), ms. */
  readonly podChangeMs: {
    readonly samples: readonly number[];
    readonly p50: number;
    readonly p99: number;
    readonly max: number;
  };
}

export interface BenchConfig {
  readonly topology: 'node' | 'inpod';
  readonly paths: readonly PathName[];
  readonly workloads: readonly WorkloadName[];
  readonly placements: readonly Placement[];
  readonly rounds: number;
  readonly warmup: boolean;
  readonly seconds: number;
  readonly e2e: boolean;
  readonly controlPlane: boolean;
  readonly quick: boolean;
  /** Kernel BPF run-time statistics on for the run, per-program cost per cell. */
  readonly profile?: boolean;
  /** With direct-aa among the paths: more sink rounds, up to this many, until the A/A median of every
   * claimed row is within aaTolerance (src/bench/aa.ts). Default: rounds (no extra rounds). */
  readonly maxRounds?: number;
  /** ... and stop adding rounds once the sink phase has run this long. */
  readonly maxMinutes?: number;
  readonly aaTolerance?: number;
  /** false: client, server and loader are not pinned to CPUs (src/bench/cpus.ts). Default true. */
  readonly pin?: boolean;
}

export interface BenchResults {
  readonly version: 1;
  readonly command: string;
  readonly config: BenchConfig;
  readonly machine: Machine;
  readonly startedAt: string;
  readonly finishedAt: string;
  readonly samples: readonly Sample[];
  readonly summary: readonly SummaryRow[];
  readonly controlPlane: ControlPlaneResults;
  /** Things the run could not measure, in words (a missing datapath, a skipped workload). */
  readonly notes: readonly string[];
  /** `--profile`: medians over rounds of each program's cost per cell (src/bench/profile.ts). */
  readonly profile?: readonly ProfileRow[];
  /** --profile: what an empty program measures per run on this machine (run_time_ns / run_cnt,
   * src/libbpf/stats.ts statsCostPerRunNs): the part of every measured run that is not the program's. */
  readonly profileClockNsPerRun?: number;
  /** How many sink rounds ran and whether the A/A control got within its tolerance (src/bench/aa.ts). */
  readonly aa?: AaVerdict;
  /** Where client, server and loader ran (src/bench/cpus.ts). */
  readonly cpus?: string;
}
