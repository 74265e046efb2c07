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
import { fileURLToPath } from 'node:url';
import type { Testbed } from '../testbed/testbed.ts';
import type { TestbedNode, TestbedPod } from '../testbed/types.ts';
import type { TestbedProcess } from '../testbed/exec.ts';
import { installPath, removePath, type Backend } from '../baseline/index.ts';
import { startBaselineAgents } from '../baseline/launch.ts';
import { BenchError } from './errors.ts';
import { logger } from '../log.ts';
import type { PathName } from './types.ts';
import { pinned, type CpuPlan } from './cpus.ts';

const log = logger('bench');
const AMBPF = fileURLToPath(new URL('../../bin/ambpf', import.meta.url));
/** The loader's health port inside each node's netns (the netns is ours, so a fixed port is safe). */
export const LOADER_PORT = 15099;

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
  readonly probe?: { readonly from: TestbedPod; readonly ip: string; readonly port: number };
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

/** Polls /readyz from inside the node's netns, bounded (30 s), in one shell so polling costs no spawns. */
async function waitReady(ctx: PathContext, node: TestbedNode, proc: TestbedProcess): Promise<void> {
  const script = `for i in $(seq 1 3000); do curl -fs -o /dev/null --max-time 1 http://127.0.0.1:${LOADER_PORT}/readyz && exit 0; sleep 0.01; done; exit 1`;
  let exited = false;
  void proc.exited.then(() => (exited = true));
  const r = await ctx.tb.exec(node, ['sh', '-c', script], { check: false, timeoutMs: 40_000 });
  if (r.code !== 0 || exited)
    throw new BenchError(
      `ambpf run on ${node.name} did not become ready (see ${ctx.logDir}/ambpf-run-${node.name}.log)`,
      { node: node.name },
    );
}

/**
 * The loader copies ztunnel's 15006/15008 listeners into ambpf_zt_listen during its first
 * reconcile; inbound cells need both slots filled. Bounded wait (10 s). The sinks are started
 * before the loader and never swapped under it (a swap is only noticed by its 30 s full resync).
 */
async function waitListenersCopied(node: TestbedNode, procs: readonly TestbedProcess[]): Promise<void> {
  const { openPinnedMaps } = await import('../bpf/datapath.ts');
  const { LISTENER_INBOUND, LISTENER_HBONE, encodeU32Key } = await import('../bpf/schema.ts');
  const deadline = Date.now() + 10_000;
  for (;;) {
    const maps = openPinnedMaps(node.bpffsDir);
    let count = 0;
    try {
      // A SOCKMAP's next-key walks every slot, filled or not: look each slot up instead.
      for (const slot of [LISTENER_INBOUND, LISTENER_HBONE])
        if (maps.raw.ambpf_zt_listen.lookup(encodeU32Key(slot)) !== undefined) count++;
    } finally {
      maps.close();
    }
    if (count >= 2) return;
    if (Date.now() > deadline || procs.some((p) => p.child.exitCode !== null)) {
      throw new BenchError(`ambpf run on ${node.name} did not pick up the sinks' listeners within 10 s`, {
        node: node.name,
      });
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * inpod: every pod in `pods` has its ambpf_pods entry on its node's loader, which the loader writes
 * only after attaching the pod's sk_lookup and lending it ztunnel's listeners. Bounded (10 s).
 */
/** Whether `probe.from` connecting to probe.ip:port is accepted now ('' if so, else why not). */
async function probeFails(tb: Testbed, probe: NonNullable<PathContext['probe']>): Promise<string> {
  const script = `import socket; socket.create_connection(("${probe.ip}", ${probe.port}), 2).close()`;
  const r = await tb.exec(probe.from, ['python3', '-c', script], { check: false, timeoutMs: 10_000 });
  return r.code === 0 ? '' : (r.stderr.trim().split('\n').at(-1) ?? `exit ${r.code}`);
}

/** How long a capture may take to settle: a bound on a hang on a busy machine, not a speed claim. */
const CAPTURE_SETTLE_MS = 30_000;

async function waitCaptured(
  tb: Testbed,
  pods: readonly TestbedPod[],
  procs: readonly TestbedProcess[],
  probe: PathContext['probe'],
): Promise<void> {
  const { openPinnedMaps } = await import('../bpf/datapath.ts');
  const deadline = Date.now() + CAPTURE_SETTLE_MS;
  for (;;) {
    const missing = pods.filter((pod) => {
      const maps = openPinnedMaps(tb.node(pod.node).bpffsDir);
      try {
        return maps.pods.get(pod.ip) === undefined;
      } finally {
        maps.close();
      }
    });
    const why = missing.length === 0 && probe ? await probeFails(tb, probe) : '';
    if (missing.length === 0 && why === '') return;
    if (Date.now() > deadline || procs.some((p) => p.child.exitCode !== null)) {
      if (missing.length === 0)
        throw new BenchError(
          `${probe?.from.name}'s connect to ${probe?.ip}:${probe?.port} is not redirected ${CAPTURE_SETTLE_MS / 1000} s after its capture: ${why}`,
        );
      throw new BenchError(
        `ambpf run --mode inpod did not capture ${missing.map((p) => p.name).join(', ')} within ${CAPTURE_SETTLE_MS / 1000} s (are the sinks held by ztunnel's pod?)`,
        { pods: missing.map((p) => p.name).join(',') },
      );
    }
    await new Promise((r) => setTimeout(r, 20));
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
      const argv = [
        AMBPF,
        'run',
        '--node',
        node.name,
        ...(ctx.kubeconfig ? ['--kubeconfig', ctx.kubeconfig] : ['--pods-file', ctx.podsFile]),
        '--bpffs',
        node.bpffsDir,
        '--cgroup',
        node.kubepodsCgroup,
        '--listen',
        `127.0.0.1:${LOADER_PORT}`,
        '--state-file',
        join(ctx.logDir, `state-${node.name}.json`),
        '--node-ip',
        node.wireIp,
        '--resync-ms',
        '200',
      ];
      if (splice) argv.push('--splice');
      // The testbed's topology; inpod without ZDS until the bench runs the per-node ZDS stand-in.
      argv.push('--mode', ctx.tb.info.topology);
      if (ctx.tb.info.topology === 'inpod') argv.push('--zds-socket', 'none');
      const started = performance.now();
      const proc = ctx.tb.spawn(node, pinned(ctx.cpus, 'loader', argv), {
        logFile: join(ctx.logDir, `ambpf-run-${node.name}.log`),
        env: { ...process.env, AMBPF_LOG_FORMAT: 'json' },
      });
      procs.push(proc);
      await waitReady(ctx, node, proc);
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
