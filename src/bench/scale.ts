// The loader at node scale, ZDS included (issue 20's control-plane targets): a testbed of its own with
// one node and N mesh pods (249 by default: with ztunnel's, 250 pods on the node), the inpod ztunnel
// stand-in as a ZDS client of the loader (it opens its listeners in a pod's netns when the Add arrives,
// then acks), `ambpf run --mode inpod` as on a real node. Measured:
//   captureAllMs   loader start -> every pod captured (armed, Add acked, listeners in ambpf_inpod_listen);
//   rssMiB         the loader's VmRSS once all are captured (the end of its biggest burst of work);
//   rssIdleMiB     its VmRSS at the end of the idle window: what a node carries (the loader gives back
//                  what a burst left resident once it is quiet, src/cli/idle-trim.ts);
//   idleCpuPct     the loader's CPU time (utime + stime) over `idleSeconds` with nothing changing, as %
//                  of one core (its resync ticks are all it does then: a look at a few pods'
//                  listeners every --resync-ms; the bench's window is one SAFETY_NET_MS period
//                  (5 min), so it holds one safety-net full pass, ~0.25 s of CPU at 250 pods);
//   podChangeMs    a pod's label flipped in the pods file -> released (opt-out: its ambpf_pods entry
//                  gone, Del sent) or captured again (opt-in: Add acked by the stand-in and its 15006 in
//                  ambpf_inpod_listen), each bounded by 10 s.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { startTestbed, type Testbed } from '../testbed/index.ts';
import type { TestbedSpec } from '../testbed/spec.ts';
import { metrics, startLoader, waitReady, zdsSocketPath } from '../testbed/loader.ts';
import { startZtunnels } from '../testbed/ztunnel/launch.ts';
import { BpfMap } from '../libbpf/index.ts';
import { mapPin } from '../bpf/pins.ts';
import * as s from '../bpf/schema.ts';
import { logger } from '../log.ts';
import { writePodsWithOptOut } from './control-plane.ts';
import { BenchError } from './errors.ts';
import { percentile } from './stats.ts';
import type { ScaleResults } from './types.ts';

const log = logger('bench');

/** `ambpf run`'s default --resync-ms. */
const RESYNC_MS = 2000;

export interface ScaleOptions {
  readonly pods: number;
  readonly changes: number;
  readonly idleSeconds: number;
  readonly prefix?: string;
}

/** The most mesh pods the testbed puts on one node: its pod /24 holds 250 pods, ztunnel's included. */
export const MAX_SCALE_PODS = 249;

/** One node with ztunnel and `pods` mesh pods. */
export function scaleSpec(pods: number): TestbedSpec {
  if (pods < 1 || pods > MAX_SCALE_PODS)
    throw new BenchError(
      `--scale-pods must be 1-${MAX_SCALE_PODS} (one node's pod /24 holds 250 pods with ztunnel), not ${pods}`,
    );
  return {
    nodes: [{ name: 'node1', ztunnel: true }],
    namespaces: [{ name: 'mesh', labels: { 'istio.io/dataplane-mode': 'ambient' } }],
    pods: Array.from({ length: pods }, (_, i) => ({
      name: `app-${i + 1}`,
      namespace: 'mesh',
      node: 'node1',
      labels: { app: 'app' },
    })),
  };
}

/** utime + stime of a process, in clock ticks (USER_HZ, 100 on Linux). */
function cpuTicks(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // after "pid (comm) "
  return Number(fields[11]) + Number(fields[12]); // fields 14 and 15 of proc(5), 0-based after comm: 11, 12
}

function rssMiB(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m?.[1] ? Number(m[1]) / 1024 : Number.NaN;
}

/**
 * Where a process's resident memory sits, in MiB: anonymous memory (the V8 heap, malloc, JIT code), and the
 * file-backed mappings grouped by file (node's own text, libbpf, koffi's module, ...), largest first.
 */
export function rssByMapping(pid: number): { anonMiB: number; files: Record<string, number> } {
  let anonKiB = 0;
  const files = new Map<string, number>();
  let name = '';
  for (const line of readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')) {
    const head = /^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \d+\s*(.*)$/.exec(line);
    if (head) {
      name = head[1] ?? '';
      continue;
    }
    const rss = /^Rss:\s+(\d+) kB$/.exec(line);
    if (!rss) continue;
    const kib = Number(rss[1]);
    if (name.startsWith('/')) files.set(name, (files.get(name) ?? 0) + kib);
    else anonKiB += kib; // [heap], [stack], anonymous mappings (V8's heap and code space), [vdso]
  }
  const top = [...files].sort((a, b) => b[1] - a[1]).filter(([, kib]) => kib >= 256);
  const mib = (kib: number): number => Math.round((kib / 1024) * 10) / 10;
  return { anonMiB: mib(anonKiB), files: Object.fromEntries(top.map(([f, kib]) => [f, mib(kib)])) };
}

