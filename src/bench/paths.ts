// Bringing one redirection path up and down on the testbed, for one slot of one round:
//   direct         nothing installed (the client addresses ztunnel's port itself: the floor)
//   direct-aa      the same again (the A/A control)
//   iptables       Istio's rules for the topology (src/baseline; inpod: the baseline agent installs them,
//                  one per loader node, as istio-cni's node agent does)
//   nftables       Istio 1.28's native nftables in-pod rules (the baseline agent; inpod only)
//   ebpf           `ambpf run` on the node(s), from the pods file (`--mode inpod` on an inpod testbed)
//   ebpf-splice    the same with --splice (the sockhash splice, off by default)
// Each `down()` leaves the testbed as it found it: rules removed, loader stopped, pins and the
// policy route in ztunnel's netns removed.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Testbed } from '../testbed/testbed.ts';
import type { TestbedNode, TestbedPod } from '../testbed/types.ts';
import type { TestbedProcess } from '../testbed/exec.ts';
import { loaderArgs } from '../testbed/loader.ts';
import { installPath, removePath, type Backend } from '../baseline/index.ts';
import { startBaselineAgents } from '../baseline/launch.ts';
import { BenchError } from './errors.ts';
import { logger } from '../log.ts';
import type { PathName } from './types.ts';
import { pinned, type CpuPlan } from './cpus.ts';
import { waitCaptured, waitListenersCopied, waitReady, type Probe } from './readiness.ts';

const log = logger('bench');

export interface ActivePath {
  readonly name: PathName;
  /** `ambpf run` start -> /readyz 200, per loader (eBPF paths only). */
  readonly coldStartMs: readonly number[];
  /** Loader RSS now, KiB per loader (eBPF paths only). */
  rssKiB(): number[];
  /** Resolves once the path steers to the sinks running now (the loader re-copies new listeners). */
  settle(): Promise<void>;
  down(): Promise<void>;
}

export interface PathContext {
  readonly tb: Testbed;
  readonly podsFile: string;
  /** Nodes that run a loader on the eBPF paths. */
  readonly loaderNodes: readonly TestbedNode[];
  readonly logDir: string;
  /**
   * inpod: pods whose capture (ztunnel's listeners found in their netns, map entries written) an
   * eBPF path waits for before its cells run; a pod is only redirected once captured.
   */
  readonly captured?: readonly TestbedPod[];
  /**
   * inpod sink phase: a connect the eBPF path must redirect before its cells run (the same-node
   * cells' own client and destination); the map entry alone does not show the path carries traffic.
   */
  readonly probe?: Probe;
  /** The eBPF paths' loaders watch this API server (kubeconfig) instead of reading the pods file. */
  readonly kubeconfig?: string;
  /** Where the loaders run (cpus.ts); unpinned without. */
  readonly cpus?: CpuPlan;
}

function vmRssKiB(pid: number): number {
  try {
    const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m?.[1] ? Number(m[1]) : Number.NaN;
  } catch {
    return Number.NaN;
  }
}

async function stopLoader(proc: TestbedProcess): Promise<void> {
  proc.kill('SIGTERM');
  const timer = setTimeout(() => proc.kill('SIGKILL'), 10_000);
  await proc.exited;
  clearTimeout(timer);
}

async function removeLoaderState(tb: Testbed, node: TestbedNode): Promise<void> {
  // Imported lazily: only the eBPF paths need libbpf in this process.
  const { uninstallDatapath } = await import('../bpf/datapath.ts');
  const { removePolicyRoute } = await import('../bpf/datapath-ztunnel.ts');
  uninstallDatapath(node.bpffsDir);
  // The policy route is the node topology's (in ztunnel's netns); inpod makes none.
  if (tb.info.topology !== 'node') return;
  const z = tb.ztunnels.find((x) => x.node === node.name);
  if (z) await removePolicyRoute({ netnsPath: z.netnsPath, ifname: 'eth0', table: 100, pref: 100 });
}

