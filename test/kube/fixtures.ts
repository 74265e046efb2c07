// Shared pieces of the kube tests: objects, a started fake API server, a snapshot recorder.
import { KubeConfig } from '../../src/kube/config.ts';
import { FakeApiServer, type FakeApiServerOptions } from '../../src/testbed/apiserver/server.ts';
import type { ClusterSnapshot, KubeObjectLike } from '../../src/sources/types.ts';
import { waitUntil } from '../helpers/wait.ts';

export interface TestContext {
  teardown(fn: () => unknown): void;
}

export async function startFakeServer(t: TestContext, options: FakeApiServerOptions = {}): Promise<FakeApiServer> {
  const server = await FakeApiServer.start(options);
  t.teardown(() => server.close());
  return server;
}

export function kubeConfigFor(server: FakeApiServer): KubeConfig {
  return new KubeConfig({ server: server.url, ca: Buffer.from(server.caPem), token: server.bearerToken });
}

export function pod(
  name: string,
  namespace: string,
  node: string,
  ip: string | undefined,
  labels: Record<string, string> = {},
): Record<string, unknown> {
  return {
    metadata: { name, namespace, labels },
    spec: { nodeName: node, containers: [{ name: 'app', image: 'registry.invalid/app:1' }] },
    status: ip === undefined ? { phase: 'Pending' } : { phase: 'Running', podIP: ip, podIPs: [{ ip }] },
  };
}

export function namespace(name: string, labels: Record<string, string> = {}): Record<string, unknown> {
  return { metadata: { name, labels }, status: { phase: 'Active' } };
}

function field(obj: KubeObjectLike, key: 'name' | 'namespace'): string {
  const v = obj.metadata?.[key];
  return typeof v === 'string' ? v : '';
}

export function podNames(s: ClusterSnapshot | undefined): string[] {
  return (s?.pods ?? []).map((p) => `${field(p, 'namespace')}/${field(p, 'name')}`).sort();
}

export function podIp(s: ClusterSnapshot | undefined, ns: string, name: string): unknown {
  const p = s?.pods.find((x) => field(x, 'namespace') === ns && field(x, 'name') === name);
  return (p?.status as { podIP?: unknown } | undefined)?.podIP;
}

export function namespaceLabels(s: ClusterSnapshot | undefined, name: string): Record<string, string> | undefined {
  const n = s?.namespaces.find((x) => field(x, 'name') === name);
  return n?.metadata?.labels as Record<string, string> | undefined;
}

/** Records every snapshot a source delivers and waits for one that satisfies a predicate. */
export class SnapshotRecorder {
  readonly snapshots: ClusterSnapshot[] = [];
  /** What `note` read (a counter of the source, say) as each snapshot was delivered, index for index. */
  readonly notes: number[] = [];
  note: () => number = () => 0;
  readonly onSnapshot = (s: ClusterSnapshot): void => {
    this.snapshots.push(s);
    this.notes.push(this.note());
  };

  get last(): ClusterSnapshot | undefined {
    return this.snapshots[this.snapshots.length - 1];
  }

  /** Resolves with the latest snapshot once `pred` holds for it; rejects after `timeoutMs`. */
  async waitFor(pred: (s: ClusterSnapshot) => boolean, timeoutMs = 5000, what = 'condition'): Promise<ClusterSnapshot> {
    const ok = await waitUntil(() => this.last !== undefined && pred(this.last), timeoutMs);
    if (!ok)
      throw new Error(
        `no snapshot satisfied "${what}" within ${timeoutMs} ms; last pods: ${podNames(this.last).join(',')}`,
      );
    return this.last!;
  }
}