/** The loader's own view of its memory from its /metrics (prom-client's default process metrics), MiB. */
function nodeMemory(text: string): Record<string, number> {
  const out: Record<string, number> = {};
  const want = [
    'process_resident_memory_bytes',
    'nodejs_heap_size_total_bytes',
    'nodejs_heap_size_used_bytes',
    'nodejs_external_memory_bytes',
  ];
  for (const line of text.split('\n')) {
    const [k, v] = line.split(' ');
    if (k && v && want.includes(k)) out[k] = Math.round((Number(v) / 2 ** 20) * 10) / 10;
  }
  return out;
}

async function until(what: string, deadlineMs: number, ok: () => boolean): Promise<void> {
  const end = performance.now() + deadlineMs;
  while (!ok()) {
    if (performance.now() > end) throw new BenchError(`${what} within ${deadlineMs} ms`);
    // A timer, not setImmediate: a busy poll would take a core from the loader on 2 cores.
    await new Promise((r) => setTimeout(r, 2));
  }
}

export async function measureScale(o: ScaleOptions): Promise<ScaleResults> {
  const tb: Testbed = await startTestbed(scaleSpec(o.pods), {
    topology: 'inpod',
    standIn: false,
    ...(o.prefix ? { prefix: `${o.prefix}s` } : {}),
  });
  try {
    const [node] = tb.nodes;
    if (!node) throw new BenchError('the scale testbed has no node');
    const pods = tb.pods.filter((p) => p.mesh);
    const podsFile = join(tb.info.runDir, 'pods.json');
    tb.writePodsList(podsFile);
    const t0 = performance.now();
    // As on a real node: the default resync and info logging (startLoader's are a test's: 300 ms, debug).
    const loader = startLoader(tb, node, podsFile, ['--resync-ms', String(RESYNC_MS)], true, {
      AMBPF_LOG_LEVEL: 'info',
    });
    await waitReady(tb, loader, 120_000);
    await startZtunnels(tb, { zdsSocket: () => zdsSocketPath(tb, node) });
    const listen = BpfMap.openPinned(mapPin(node.bpffsDir, 'ambpf_inpod_listen'));
    const pinnedPods = BpfMap.openPinned(mapPin(node.bpffsDir, 'ambpf_pods'));
    try {
      const captured = (ip: string): boolean =>
        listen.lookup(s.encodeInpodListenKey(ip, s.LISTENER_INBOUND)) !== undefined;
      const present = (ip: string): boolean => pinnedPods.lookup(s.encodeIpKey(ip)) !== undefined;
      await until(`all ${o.pods} pods captured`, 180_000, () => pods.every((p) => captured(p.ip)));
      const captureAllMs = performance.now() - t0;
      const pid = loader.proc.pid;
      const rss = rssMiB(pid);
      log.info({ rssMiB: rss, ...rssByMapping(pid), node: nodeMemory(await metrics(tb, loader)) }, 'scale: loader RSS');
      // Idle: nothing changes; what the loader costs is its periodic passes.
      const c0 = cpuTicks(pid);
      const w0 = performance.now();
      await new Promise((r) => setTimeout(r, o.idleSeconds * 1000));
      const idleCpuPct = ((cpuTicks(pid) - c0) / 100 / ((performance.now() - w0) / 1000)) * 100;
      const rssIdle = rssMiB(pid);
      log.info({ rssMiB: rssIdle, ...rssByMapping(pid) }, 'scale: loader RSS after the idle window');
      log.info(
        { pods: o.pods, captureAllMs, rssMiB: rss, rssIdleMiB: rssIdle, idleCpuPct },
        'scale: captured, idle measured',
      );

      const pod = pods[Math.floor(pods.length / 2)] ?? pods[0];
      if (!pod) throw new BenchError('the scale testbed has no mesh pod');
      const samples: number[] = [];
      for (let i = 0; i < o.changes; i++) {
        const optOut = i % 2 === 0;
        const t = performance.now();
        writePodsWithOptOut(tb, podsFile, optOut ? [pod] : []);
        if (optOut) await until(`${pod.name} released after opting out`, 10_000, () => !present(pod.ip));
        else
          await until(
            `${pod.name} captured again (ZDS Add acked, listeners registered)`,
            10_000,
            () => present(pod.ip) && captured(pod.ip),
          );
        samples.push(performance.now() - t);
        // Let the loader's debounce settle so changes do not coalesce.
        await new Promise((r) => setTimeout(r, 100));
      }
      return {
        pods: o.pods,
        captureAllMs,
        rssMiB: rss,
        rssIdleMiB: rssIdle,
        idleCpuPct,
        idleSeconds: o.idleSeconds,
        podChangeMs: { samples, p50: percentile(samples, 50), p99: percentile(samples, 99), max: Math.max(...samples) },
      };
    } finally {
      listen.close();
      pinnedPods.close();
    }
  } finally {
    await tb.down();
  }
}
