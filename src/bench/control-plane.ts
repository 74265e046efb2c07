// Control-plane figures: how fast a pod change reaches the kernel, how long a reconcile of N pods
// takes, and (collected by the matrix) the loader's cold start and resident memory.
import { mkdirSync, renameSync, rmdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Testbed } from '../testbed/testbed.ts';
import type { TestbedNode, TestbedPod } from '../testbed/types.ts';
import { podsList } from '../testbed/pods-list.ts';
import { computeDesiredState } from '../state/desired.ts';
import { buildTarget, planReconcile } from '../reconcile/plan.ts';
import type { Resolution } from '../node/discovery.ts';
import type { ClusterSnapshot, KubeObjectLike } from '../sources/types.ts';
import { BenchError } from './errors.ts';
import { percentile } from './stats.ts';
import type { PathContext } from './paths.ts';
import { startPath } from './paths.ts';

const AMBIENT = 'istio.io/dataplane-mode';

/** The testbed's Pods and Namespaces as a List, with `optedOut` opted out (label dataplane-mode=none). */
function listWithOptOut(tb: Testbed, optedOut: readonly TestbedPod[]): ReturnType<typeof podsList> {
  const list = podsList(tb.info);
  const items = list.items.map((item) => {
    const meta = item['metadata'] as { name: string; namespace?: string; labels: Record<string, string> };
    if (item['kind'] !== 'Pod' || !optedOut.some((p) => meta.name === p.name && meta.namespace === p.namespace))
      return item;
    return { ...item, metadata: { ...meta, labels: { ...meta.labels, [AMBIENT]: 'none' } } };
  });
  return { ...list, items };
}

/** Writes the pods List with `optedOut` opted out (label dataplane-mode=none), atomically. */
export function writePodsWithOptOut(tb: Testbed, path: string, optedOut: readonly TestbedPod[]): void {
  const tmp = `${path}.tmp-bench`;
  writeFileSync(tmp, JSON.stringify(listWithOptOut(tb, optedOut), null, 2) + '\n');
  renameSync(tmp, path);
}

/**
 * Pods file edit -> ambpf_pods entry gone (opt-out) or present (opt-in), `changes` times, each
 * bounded by 5 s. The map is polled through its pin, as any observer of the node would see it.
 * `optedOut` stay out all along (inpod: mesh pods without ztunnel listeners, which the loader would
 * otherwise keep retrying). In inpod the entry appears only after the pod's capture (listeners found,
 * sk_lookup attached), so ztunnel's listeners must be in the pod's netns while this runs.
 * The pods file is left as the full list.
 */
export async function measurePodChange(
  ctx: PathContext,
  node: TestbedNode,
  pod: TestbedPod,
  changes: number,
  optedOut: readonly TestbedPod[] = [],
): Promise<number[]> {
  try {
    return await podChangeLoop(ctx, node, pod, changes, (optOut) => {
      writePodsWithOptOut(ctx.tb, ctx.podsFile, optOut ? [...optedOut, pod] : optedOut);
      return Promise.resolve();
    });
  } finally {
    ctx.tb.writePodsList(ctx.podsFile);
  }
}

/**
 * The same through a Kubernetes watch: the testbed's API server (src/testbed/apiserver, a process in
 * `node`'s netns, seeded with the testbed's objects) and `ambpf run --kubeconfig`; each change is
 * a label update of the pod through the API (a MODIFIED event on the loader's watch).
 */
export async function measurePodChangeWatch(
  ctx: PathContext,
  node: TestbedNode,
  pod: TestbedPod,
  changes: number,
  optedOut: readonly TestbedPod[] = [],
): Promise<number[]> {
  const { FakeApiServerProcess } = await import('../testbed/apiserver/process.ts');
  const seedFile = join(ctx.logDir, 'apiserver-seed.json');
  const kubeconfig = join(ctx.logDir, 'apiserver-kubeconfig.yaml');
  writeFileSync(seedFile, JSON.stringify(listWithOptOut(ctx.tb, optedOut)));
  const server = await FakeApiServerProcess.start({
    kubeconfigOut: kubeconfig,
    seedFile,
    prefix: ['nsenter', `--net=${node.netnsPath}`],
  });
  try {
    const podItem = (optOut: boolean): Record<string, unknown> => {
      const item = listWithOptOut(ctx.tb, optOut ? [...optedOut, pod] : optedOut).items.find(
        (i) => i['kind'] === 'Pod' && (i['metadata'] as { name: string }).name === pod.name,
      );
      if (!item) throw new BenchError(`pod ${pod.name} is not in the testbed's list`);
      return item;
    };
    return await podChangeLoop({ ...ctx, kubeconfig }, node, pod, changes, async (optOut) => {
      await server.updatePod(podItem(optOut));
    });
  } finally {
    await server.stop();
  }
}