async function startEbpf(ctx: PathContext, name: PathName, splice: boolean): Promise<ActivePath> {
  const procs: TestbedProcess[] = [];
  const coldStartMs: number[] = [];
  const down = async (): Promise<void> => {
    for (const p of procs) await stopLoader(p);
    for (const n of ctx.loaderNodes) await removeLoaderState(ctx.tb, n);
  };
  try {
    for (const node of ctx.loaderNodes) {
      // Leftovers of a crashed earlier slot would be adopted, not measured: start clean.
      await removeLoaderState(ctx.tb, node);
      // The testbed's `ambpf run` (inpod without ZDS until the bench runs the per-node ZDS stand-in),
      // re-checking unresolved pods more often than its default.
      const source = ctx.kubeconfig ? { kubeconfig: ctx.kubeconfig } : ctx.podsFile;
      const argv = loaderArgs(ctx.tb, node, source, ['--resync-ms', '200', ...(splice ? ['--splice'] : [])]);
      const started = performance.now();
      const proc = ctx.tb.spawn(node, pinned(ctx.cpus, 'loader', argv), {
        logFile: join(ctx.logDir, `ambpf-run-${node.name}.log`),
        env: { ...process.env, AMBPF_LOG_FORMAT: 'json' },
      });
      procs.push(proc);
      await waitReady(ctx.tb, node, proc, ctx.logDir);
      coldStartMs.push(performance.now() - started);
    }
  } catch (err) {
    await down().catch((e: unknown) => log.error({ err: e }, 'cleanup of a failed eBPF path start failed'));
    throw err;
  }
  const settle = async (): Promise<void> => {
    if (ctx.tb.info.topology === 'inpod') return waitCaptured(ctx.tb, ctx.captured ?? [], procs, ctx.probe);
    for (const n of ctx.loaderNodes) await waitListenersCopied(n, procs);
  };
  return { name, coldStartMs, rssKiB: () => procs.map((p) => vmRssKiB(p.pid)), settle, down };
}

/**
 * inpod: Istio's path as it runs on a node: the baseline agent on each loader node takes the pods
 * file, installs the in-pod rules in its mesh pods and the probe SNAT on the node, and removes them
 * all when stopped. No ZDS here (the bench's stand-ins find their pods by themselves).
 */
async function startBaselineAgent(ctx: PathContext, name: PathName & Backend): Promise<ActivePath> {
  const agents = await startBaselineAgents(ctx.tb, {
    backend: name,
    podsFile: ctx.podsFile,
    zdsSocket: () => undefined,
    nodes: ctx.loaderNodes,
    logDir: ctx.logDir,
  });
  const down = async (): Promise<void> => {
    const codes = await Promise.all(agents.map((a) => a.stop()));
    const bad = agents.filter((_, i) => codes[i] !== 0);
    if (bad.length > 0)
      throw new BenchError(
        `the baseline agent on ${bad.map((a) => a.node.name).join(', ')} did not remove its rules cleanly (see ${ctx.logDir})`,
      );
  };
  const settle = async (): Promise<void> => {
    for (const a of agents) {
      const want = (ctx.captured ?? []).filter((p) => p.node === a.node.name);
      await a.waitFor(
        (s) => s.ready && want.every((p) => s.pods.some((x) => x.uid === p.uid)),
        `${name} rules in ${want.map((p) => p.name).join(', ') || 'its pods'}`,
      );
    }
  };
  return { name, coldStartMs: [], rssKiB: () => [], settle, down };
}

export async function startPath(ctx: PathContext, name: PathName): Promise<ActivePath> {
  const none = { coldStartMs: [] as number[], rssKiB: () => [] as number[], settle: async () => undefined };
  switch (name) {
    case 'direct':
    case 'direct-aa':
      return { name, ...none, down: async () => undefined };
    case 'iptables':
    case 'nftables':
      if (ctx.tb.info.topology === 'inpod') return startBaselineAgent(ctx, name);
      await installPath(ctx.tb, name);
      return { name, ...none, down: () => removePath(ctx.tb, name) };
    case 'ebpf':
      return startEbpf(ctx, name, false);
    case 'ebpf-splice':
      return startEbpf(ctx, name, true);
  }
}
