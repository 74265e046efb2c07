// The declarative description of a testbed cluster and its default (the two-node demo). Pure: no
// kernel calls, so validation and address planning are unit-tested without root.
import { TestbedSpecError } from './errors.ts';

export type Labels = Readonly<Record<string, string>>;

export interface NodeSpec {
  readonly name: string;
  /** Run a ztunnel pod (istio-system, app=ztunnel) on this node; default true. */
  readonly ztunnel?: boolean;
  /** Address families of the ztunnel pod (as PodSpec.ipFamilies); default ["IPv4"]. A dual-stack
   * node topology needs ["IPv4", "IPv6"]: ztunnel's IPv6 address is where the pods' IPv6 connects go
   * and where its IPv6 legs to the pods come from. */
  readonly ztunnelIpFamilies?: readonly IpFamily[];
}

export interface NamespaceSpec {
  readonly name: string;
  readonly labels?: Labels;
}

export interface PodSpec {
  readonly name: string;
  readonly namespace: string;
  readonly node: string;
  readonly labels?: Labels;
  readonly annotations?: Labels;
  /** Lives in the node's netns (no veth, no pod IP of its own), like kubelet's hostNetwork pods. */
  readonly hostNetwork?: boolean;
  /** Container names for the Pod object; default ["app"]. */
  readonly containers?: readonly string[];
  /** Address families of its pod IPs, IPv4 first on a dual-stack pod as Kubernetes lists them;
   * default ["IPv4"]. Ignored for hostNetwork pods. */
  readonly ipFamilies?: readonly IpFamily[];
}

export type IpFamily = 'IPv4' | 'IPv6';

export interface TestbedSpec {
  readonly nodes: readonly NodeSpec[];
  readonly namespaces: readonly NamespaceSpec[];
  readonly pods: readonly PodSpec[];
}

export type Topology = 'node' | 'inpod';

export const AMBIENT_LABEL = 'istio.io/dataplane-mode';
export const ZTUNNEL_NAMESPACE = 'istio-system';

/** The two-node demo: per node a ztunnel pod, 2 mesh pods in an ambient namespace, 1 non-mesh pod. */
export function defaultSpec(): TestbedSpec {
  const nodes = ['node1', 'node2'];
  return {
    nodes: nodes.map((name) => ({ name, ztunnel: true })),
    namespaces: [
      { name: 'mesh', labels: { [AMBIENT_LABEL]: 'ambient' } },
      { name: 'plain', labels: {} },
    ],
    pods: nodes.flatMap((node) => [
      { name: `app1-${node}`, namespace: 'mesh', node, labels: { app: 'app1' } },
      { name: `app2-${node}`, namespace: 'mesh', node, labels: { app: 'app2' } },
      { name: `client-${node}`, namespace: 'plain', node, labels: { app: 'client' } },
    ]),
  };
}

/** ztunnel pod name for a node. */
export function ztunnelPodName(node: string): string {
  return `ztunnel-${node}`;
}

/**
 * The spec with one ztunnel pod per node that asks for it (and the istio-system namespace), checked:
 * unique names, known nodes and namespaces, names usable in netns and cgroup paths.
 */
export function normalizeSpec(spec: TestbedSpec): TestbedSpec {
  const nameOk = /^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$/;
  if (spec.nodes.length === 0) throw new TestbedSpecError('it has no nodes');
  if (spec.nodes.length > 200) throw new TestbedSpecError('at most 200 nodes fit the address plan');
  const nodes = new Set<string>();
  for (const n of spec.nodes) {
    if (!nameOk.test(n.name)) throw new TestbedSpecError(`node name "${n.name}" is not a DNS label`);
    if (nodes.has(n.name)) throw new TestbedSpecError(`node "${n.name}" is declared twice`);
    nodes.add(n.name);
  }
  const namespaces = new Map<string, NamespaceSpec>();
  for (const ns of spec.namespaces) {
    if (!nameOk.test(ns.name)) throw new TestbedSpecError(`namespace name "${ns.name}" is not a DNS label`);
    if (namespaces.has(ns.name)) throw new TestbedSpecError(`namespace "${ns.name}" is declared twice`);
    namespaces.set(ns.name, ns);
  }
  const pods: PodSpec[] = [];
  const wantsZtunnel = spec.nodes.filter((n) => n.ztunnel ?? true);
  if (wantsZtunnel.length > 0 && !namespaces.has(ZTUNNEL_NAMESPACE)) {
    namespaces.set(ZTUNNEL_NAMESPACE, { name: ZTUNNEL_NAMESPACE, labels: {} });
  }
  for (const n of wantsZtunnel) {
    pods.push({
      name: ztunnelPodName(n.name),
      namespace: ZTUNNEL_NAMESPACE,
      node: n.name,
      labels: { app: 'ztunnel' },
      containers: ['istio-proxy'],
      ...(n.ztunnelIpFamilies ? { ipFamilies: n.ztunnelIpFamilies } : {}),
    });
  }
  pods.push(...spec.pods);
  const seen = new Set<string>();
  const perNode = new Map<string, number>();
  for (const p of pods) {
    if (!nameOk.test(p.name)) throw new TestbedSpecError(`pod name "${p.name}" is not a DNS label`);
    if (!nodes.has(p.node)) throw new TestbedSpecError(`pod "${p.namespace}/${p.name}" is on unknown node "${p.node}"`);
    if (!namespaces.has(p.namespace))
      throw new TestbedSpecError(`pod "${p.name}" is in undeclared namespace "${p.namespace}"`);
    const key = `${p.namespace}/${p.name}`;
    if (seen.has(key)) throw new TestbedSpecError(`pod "${key}" is declared twice`);
    const fams = p.ipFamilies ?? ['IPv4'];
    if (fams.length === 0 || fams.length > 2 || new Set(fams).size !== fams.length) {
      throw new TestbedSpecError(`pod "${key}" must have ipFamilies ["IPv4"], ["IPv6"] or both once each`);
    }
    seen.add(key);
    perNode.set(p.node, (perNode.get(p.node) ?? 0) + 1);
  }
  for (const [node, count] of perNode) {
    if (count > 250) throw new TestbedSpecError(`node "${node}" has ${count} pods; its /24 pod CIDR holds 250`);
  }
  return { nodes: spec.nodes, namespaces: [...namespaces.values()], pods };
}

/**
 * Whether Istio ambient would capture this pod (docs/istio-ambient.md "Which pods are in the mesh"): namespace or pod
 * labelled ambient, no sidecar, not hostNetwork, no opt-out, not ztunnel itself.
 */
export function isMeshPod(pod: PodSpec, namespace: NamespaceSpec | undefined): boolean {
  const labels = pod.labels ?? {};
  const annotations = pod.annotations ?? {};
  if (pod.hostNetwork) return false;
  if (pod.namespace === ZTUNNEL_NAMESPACE && labels['app'] === 'ztunnel') return false;
  if (labels[AMBIENT_LABEL] === 'none') return false;
  if (
    labels['ambient.istio.io/redirection'] === 'disabled' ||
    annotations['ambient.istio.io/redirection'] === 'disabled'
  )
    return false;
  if (annotations['sidecar.istio.io/status'] !== undefined) return false;
  if ((pod.containers ?? []).includes('istio-proxy')) return false;
  return labels[AMBIENT_LABEL] === 'ambient' || namespace?.labels?.[AMBIENT_LABEL] === 'ambient';
}