async function podChangeLoop(
  ctx: PathContext,
  node: TestbedNode,
  pod: TestbedPod,
  changes: number,
  change: (optOut: boolean) => Promise<void>,
): Promise<number[]> {
  const { openPinnedMaps } = await import('../bpf/datapath.ts');
  const path = await startPath(ctx, 'ebpf');
  const samples: number[] = [];
  try {
    const maps = openPinnedMaps(node.bpffsDir);
    try {
      // Start from a present entry (inpod: the first capture may land just after /readyz).
      const ready = performance.now() + 5000;
      while (maps.pods.get(pod.ip) === undefined) {
        if (performance.now() > ready)
          throw new BenchError(`the ambpf_pods entry of ${pod.name} never appeared after the loader started`);
        await new Promise((r) => setTimeout(r, 10));
      }
      for (let i = 0; i < changes; i++) {
        const optOut = i % 2 === 0;
        const t0 = performance.now();
        await change(optOut);
        const deadline = t0 + 5000;
        while ((maps.pods.get(pod.ip) !== undefined) === optOut) {
          if (performance.now() > deadline)
            throw new BenchError(
              `the ambpf_pods entry of ${pod.name} did not ${optOut ? 'disappear' : 'appear'} within 5 s of the pod change`,
            );
          // A timer, not setImmediate: a busy poll would take a core from the loader on 2 cores.
          await new Promise((r) => setTimeout(r, 1));
        }
        samples.push(performance.now() - t0);
        // Let the loader's debounce and state file settle so changes do not coalesce.
        await new Promise((r) => setTimeout(r, 100));
      }
    } finally {
      maps.close();
    }
  } finally {
    await path.down();
  }
  return samples;
}

export function summarizePodChange(samples: readonly number[]): {
  samples: number[];
  p50: number;
  p99: number;
  max: number;
} {
  return {
    samples: [...samples],
    p50: percentile(samples, 50),
    p99: percentile(samples, 99),
    max: Math.max(...samples),
  };
}

/** N ambient pods on one node plus its ztunnel, shaped like the API server's objects. */
export function syntheticSnapshot(n: number, node = 'bench-node'): ClusterSnapshot {
  const pods: KubeObjectLike[] = [];
  const ip = (i: number): string => `198.${18 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}`;
  pods.push({
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name: 'ztunnel-bench', namespace: 'istio-system', uid: 'zt-uid', labels: { app: 'ztunnel' } },
    spec: { nodeName: node, containers: [{ name: 'istio-proxy' }] },
    status: { phase: 'Running', podIP: '198.19.255.2', podIPs: [{ ip: '198.19.255.2' }] },
  });
  for (let i = 1; i <= n; i++) {
    pods.push({
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: `app-${i}`, namespace: 'mesh', uid: `uid-${i}`, labels: { app: 'app' } },
      spec: { nodeName: node, containers: [{ name: 'app' }] },
      status: { phase: 'Running', podIP: ip(i), podIPs: [{ ip: ip(i) }] },
    });
  }
  const namespaces: KubeObjectLike[] = [
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'mesh', labels: { [AMBIENT]: 'ambient' } } },
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'istio-system', labels: {} } },
  ];
  return { pods, namespaces };
}

/**
 * Reconcile of N pods on the pure path (desired state -> target -> plan against empty maps) and the
 * real write of the plan into freshly loaded, pinned ambpf maps in our own bpffs dir and cgroup.
 * Node discovery (/proc) is replaced by a synthetic resolution: it is per-pod I/O measured by the
 * pod-change figure, not part of the state computation.
 */
export async function measureReconcile(
  tb: Testbed,
  sizes: readonly number[],
): Promise<Array<{ pods: number; planMs: number; writeMs: number; totalMs: number }>> {
  const { openDatapath, uninstallDatapath } = await import('../bpf/datapath.ts');
  const out: Array<{ pods: number; planMs: number; writeMs: number; totalMs: number }> = [];
  for (const n of sizes) {
    const bpffs = `/sys/fs/bpf/${tb.prefix}-cp${n}`;
    const cgroup = join(tb.info.cgroupPath, `bench-cp${n}`);
    mkdirSync(cgroup, { recursive: true });
    const size = Math.max(16384, 2 ** Math.ceil(Math.log2(n + 2)));
    const dp = await openDatapath({ bpffs, cgroup, mapSizes: { ambpf_pods: size, ambpf_netns: size } });
    try {
      const snapshot = syntheticSnapshot(n);
      const t0 = performance.now();
      const desired = computeDesiredState(snapshot, 'bench-node');
      const resolution: Resolution = {
        pods: desired.ambientPods.map((p, i) => ({
          ...p,
          pid: 0,
          pids: [],
          netnsPath: '',
          netnsCookie: BigInt(1000 + i),
          hostLink: undefined,
        })),
        ztunnel: undefined,
        unresolved: [],
      };
      const plan = planReconcile(buildTarget(resolution), {
        pods: new Map(),
        netns: new Map(),
        ztunnel: undefined,
        inbound: new Set(),
      });
      const t1 = performance.now();
      for (const [cookie, v] of plan.netnsSet) dp.maps.netns.set(cookie, v);
      for (const [ip, v] of plan.podsSet) dp.maps.pods.set(ip, v);
      const t2 = performance.now();
      if (plan.podsSet.size !== n) throw new BenchError(`reconcile of ${n} pods planned ${plan.podsSet.size} entries`);
      out.push({ pods: n, planMs: t1 - t0, writeMs: t2 - t1, totalMs: t2 - t0 });
    } finally {
      dp.close();
      uninstallDatapath(bpffs);
      try {
        rmdirSync(cgroup);
      } catch {
        /* down() removes it */
      }
    }
  }
  return out;
}
