// Pods and Namespaces each pod source must refuse, one fault each, with the field and the reason
// the log line must name (shared by the pods-file and the watch tests).

// Test objects are edited freely, field by field.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Json = Record<string, any>;

export const NODE = 'node-a';

export function validPod(name: string, namespace = 'shop', ip = '198.18.1.10'): Json {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, namespace, uid: `uid-${name}`, labels: { app: name } },
    spec: { nodeName: NODE, containers: [{ name: 'app', image: 'registry.invalid/app:1' }] },
    status: { phase: 'Running', podIP: ip, podIPs: [{ ip }] },
  };
}

export function validNamespace(name: string, labels: Record<string, string> = {}): Json {
  return { apiVersion: 'v1', kind: 'Namespace', metadata: { name, labels } };
}

export interface InvalidCase {
  readonly object: Json;
  /** What the log line must say: the object, the field, the reason. */
  readonly label: string;
  readonly field: string;
  readonly reason: RegExp;
}

/** A valid pod with one fault made by `edit`, and what its line must say. */
function broken(name: string, field: string, reason: RegExp, edit: (p: Json) => unknown): InvalidCase {
  const object = validPod(name, 'shop', '198.18.9.9');
  edit(object);
  return { object, label: `pod shop/${name}`, field, reason };
}

export const INVALID_PODS: readonly InvalidCase[] = [
  broken('no-spec', 'spec', /^missing \(object required\)$/, (p) => delete p['spec']),
  broken('status-string', 'status', /^expected object, got string "garbage"$/, (p) => (p['status'] = 'garbage')),
  broken('labels-list', 'metadata.labels', /^expected record, got an array$/, (p) => (p['metadata'].labels = ['app'])),
  broken('label-num', 'metadata.labels.a', /^expected string, got number 7$/, (p) => (p['metadata'].labels = { a: 7 })),
  broken('hostnet', 'spec.hostNetwork', /^expected boolean, got string "yes"$/, (p) => (p['spec'].hostNetwork = 'yes')),
  broken('phase-number', 'status.phase', /^expected string, got number 3$/, (p) => (p['status'].phase = 3)),
  broken('node-list', 'spec.nodeName', /^expected string, got an array$/, (p) => (p['spec'].nodeName = [NODE])),
  broken(
    'sa-obj',
    'spec.serviceAccountName',
    /^expected string, got an object$/,
    (p) => (p['spec'].serviceAccountName = {}),
  ),
  broken('bad-ip', 'status.podIP', /^"198\.19\.1\.300" is not an IP address$/, (p) => {
    p['status'].podIP = '198.19.1.300';
    p['status'].podIPs = [{ ip: '198.19.1.300' }];
  }),
  broken('no-uid', 'metadata.uid', /^missing \(string required\)$/, (p) => delete p['metadata'].uid),
  // A name made to forge a log line and recolour a terminal: it shows escaped.
  {
    ...broken('x', 'spec.hostNetwork', /^expected boolean, got number 1$/, (p) => {
      p['metadata'].name = 'evil\u001b[31m\nlevel=info';
      p['spec'].hostNetwork = 1;
    }),
    label: 'pod shop/evil\\u001b[31m\\u000alevel=info',
  },
];

export const INVALID_NAMESPACE: InvalidCase = {
  object: validNamespace('odd', { 'istio.io/dataplane-mode': true as unknown as string }),
  label: 'namespace odd',
  field: 'metadata.labels["istio.io/dataplane-mode"]',
  reason: /^expected string, got boolean true$/,
};
