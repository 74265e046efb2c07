// The desired state of one node's datapath, computed from cluster objects by a pure function.
// Both pod sources (pods file, Kubernetes watch) feed it, so membership rules live here only.
// The sources deliver only objects that passed src/state/schema.ts; the readers here stay total
// anyway, for snapshots built in code (tests, the benchmark's synthetic cluster).
// Rules follow istio-cni's ambient pod selection (docs/istio-ambient.md#which-pods-are-in-the-mesh).
import { isIP } from 'node:net';
import type { ClusterSnapshot, KubeObjectLike } from '../sources/types.ts';
import { canonicalIp } from '../ip.ts';

/** Pod IPs are canonical text (src/ip.ts, the one parser); re-exported for the callers of old. */
export { canonicalIp } from '../ip.ts';

export const LABEL_DATAPLANE_MODE = 'istio.io/dataplane-mode';
export const REDIRECTION_ANNOTATION = 'ambient.istio.io/redirection';
export const SIDECAR_STATUS_ANNOTATION = 'sidecar.istio.io/status';
/** Per-pod DNS capture override ("true"/"false"; istio-cni's AmbientDnsCapture annotation). */
export const DNS_CAPTURE_ANNOTATION = 'ambient.istio.io/dns-capture';
export const ZTUNNEL_NAMESPACE = 'istio-system';
export const ZTUNNEL_APP_LABEL = 'ztunnel';

export interface DesiredPod {
  readonly uid: string;
  readonly name: string;
  readonly namespace: string;
  /** Canonical textual IPs (IPv4 dotted, IPv6 compressed lowercase), IPv4 first. */
  readonly ips: readonly string[];
  /** spec.serviceAccountName, "default" when unset (as Kubernetes does): ZDS WorkloadInfo carries it. */
  readonly serviceAccount: string;
  /** The pod's DNS_CAPTURE_ANNOTATION: true/false override the node's switch (`--no-dns-capture`);
   * absent when the pod does not say (then the node decides). */
  readonly dnsCapture?: boolean;
}

export interface DesiredZtunnel extends DesiredPod {}

/** One object the state could not use, with the reason in words an operator can act on. */
export interface Problem {
  readonly object: string;
  readonly reason: string;
}

export interface DesiredState {
  readonly node: string;
  /** Pods on this node whose traffic goes through ztunnel, sorted by namespace/name. */
  readonly ambientPods: readonly DesiredPod[];
  /** This node's ztunnel, if one is running (nothing is redirected until it is known). */
  readonly ztunnel: DesiredZtunnel | undefined;
  readonly problems: readonly Problem[];
}

type StringMap = Readonly<Record<string, string>>;

function stringMap(value: unknown): StringMap {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return {};
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(value)) if (typeof v === 'string') out[k] = v;
  return out;
}

function str(value: unknown): string | undefined {
  return typeof value === 'string' && value.length > 0 ? value : undefined;
}

function record(value: unknown): Readonly<Record<string, unknown>> {
  return value !== null && typeof value === 'object' && !Array.isArray(value) ? (value as Record<string, unknown>) : {};
}

function objectName(obj: KubeObjectLike, kind: string): string {
  const md = record(obj.metadata);
  const ns = str(md['namespace']);
  const name = str(md['name']) ?? '<unnamed>';
  return `${kind} ${ns ? `${ns}/` : ''}${name}`;
}

export interface ParsedPod {
  readonly uid: string;
  readonly name: string;
  readonly namespace: string;
  readonly nodeName: string | undefined;
  readonly labels: StringMap;
  readonly annotations: StringMap;
  readonly hostNetwork: boolean;
  readonly containers: readonly string[];
  readonly phase: string | undefined;
  readonly ips: readonly string[];
  readonly serviceAccount: string;
}

type ParseResult = { readonly pod: ParsedPod } | { readonly problem: Problem };

function parsePod(obj: KubeObjectLike): ParseResult {
  const what = objectName(obj, 'pod');
  const md = record(obj.metadata);
  const spec = record(obj.spec);
  const status = record(obj.status);
  const name = str(md['name']);
  const namespace = str(md['namespace']);
  const uid = str(md['uid']);
  if (!name || !namespace)
    return { problem: { object: what, reason: 'metadata.name and metadata.namespace are required' } };
  if (!uid)
    return { problem: { object: what, reason: 'metadata.uid is missing: the pod cannot be matched to its cgroup' } };

  const rawIps: unknown[] = [];
  if (Array.isArray(status['podIPs'])) for (const entry of status['podIPs']) rawIps.push(record(entry)['ip']);
  if (rawIps.length === 0 && status['podIP'] !== undefined) rawIps.push(status['podIP']);
  const ips: string[] = [];
  for (const raw of rawIps) {
    const ip = typeof raw === 'string' ? canonicalIp(raw) : undefined;
    if (!ip) return { problem: { object: what, reason: `status.podIP ${JSON.stringify(raw)} is not an IP address` } };
    if (!ips.includes(ip)) ips.push(ip);
  }
  ips.sort((a, b) => isIP(a) - isIP(b));

  const containers = Array.isArray(spec['containers'])
    ? spec['containers'].map((c) => str(record(c)['name'])).filter((n): n is string => n !== undefined)
    : [];
  return {
    pod: {
      uid,
      name,
      namespace,
      nodeName: str(spec['nodeName']),
      labels: stringMap(md['labels']),
      annotations: stringMap(md['annotations']),
      hostNetwork: spec['hostNetwork'] === true,
      containers,
      phase: str(status['phase']),
      ips,
      serviceAccount: str(spec['serviceAccountName']) ?? 'default',
    },
  };
}

