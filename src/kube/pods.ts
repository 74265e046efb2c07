// The one write ambpf makes to the API: a patch of a pod's status subresource (the redirection
// annotation, src/agent/annotate.ts), the only write deploy/clusterrole.yaml grants.
import type { KubeConfig } from './config.ts';
import { requestJson } from './http.ts';

/** Content types of the patch kinds the API server takes (JSON patch is not used by ambpf). */
export const PatchStrategy = {
  MergePatch: 'application/merge-patch+json',
  StrategicMergePatch: 'application/strategic-merge-patch+json',
} as const;

export type PatchStrategyType = (typeof PatchStrategy)[keyof typeof PatchStrategy];

/** What ambpf patches: metadata (the uid as a precondition, annotations; null removes one). */
export interface PodStatusPatchBody {
  readonly metadata: {
    readonly uid?: string;
    readonly annotations?: Readonly<Record<string, string | null>>;
  };
}

export interface PodStatusPatch {
  readonly namespace: string;
  readonly name: string;
  readonly body: PodStatusPatchBody;
  readonly strategy: PatchStrategyType;
  /** Recorded in managedFields as the writer. */
  readonly fieldManager: string;
  readonly timeoutMs: number;
}

export class PodsApi {
  readonly #kc: KubeConfig;

  constructor(kc: KubeConfig) {
    this.#kc = kc;
  }

  /** PATCH /api/v1/namespaces/{ns}/pods/{name}/status; resolves with the pod the server returned. */
  patchNamespacedPodStatus(p: PodStatusPatch): Promise<unknown> {
    const path =
      `/api/v1/namespaces/${encodeURIComponent(p.namespace)}/pods/${encodeURIComponent(p.name)}/status` +
      `?fieldManager=${encodeURIComponent(p.fieldManager)}`;
    const annotations = p.body.metadata.annotations;
    if (annotations) this.#kc.writes.record(p.namespace, p.name, annotations);
    return requestJson(this.#kc, {
      method: 'PATCH',
      path,
      body: p.body,
      contentType: p.strategy,
      timeoutMs: p.timeoutMs,
    });
  }
}
