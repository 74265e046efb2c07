// The Kubernetes `List` of the testbed's Namespaces and Pods, shaped like what the API server returns,
// so `ambpf run --pods-file` reads the same objects a watch would deliver.
import { writeFileSync, renameSync } from 'node:fs';
import type { TestbedInfo } from './types.ts';

export interface KubeList {
  readonly apiVersion: 'v1';
  readonly kind: 'List';
  readonly metadata: { readonly resourceVersion: string };
  readonly items: readonly Record<string, unknown>[];
}

export function podsList(info: TestbedInfo): KubeList {
  let rv = 1000;
  const namespaces = info.namespaces.map((ns) => ({
    apiVersion: 'v1',
    kind: 'Namespace',
    metadata: {
      name: ns.name,
      uid: ns.uid,
      labels: { 'kubernetes.io/metadata.name': ns.name, ...ns.labels },
      resourceVersion: String(++rv),
    },
    spec: { finalizers: ['kubernetes'] },
    status: { phase: 'Active' },
  }));
  const pods = info.pods.map((p) => ({
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: {
      name: p.name,
      namespace: p.namespace,
      uid: p.uid,
      labels: { ...p.labels },
      annotations: { ...p.annotations },
      resourceVersion: String(++rv),
    },
    spec: {
      nodeName: p.node,
      hostNetwork: p.hostNetwork,
      containers: p.containers.map((name) => ({ name, image: 'registry.local/ambtb/pause:1' })),
    },
    status: {
      phase: 'Running',
      hostIP: info.nodes.find((n) => n.name === p.node)?.wireIp,
      podIP: p.ip,
      podIPs: p.ips.map((ip) => ({ ip })),
      containerStatuses: p.containers.map((name) => ({
        name,
        ready: true,
        containerID: `containerd://${p.containerId}`,
      })),
    },
  }));
  return { apiVersion: 'v1', kind: 'List', metadata: { resourceVersion: String(rv) }, items: [...namespaces, ...pods] };
}

/** Writes atomically (temp + rename) so a watcher never reads half a file. */
export function writePodsListFile(info: TestbedInfo, path: string): void {
  const tmp = `${path}.tmp-${process.pid}`;
  writeFileSync(tmp, JSON.stringify(podsList(info), null, 2) + '\n');
  renameSync(tmp, path);
}
