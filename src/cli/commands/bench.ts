// `ambpf bench`: the benchmark of docs/architecture.md "Testbed and benchmark" in one command (src/bench). Parses and checks the
// flags, runs the harness, prints where the results went. SIGINT/SIGTERM take the testbed down
// before exiting, so an interrupted run leaves nothing behind.
import { parseArgs } from 'node:util';
import type { Command } from '../command.ts';
import { UsageError } from '../../errors.ts';
import {
  PATHS,
  PLACEMENTS,
  WORKLOADS,
  topologyPlacements,
  type PathName,
  type Placement,
  type WorkloadName,
} from '../../bench/types.ts';

const USAGE = `Usage: ambpf bench [--topology node|inpod] [--paths direct,iptables,nftables,ebpf,ebpf-splice,direct-aa] [--out DIR]
                   [--rounds N] [--seconds S] [--quick] [--workloads W,..] [--placements P,..]
                   [--no-e2e] [--no-control-plane] [--no-warmup] [--connections N] [--prefix P] [--profile]
                   [--max-rounds N] [--max-minutes M] [--scale-pods N] [--no-pin]

Builds a two-node testbed in network namespaces, puts nginx and iperf3 on ztunnel's ports (node:
in ztunnel's pod; inpod: inside the mesh pod's netns, held by ztunnel), and measures every path side
by side, interleaved round by round (path order rotated each round):
  direct          the client connects straight to ztunnel's port (the floor; inpod: loopback)
  direct-aa       direct again in the same round: the A/A control (its ratio is the noise; opt-in)
  iptables        Istio's iptables rules for the topology (inpod: the in-pod rules)
  nftables        Istio 1.28's native nftables in-pod rules (inpod only; default paths: inpod)
  ebpf            ambpf run (--mode inpod on inpod; the default config, no splice)
  ebpf-splice     ambpf run --splice (adds the sockops/sk_msg sockhash splice; default paths: node only)
Workloads: connections (wrk, Connection: close), latency (wrk kept-alive, p50/p99/p99.9, 1 KiB),
bulk-1k, bulk-16k, bulk-128k (iperf3 -l), dns (inpod: dnsperf queries/s to ztunnel's 15053, Istio's DNS
capture vs ambpf's vs the client asking 15053 itself); CPU per request from the pods' cgroup cpu.stat.
Placements: same-node (outbound capture; inpod: the pod's own outbound over loopback),
cross-node (inbound capture of a client on the other node, to 15006) and, inpod only (its default),
same-node-v6 (same-node over native IPv6: dual-stack pods, captured to [pod IPv6]:15001).
Then the control plane (pod change -> map entry, reconcile of 1,000/10,000 pods, cold start, RSS)
and an end-to-end run through the ztunnel stand-in.

Options:
  --topology node|inpod   where ztunnel listens (default node)
  --out DIR               where results.json, results.md and the SVG charts go (default ./bench-out)
  --rounds N              measured rounds (default 5; a warm-up round comes first)
  --seconds S             seconds per cell (default 3; --quick: 1)
  --quick                 1 round, 1 s cells, no warm-up, 1,000-pod reconcile, 4 pod changes
  --max-rounds N          with direct-aa among the paths: after --rounds, more sink rounds (up to N)
                          until the A/A median of every claimed row (conn/s, req/s, Gbit/s) is within
                          ±3 %; results.md says when it never got there (default: --rounds, no extra)
  --max-minutes M         stop adding rounds once the sink phase has run M minutes (default 60)
  --no-pin                leave client, sinks and loader to the scheduler (default: pinned with
                          taskset to CPUs of their own; on 2 CPUs the client alone on the second)
  --scale-pods N          inpod control plane: a one-node testbed with N mesh pods and the ztunnel
                          stand-in over ZDS: time to capture all, loader RSS and idle CPU, pod change
                          -> captured and acked p50/p99 (default 249: 250 pods on the node with
                          ztunnel's; --quick 10; 0 skips it)
  --profile               the kernel's BPF run-time statistics on for the run: per eBPF program and
                          cell, ns and runs per request (run_time_ns / run_cnt deltas), in
                          results.json and results.md beside the end-to-end figures
`;

function list<T extends string>(
  flag: string,
  value: string | undefined,
  allowed: readonly T[],
  fallback: readonly T[],
): T[] {
  if (value === undefined) return [...fallback];
  const items = value
    .split(',')
    .map((v) => v.trim())
    .filter(Boolean);
  if (items.length === 0) throw new UsageError(`--${flag} needs at least one of ${allowed.join(', ')}`);
  for (const i of items)
    if (!(allowed as readonly string[]).includes(i))
      throw new UsageError(`--${flag}: '${i}' is not one of ${allowed.join(', ')}`);
  return [...new Set(items)] as T[];
}

