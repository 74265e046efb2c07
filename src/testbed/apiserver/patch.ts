// PATCH of pods/status with a JSON merge patch (RFC 7386), as kube-apiserver applies it: the patch is
// merged into the stored pod, then the status subresource's strategy keeps what that endpoint may not
// change (spec, ownerReferences, deletion timestamp: pkg/registry/core/pod/strategy.go,
// podStatusStrategy.PrepareForUpdate) and the update is validated like ValidatePodStatusUpdate
// (name/namespace must match the URL, uid and creationTimestamp are immutable, annotation and label
// values are strings). A patch carrying metadata.resourceVersion is an optimistic lock. Metadata and
// status changes go through, which is why istio-cni (and ambpf) set `ambient.istio.io/redirection`
// there: pods/status is a smaller grant than pods.
import { isDeepStrictEqual } from 'node:util';
import type { KubeObject } from './store.ts';

export const MERGE_PATCH = 'application/merge-patch+json';

type Json = Record<string, unknown>;

const isObject = (v: unknown): v is Json => v !== null && typeof v === 'object' && !Array.isArray(v);

/** RFC 7386: objects merge key by key, null removes a key, anything else (arrays too) replaces. */
export function mergePatch(target: unknown, patch: unknown): unknown {
  if (!isObject(patch)) return structuredClone(patch);
  const out: Json = isObject(target) ? { ...target } : {};
  for (const [key, value] of Object.entries(patch)) {
    if (value === null) delete out[key];
    else out[key] = mergePatch(out[key], value);
  }
  return out;
}

/** Why the server refuses a patch: HTTP code, Status reason, message (the real server's wording). */
export interface PatchRefusal {
  readonly code: number;
  readonly reason: string;
  readonly message: string;
}

export type PatchResult =
  | { readonly ok: true; readonly object: KubeObject; readonly changed: boolean }
  | { readonly ok: false; readonly refusal: PatchRefusal };

const refuse = (code: number, reason: string, message: string): PatchResult => ({
  ok: false,
  refusal: { code, reason, message },
});

/** Every value of a string map (labels, annotations) is a string; the field path of the first that is not. */
function nonStringValue(map: unknown, path: string): string | undefined {
  if (map === undefined) return undefined;
  if (!isObject(map)) return path;
  for (const [k, v] of Object.entries(map)) if (typeof v !== 'string') return `${path}.${k}`;
  return undefined;
}

/** Applies `patch` (the request body, parsed) to `pod` through the pods/status endpoint at `name` in `namespace`. */
export function patchPodStatus(pod: KubeObject, patch: unknown, namespace: string, name: string): PatchResult {
  if (!isObject(patch)) return refuse(400, 'BadRequest', 'the body of a merge patch must be a JSON object');
  const patchMeta = isObject(patch['metadata']) ? patch['metadata'] : {};
  const rv = patchMeta['resourceVersion'];
  if (rv !== undefined && rv !== pod.metadata['resourceVersion']) {
    return refuse(
      409,
      'Conflict',
      `Operation cannot be fulfilled on pods "${name}": the object has been modified; please apply your changes to the latest version and try again`,
    );
  }
  const merged = mergePatch(pod, patch) as KubeObject;
  const meta = isObject(merged.metadata) ? merged.metadata : {};
  // The handler's checkName: the object must still be the one the URL names.
  if (meta['name'] !== name)
    return refuse(
      400,
      'BadRequest',
      `the name of the object (${String(meta['name'])}) does not match the name on the URL (${name})`,
    );
  if (meta['namespace'] !== namespace) {
    return refuse(
      400,
      'BadRequest',
      `the namespace of the object (${String(meta['namespace'])}) does not match the namespace on the URL (${namespace})`,
    );
  }
  // ValidateObjectMetaUpdate: a patch naming another uid (a pod re-created under the same name) fails
  // here rather than changing the new pod.
  for (const field of ['uid', 'creationTimestamp'] as const) {
    if (meta[field] !== pod.metadata[field]) {
      return refuse(
        422,
        'Invalid',
        `Pod "${name}" is invalid: metadata.${field}: Invalid value: ${JSON.stringify(meta[field])}: field is immutable`,
      );
    }
  }
  for (const key of ['annotations', 'labels'] as const) {
    const bad = nonStringValue(meta[key], `metadata.${key}`);
    if (bad) return refuse(400, 'BadRequest', `json: cannot unmarshal into Go struct field ${bad} of type string`);
  }
  // podStatusStrategy.PrepareForUpdate: this endpoint cannot change the spec or owners, nor delete.
  merged['spec'] = structuredClone(pod['spec']);
  for (const key of ['ownerReferences', 'deletionTimestamp', 'deletionGracePeriodSeconds'] as const) {
    if (pod.metadata[key] === undefined) delete meta[key];
    else meta[key] = structuredClone(pod.metadata[key]);
  }
  merged.metadata = meta;
  // The storage layer writes nothing for an update that changes nothing: no new resourceVersion,
  // no watch event (etcd3 store GuaranteedUpdate compares the encoded objects).
  const changed = !isDeepStrictEqual(withoutVersion(merged), withoutVersion(pod));
  return { ok: true, object: merged, changed };
}

function withoutVersion(o: KubeObject): KubeObject {
  const { resourceVersion: _rv, ...metadata } = o.metadata;
  return { ...o, metadata };
}
