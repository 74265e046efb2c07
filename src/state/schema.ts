// The shape of the Pods and Namespaces ambpf reads, as zod schemas: the one check both pod sources
// (the pods file, the Kubernetes watch) run on every object before it reaches the desired state.
// Only the fields ambpf reads are checked (src/state/desired.ts and src/sources/*.ts read them);
// everything else passes untouched, so a newer API server's fields never make a pod invalid.
// An object that fails is reported whole: one `InvalidObject` naming it, the field and the reason.
//
// null counts as absent for optional fields, as in Kubernetes' own decoding (YAML's `labels:` with
// nothing after it is null); a required object (spec, metadata) must be there.
import { isIP } from 'node:net';
import { z } from 'zod';

/** A Kubernetes name: a non-empty string. */
const name = z.string().min(1, 'empty');
/** Labels and annotations: a map of strings to strings. */
const stringMap = z.record(z.string(), z.string()).nullish();
const ip = z.string().refine((v) => isIP(v) !== 0, 'not an IP address');

export const podSchema = z.looseObject({
  metadata: z.looseObject({
    name,
    namespace: name,
    // The pod's cgroup is found by its uid: without one it cannot be placed on the node.
    uid: name,
    labels: stringMap,
    annotations: stringMap,
  }),
  spec: z.looseObject({
    nodeName: z.string().nullish(),
    hostNetwork: z.boolean().nullish(),
    // ZDS WorkloadInfo names the pod's service account (Kubernetes defaults it to "default").
    serviceAccountName: z.string().nullish(),
    // Container names tell a sidecar (istio-proxy) apart.
    containers: z.array(z.looseObject({ name: z.string().nullish() })).nullish(),
  }),
  status: z
    .looseObject({
      phase: z.string().nullish(),
      podIP: ip.nullish(),
      podIPs: z.array(z.looseObject({ ip })).nullish(),
    })
    .nullish(),
});

export const namespaceSchema = z.looseObject({
  metadata: z.looseObject({ name, labels: stringMap }),
});

export type Pod = z.infer<typeof podSchema>;
export type Namespace = z.infer<typeof namespaceSchema>;

/** An object that failed its schema: which one, the first field at fault and why, then any others. */
export interface InvalidObject {
  /** "pod <namespace>/<name>" or "namespace <name>", control characters escaped. */
  readonly object: string;
  /** Dotted path of the field at fault, e.g. "metadata.labels.app" or "spec.containers[0].name". */
  readonly field: string;
  readonly reason: string;
  /** The other faults of the same object, "field: reason" each. */
  readonly others: readonly string[];
}

export type Checked<T> = { readonly ok: T } | { readonly invalid: InvalidObject };

/** Kinds the sources deliver, with their schema. */
const SCHEMAS = { pod: podSchema, namespace: namespaceSchema } as const;
export type Kind = keyof typeof SCHEMAS;

const MAX_SHOWN = 100;
// Matching control characters is the point here.
// eslint-disable-next-line no-control-regex
const UNPRINTABLE = /[\u0000-\u001f\u007f-\u009f\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;

/**
 * `text` safe for a log line: C0/C1 control characters, DEL and the bidirectional overrides that
 * can make a terminal show something else than what is there become \uXXXX; long text is cut.
 */
export function printable(text: string): string {
  const escaped = text.replace(UNPRINTABLE, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
  return escaped.length > MAX_SHOWN ? `${escaped.slice(0, MAX_SHOWN)}...` : escaped;
}

/** A value as a reason shows it: its JSON type, and a short form of a scalar. */
function shown(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'object') return 'an object';
  if (typeof value === 'string') return `string ${printable(JSON.stringify(value))}`;
  return `${typeof value} ${printable(String(value))}`;
}

/** Dotted; keys that are not identifiers quoted: metadata.labels["istio.io/dataplane-mode"], spec.containers[0]. */
function pathText(path: readonly PropertyKey[]): string {
  let out = '';
  for (const p of path) {
    if (typeof p === 'number') out += `[${p}]`;
    else if (typeof p === 'string' && /^[A-Za-z_][A-Za-z0-9_]*$/.test(p)) out += `${out === '' ? '' : '.'}${p}`;
    else out += `[${printable(JSON.stringify(String(p)))}]`;
  }
  return out === '' ? '(the object)' : out;
}

function reasonOf(issue: z.core.$ZodIssue): string {
  if (issue.code === 'invalid_type') {
    return issue.input === undefined
      ? `missing (${issue.expected} required)`
      : `expected ${issue.expected}, got ${shown(issue.input)}`;
  }
  // The refinements' and minimums' messages say what the value is not ("not an IP address", "empty").
  if (issue.code === 'custom' || issue.code === 'too_small') {
    return issue.input === undefined
      ? issue.message
      : `${printable(JSON.stringify(issue.input) ?? '')} is ${issue.message}`;
  }
  return issue.message;
}

/** "pod ns/name" from whatever the raw object holds: a missing or odd name is said as such. */
export function objectLabel(kind: Kind, raw: unknown): string {
  const md = raw !== null && typeof raw === 'object' ? (raw as { metadata?: unknown }).metadata : undefined;
  const field = (key: string): string | undefined => {
    const v = md !== null && typeof md === 'object' ? (md as Record<string, unknown>)[key] : undefined;
    return typeof v === 'string' && v !== '' ? printable(v) : undefined;
  };
  const nm = field('name') ?? '<no name>';
  if (kind === 'namespace') return `namespace ${nm}`;
  return `pod ${field('namespace') ?? '<no namespace>'}/${nm}`;
}

/** Checks one raw object against its kind's schema. */
export function check<K extends Kind>(kind: K, raw: unknown): Checked<z.infer<(typeof SCHEMAS)[K]>> {
  const r = SCHEMAS[kind].safeParse(raw, { reportInput: true });
  if (r.success) return { ok: r.data as z.infer<(typeof SCHEMAS)[K]> };
  const [first, ...rest] = r.error.issues.map((i) => ({ field: pathText(i.path), reason: reasonOf(i) }));
  return {
    invalid: {
      object: objectLabel(kind, raw),
      field: first?.field ?? '(the object)',
      reason: first?.reason ?? 'invalid',
      others: rest.map((i) => `${i.field}: ${i.reason}`),
    },
  };
}

/** The invalid object as one sentence. */
export function describeInvalid(i: InvalidObject): string {
  const more = i.others.length > 0 ? `; also ${i.others.join('; ')}` : '';
  return `${i.object}: ${i.field}: ${i.reason}${more}`;
}