function positiveInt(flag: string, value: string | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > 1000)
    throw new UsageError(`--${flag} must be a whole number from 1 to 1000, not '${value}'`);
  return n;
}

export const command: Command = {
  summary: 'benchmark eBPF vs iptables vs direct on the testbed',
  usage: USAGE,
  async run(argv) {
    const { values } = parseArgs({
      args: [...argv],
      options: {
        topology: { type: 'string', default: 'node' },
        paths: { type: 'string' },
        workloads: { type: 'string' },
        placements: { type: 'string' },
        out: { type: 'string', default: 'bench-out' },
        rounds: { type: 'string' },
        seconds: { type: 'string' },
        connections: { type: 'string' },
        quick: { type: 'boolean', default: false },
        'no-e2e': { type: 'boolean', default: false },
        'no-control-plane': { type: 'boolean', default: false },
        'no-warmup': { type: 'boolean', default: false },
        prefix: { type: 'string' },
        profile: { type: 'boolean', default: false },
        'max-rounds': { type: 'string' },
        'max-minutes': { type: 'string' },
        'scale-pods': { type: 'string' },
        'no-pin': { type: 'boolean', default: false },
      },
      strict: true,
      allowPositionals: false,
    });
    if (values.topology !== 'node' && values.topology !== 'inpod')
      throw new UsageError(`--topology must be node or inpod, not '${values.topology}'`);
    if (values.prefix !== undefined && !/^[a-z0-9]{1,8}$/.test(values.prefix))
      throw new UsageError(`--prefix must be 1-8 lowercase letters or digits, not '${values.prefix}'`);
    const quick = values.quick;
    // The splice is opt-in and measured on the node topology; inpod compares the three paths of issue 11.
    const defaultPaths: readonly PathName[] =
      values.topology === 'inpod'
        ? ['direct', 'iptables', 'nftables', 'ebpf']
        : ['direct', 'iptables', 'ebpf', 'ebpf-splice'];
    const paths: PathName[] = list('paths', values.paths, PATHS, defaultPaths);
    if (values.topology === 'node' && paths.includes('nftables'))
      throw new UsageError("--paths: nftables is Istio's in-pod backend; use it with --topology inpod");
    const workloads: WorkloadName[] = list('workloads', values.workloads, WORKLOADS, WORKLOADS);
    const placements: Placement[] = list(
      'placements',
      values.placements,
      PLACEMENTS,
      topologyPlacements(values.topology),
    );
    if (values.topology === 'node' && placements.includes('same-node-v6'))
      throw new UsageError('--placements: same-node-v6 is measured on the inpod topology; use --topology inpod');
    const rounds = positiveInt('rounds', values.rounds, quick ? 1 : 5);
    const seconds = positiveInt('seconds', values.seconds, quick ? 1 : 3);
    const maxRounds = positiveInt('max-rounds', values['max-rounds'], rounds);
    if (maxRounds < rounds) throw new UsageError(`--max-rounds (${maxRounds}) must be at least --rounds (${rounds})`);
    const maxMinutes = positiveInt('max-minutes', values['max-minutes'], 60);
    if (seconds > 60) throw new UsageError('--seconds must be at most 60: every load is bounded');

    const { runBench } = await import('../../bench/index.ts');
    let testbed: { down(): Promise<void> } | undefined;
    const onSignal = (signal: NodeJS.Signals): void => {
      process.stderr.write(`ambpf bench: ${signal}, taking the testbed down\n`);
      void (testbed?.down() ?? Promise.resolve()).finally(() => process.exit(130));
    };
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
    try {
      const { results, files } = await runBench({
        topology: values.topology,
        paths,
        workloads,
        placements,
        rounds,
        seconds,
        quick,
        warmup: !quick && !values['no-warmup'],
        profile: values.profile,
        maxRounds,
        maxMinutes,
        pin: !values['no-pin'],
        scalePods: values['scale-pods'] === '0' ? 0 : positiveInt('scale-pods', values['scale-pods'], quick ? 10 : 249),
        e2e: !values['no-e2e'],
        controlPlane: !values['no-control-plane'],
        outDir: values.out,
        command: ['ambpf', 'bench', ...argv].join(' '),
        podChanges: quick ? 4 : 40,
        reconcileSizes: quick ? [1000] : [1000, 10000],
        connections: positiveInt('connections', values.connections, 8),
        ...(values.prefix ? { prefix: values.prefix } : {}),
        onTestbed: (tb) => (testbed = tb),
      });
      for (const f of files) process.stdout.write(`${f}\n`);
      const failed = results.samples.filter((s) => s.errors > 0).length;
      if (failed > 0)
        process.stderr.write(`ambpf bench: ${failed} cell(s) had socket or HTTP errors; see results.md\n`);
      return 0;
    } finally {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    }
  },
};
