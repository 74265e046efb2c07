// When an eBPF path is ready for its cells: the loader answers /readyz, the node topology's loader
// copied the sinks' listeners, an inpod capture is in the maps and a probe connect is redirected. A
// wait that times out says what the maps and the loader's state held then, so a failure seen once
// can be understood from its message.
import type { Testbed } from '../testbed/testbed.ts';
import type { TestbedNode, TestbedPod } from '../testbed/types.ts';
import type { TestbedProcess } from '../testbed/exec.ts';
import { LOADER_PORT, stateFilePath } from '../testbed/loader.ts';
import { podFlagWords } from '../status/flags.ts';
import { loadStateFile } from '../status/state-file.ts';
import { describeError } from '../errors.ts';
import { BenchError } from './errors.ts';

/** A connect the eBPF path must redirect before its cells run (see PathContext.probe). */
export interface Probe {
  readonly from: TestbedPod;
  readonly ip: string;
  readonly port: number;
}

/** Polls /readyz from inside the node's netns, bounded (30 s), in one shell so polling costs no spawns. */
export async function waitReady(tb: Testbed, node: TestbedNode, proc: TestbedProcess, logDir: string): Promise<void> {
  const script = `for i in $(seq 1 3000); do curl -fs -o /dev/null --max-time 1 http://127.0.0.1:${LOADER_PORT}/readyz && exit 0; sleep 0.01; done; exit 1`;
  let exited = false;
  void proc.exited.then(() => (exited = true));
  const r = await tb.exec(node, ['sh', '-c', script], { check: false, timeoutMs: 40_000 });
  if (r.code !== 0 || exited)
    throw new BenchError(`ambpf run on ${node.name} did not become ready (see ${logDir}/ambpf-run-${node.name}.log)`, {
      node: node.name,
    });
}

/**
 * The loader copies ztunnel's 15006/15008 listeners into ambpf_zt_listen during its first
 * reconcile; inbound cells need both slots filled. Bounded wait (10 s). The sinks are started
 * before the loader and never swapped under it (a swap is only noticed by its 30 s full resync).
 */
export async function waitListenersCopied(node: TestbedNode, procs: readonly TestbedProcess[]): Promise<void> {
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

/** Whether `probe.from` connecting to probe.ip:port is accepted now ('' if so, else why not). */
async function probeFails(tb: Testbed, probe: Probe): Promise<string> {
  const script = `import socket; socket.create_connection(("${probe.ip}", ${probe.port}), 2).close()`;
  const r = await tb.exec(probe.from, ['python3', '-c', script], { check: false, timeoutMs: 10_000 });
  return r.code === 0 ? '' : (r.stderr.trim().split('\n').at(-1) ?? `exit ${r.code}`);
}

/**
 * What decides whether `pod`'s connects are redirected, as its node's loader left it: the pod's
 * ambpf_netns entry (connect4 reads it by the netns cookie), ztunnel's netns, the connect counters
 * and the loader's unresolved problems. One line per fact; never throws.
 */
async function captureState(tb: Testbed, pod: TestbedPod): Promise<string> {
  // Imported lazily, as the maps are: only the eBPF paths need libbpf in this process.
  const { openPinnedMaps } = await import('../bpf/datapath.ts');
  const { netnsCookie } = await import('../libbpf/sockets.ts');
  const node = tb.node(pod.node);
  const out: string[] = [];
  try {
    const cookie = netnsCookie(pod.netnsPath);
    const maps = openPinnedMaps(node.bpffsDir);
    try {
      const ns = maps.netns.get(cookie);
      out.push(
        `ambpf_netns[${pod.name}, cookie ${cookie}]: ${ns ? podFlagWords(ns.flags).join(',') || 'no flags' : 'none'}`,
      );
      const zt = maps.ztunnel.get().netnsCookie;
      out.push(`ztunnel's netns cookie ${zt}${zt === cookie ? ` (${pod.name}'s own!)` : ''}`);
      const counters = Object.entries(maps.stats()).filter(([k, v]) => k.startsWith('connect') && v > 0n);
      out.push(`counters: ${counters.map(([k, v]) => `${k}=${v}`).join(' ') || 'all connect counters 0'}`);
    } finally {
      maps.close();
    }
  } catch (err) {
    out.push(`maps not readable: ${describeError(err)}`);
  }
  try {
    const problems = loadStateFile(stateFilePath(tb, node)).state?.problems ?? [];
    out.push(`loader problems: ${problems.map((p) => `${p.object}: ${p.reason}`).join('; ') || 'none'}`);
  } catch (err) {
    out.push(`state file not readable: ${describeError(err)}`);
  }
  return out.map((l) => `\n  ${l}`).join('');
}

/** How long a capture may take to settle: a bound on a hang on a busy machine, not a speed claim. */
const CAPTURE_SETTLE_MS = 30_000;

/**
 * inpod: every pod in `pods` has its ambpf_pods entry on its node's loader (written once the pod is
 * armed), and `probe` (when given) is redirected. Bounded (CAPTURE_SETTLE_MS).
 */
export async function waitCaptured(
  tb: Testbed,
  pods: readonly TestbedPod[],
  procs: readonly TestbedProcess[],
  probe: Probe | undefined,
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
      if (missing.length === 0 && probe)
        throw new BenchError(
          `${probe.from.name}'s connect to ${probe.ip}:${probe.port} is not redirected ${CAPTURE_SETTLE_MS / 1000} s after its capture: ${why}${await captureState(tb, probe.from)}`,
        );
      throw new BenchError(
        `ambpf run --mode inpod did not capture ${missing.map((p) => p.name).join(', ')} within ${CAPTURE_SETTLE_MS / 1000} s (are the sinks held by ztunnel's pod?)`,
        { pods: missing.map((p) => p.name).join(',') },
      );
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}
