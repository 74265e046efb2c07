// The pieces of the loader-through-the-watch tests: the fake API server as a process inside a node's
// netns (so the loader reaches it on 127.0.0.1, as a DaemonSet reaches its API server), seeded with
// the testbed's own objects; the pinned maps read back as plain data; the loader's HTTP endpoints.
import { join } from 'node:path';
import { existsSync } from 'node:fs';
import type { Testbed, TestbedNode } from '../../src/testbed/index.ts';
import { openPinnedMaps } from '../../src/bpf/datapath-maps.ts';
import { ZT_READY, type NetnsValue, type PodValue } from '../../src/bpf/schema.ts';
import { editPodsFile, LOADER_PORT } from '../helpers/loader.ts';
import { FakeApiServerProcess } from '../../src/testbed/apiserver/process.ts';

export type KubeItem = Record<string, unknown> & {
  kind: string;
  metadata: Record<string, unknown> & {
    name: string;
    namespace?: string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
  };
};

export interface ClusterApi {
  readonly server: FakeApiServerProcess;
  readonly kubeconfig: string;
  /** The objects as seeded (and as the tests last wrote them): what updates start from. */
  readonly objects: Map<string, KubeItem>;
  /** Objects of the testbed held back from the seed (created later by a test). */
  readonly heldBack: Map<string, KubeItem>;
}

export const keyOf = (kind: string, namespace: string | undefined, name: string): string =>
  `${kind}/${namespace ?? ''}/${name}`;

/**
 * Starts the fake API server in `node`'s netns, seeded with the testbed's Namespaces and Pods minus
 * the pods named in `holdBack` (they exist on the testbed, but the API learns of them later).
 */
export async function startClusterApi(
  tb: Testbed,
  node: TestbedNode,
  holdBack: readonly string[],
): Promise<ClusterApi> {
  const seedFile = join(tb.info.runDir, 'apiserver-seed.json');
  const kubeconfig = join(tb.info.runDir, 'kubeconfig.yaml');
  tb.writePodsList(seedFile);
  const objects = new Map<string, KubeItem>();
  const heldBack = new Map<string, KubeItem>();
  editPodsFile(seedFile, (list) => {
    const items = list.items as KubeItem[];
    for (const item of items) {
      const key = keyOf(item.kind, item.metadata.namespace, item.metadata.name);
      if (item.kind === 'Pod' && holdBack.includes(item.metadata.name)) heldBack.set(key, structuredClone(item));
      else objects.set(key, structuredClone(item));
    }
    list.items = items.filter((i) => !(i.kind === 'Pod' && holdBack.includes(i.metadata.name)));
  });
  const server = await FakeApiServerProcess.start({
    kubeconfigOut: kubeconfig,
    seedFile,
    prefix: ['nsenter', `--net=${node.netnsPath}`],
  });
  return { server, kubeconfig, objects, heldBack };
}

/** What the node's pinned maps hold now (opened from the pins, as `ambpf pods` would). */
export interface MapState {
  readonly pods: Map<string, PodValue>;
  readonly netns: Map<bigint, NetnsValue>;
  /** ztunnel's IP, or undefined when the slot says "not ready" (nothing is redirected). */
  readonly ztunnelIp: string | undefined;
  readonly ztunnelHostIfindex: number;
}

export function readMaps(node: TestbedNode): MapState {
  const maps = openPinnedMaps(node.bpffsDir);
  try {
    const zt = maps.ztunnel.get();
    return {
      pods: new Map(maps.pods.entries()),
      netns: new Map(maps.netns.entries()),
      ztunnelIp: (zt.flags & ZT_READY) !== 0 ? zt.ip : undefined,
      ztunnelHostIfindex: zt.hostIfindex,
    };
  } finally {
    maps.close();
  }
}

/** The pinned inbound (tc) link of a host veth exists. */
export function inboundLinkPinned(node: TestbedNode, hostIfname: string): boolean {
  return existsSync(join(node.bpffsDir, 'links', `tc-${hostIfname}`));
}

/** GET on the loader's HTTP endpoint from inside the node: status 0 when nothing answered. */
export async function loaderHttp(
  tb: Testbed,
  node: TestbedNode,
  path: string,
): Promise<{ status: number; body: string }> {
  const r = await tb.exec(
    node.name,
    ['curl', '-s', '--max-time', '1', '-w', '\n%{http_code}', `http://127.0.0.1:${LOADER_PORT}${path}`],
    { check: false, timeoutMs: 3000 },
  );
  const cut = r.stdout.lastIndexOf('\n');
  return { status: Number(r.stdout.slice(cut + 1)) || 0, body: r.stdout.slice(0, Math.max(cut, 0)) };
}

/** One sample of a Prometheus metric without labels, NaN when absent. */
export function metricValue(text: string, name: string): number {
  const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(text);
  return m ? Number(m[1]) : NaN;
}