/** Why a pod on this node is not in the mesh, or undefined if it is. */
export function exclusionReason(pod: ParsedPod, namespaceLabels: StringMap | undefined): string | undefined {
  if (pod.hostNetwork) return 'hostNetwork';
  if (pod.containers.includes('istio-proxy') || pod.annotations[SIDECAR_STATUS_ANNOTATION] !== undefined)
    return 'has a sidecar';
  if (pod.labels[LABEL_DATAPLANE_MODE] === 'none') return `label ${LABEL_DATAPLANE_MODE}=none`;
  if (pod.annotations[REDIRECTION_ANNOTATION] === 'disabled' || pod.labels[REDIRECTION_ANNOTATION] === 'disabled') {
    return `${REDIRECTION_ANNOTATION}: disabled`;
  }
  const podAmbient = pod.labels[LABEL_DATAPLANE_MODE] === 'ambient';
  const nsAmbient = namespaceLabels?.[LABEL_DATAPLANE_MODE] === 'ambient';
  if (!podAmbient && !nsAmbient) return 'neither the pod nor its namespace is labelled ambient';
  return undefined;
}

function isLive(pod: ParsedPod): boolean {
  // A pod that finished can have its IP reused by a new pod; a Pending pod with an IP already runs
  // its sandbox and may send traffic.
  return pod.phase !== 'Succeeded' && pod.phase !== 'Failed' && pod.ips.length > 0;
}

/**
 * The pod's DNS capture override: "true"/"false" in any case, as istio-cni's boolean annotations
 * (strconv.ParseBool also takes 1/0, t/f); anything else is no override.
 */
export function dnsCaptureOverride(annotations: StringMap): boolean | undefined {
  const v = annotations[DNS_CAPTURE_ANNOTATION]?.trim().toLowerCase();
  if (v === 'true' || v === 't' || v === '1') return true;
  if (v === 'false' || v === 'f' || v === '0') return false;
  return undefined;
}

const desired = (p: ParsedPod): DesiredPod => {
  const dnsCapture = dnsCaptureOverride(p.annotations);
  return {
    uid: p.uid,
    name: p.name,
    namespace: p.namespace,
    ips: p.ips,
    serviceAccount: p.serviceAccount,
    // Only when the pod says: a pod without the annotation looks as it did before DNS capture.
    ...(dnsCapture === undefined ? {} : { dnsCapture }),
  };
};

const byKey = (a: { namespace: string; name: string }, b: { namespace: string; name: string }): number =>
  a.namespace === b.namespace ? (a.name < b.name ? -1 : a.name > b.name ? 1 : 0) : a.namespace < b.namespace ? -1 : 1;

/**
 * What the node's maps should hold for this snapshot. Pure: same input, same output; bad objects
 * become `problems` (one per object) and never hide the good ones.
 */
export function computeDesiredState(snapshot: ClusterSnapshot, node: string): DesiredState {
  const problems: Problem[] = [];
  const namespaceLabels = new Map<string, StringMap>();
  for (const ns of snapshot.namespaces) {
    const name = str(record(ns.metadata)['name']);
    if (!name) {
      problems.push({ object: objectName(ns, 'namespace'), reason: 'metadata.name is missing' });
      continue;
    }
    namespaceLabels.set(name, stringMap(record(ns.metadata)['labels']));
  }

  const pods: ParsedPod[] = [];
  for (const obj of snapshot.pods) {
    const parsed = parsePod(obj);
    if ('problem' in parsed) {
      // Only complain about pods that are, or may be, ours.
      const nodeName = str(record(obj.spec)['nodeName']);
      if (nodeName === undefined || nodeName === node) problems.push(parsed.problem);
      continue;
    }
    if (parsed.pod.nodeName === node && isLive(parsed.pod)) pods.push(parsed.pod);
  }
  pods.sort(byKey);

  const ztunnels = pods.filter((p) => p.namespace === ZTUNNEL_NAMESPACE && p.labels['app'] === ZTUNNEL_APP_LABEL);
  if (ztunnels.length > 1) {
    // During a rolling update two can exist for a moment: prefer the one that is Running.
    ztunnels.sort((a, b) => Number(b.phase === 'Running') - Number(a.phase === 'Running'));
  }
  const zt = ztunnels[0];
  const ztunnel = zt ? desired(zt) : undefined;

  // IPs are keys of the pod map: two pods claiming one IP cannot both be right. The first in
  // namespace/name order keeps it; the others are reported.
  const ipOwner = new Map<string, ParsedPod>();
  for (const z of ztunnels) for (const ip of z.ips) ipOwner.set(ip, z);
  const ambientPods: DesiredPod[] = [];
  for (const pod of pods) {
    if (ztunnels.includes(pod)) continue;
    if (exclusionReason(pod, namespaceLabels.get(pod.namespace)) !== undefined) continue;
    const clash = pod.ips.map((ip) => [ip, ipOwner.get(ip)] as const).find(([, owner]) => owner !== undefined);
    if (clash) {
      problems.push({
        object: `pod ${pod.namespace}/${pod.name}`,
        reason: `IP ${clash[0]} is already used by pod ${clash[1]!.namespace}/${clash[1]!.name}`,
      });
      continue;
    }
    for (const ip of pod.ips) ipOwner.set(ip, pod);
    ambientPods.push(desired(pod));
  }
  return { node, ambientPods, ztunnel, problems };
}
