// Tells istiod which pods ztunnel serves. istiod sends HBONE only to pods annotated
// `ambient.istio.io/redirection: enabled` (pilot/pkg/serviceregistry/ambient/workloads.go in istio);
// istio-cni sets `pending` while the pod is captured but ztunnel has not taken it, `enabled` once it
// has, and removes the annotation when the pod leaves the mesh (cni/pkg/util/podutil.go). ambpf does
// the same, with the same request: a JSON merge patch on the pods/status subresource (a smaller grant
// than pods; the only write in deploy/clusterrole.yaml).
//
// The datapath never waits for this: set() records what the API server should show and returns; one
// patch per pod is in flight at a time, a few pods at once, each sent only when the value differs
// from what the server is known to have, retried with capped backoff while the API server fails. The
// patch names the pod's uid: a pod re-created under the same name (StatefulSets) is a different pod,
// and the server refuses the patch (uid is immutable) instead of annotating the wrong one.
import type { KubeConfig } from '../kube/config.ts';
import { KubeApiError } from '../kube/errors.ts';
import { PatchStrategy, PodsApi } from '../kube/pods.ts';
import type { Logger } from 'pino';
import { logger } from '../log.ts';
import { backoffDelay, type BackoffPolicy } from '../kube/backoff.ts';
import { describeError } from '../errors.ts';
import type { HandoffState } from './handoff.ts';
import type { ClusterSnapshot } from '../sources/types.ts';

export const REDIRECTION_ANNOTATION = 'ambient.istio.io/redirection';

export type RedirectionValue = 'pending' | 'enabled';

export interface PodRef {
  readonly namespace: string;
  readonly name: string;
  readonly uid: string;
}

/** What the agent tells the API server about a pod's redirection; `null` removes the annotation. */
export interface PodAnnotator {
  set(pod: PodRef, value: RedirectionValue | null): void;
}

/** The annotation for a pod in a ZDS state: `enabled` only once ztunnel acked it, `pending` while it is captured but not served. */
export function redirectionFor(state: HandoffState): RedirectionValue {
  return state === 'acked' ? 'enabled' : 'pending';
}

export interface KubePodAnnotatorOptions {
  readonly kubeConfig: KubeConfig;
  readonly log?: Logger;
  /** Retry delays after a failed patch (default 500 ms doubling to 30 s, jittered). */
  readonly backoff?: BackoffPolicy;
  /** A patch with no answer after this long counts as failed (default 10 s). */
  readonly requestTimeoutMs?: number;
  /** Patches in flight at once, over all pods (default 4): a restart on a full node does not flood the API server. */
  readonly maxInFlight?: number;
  readonly random?: () => number;
}

export interface AnnotatorStats {
  /** Patches the server accepted. */
  readonly patched: number;
  /** Patches that failed and were (or will be) retried. */
  readonly failed: number;
  /** Pods found deleted or replaced (404, or the uid no longer matches): nothing more to do for them. */
  readonly gone: number;
  /** Pods whose annotation is not yet what it should be. */
  readonly outstanding: number;
}

export const ANNOTATOR_DEFAULTS = {
  backoff: { baseMs: 500, maxMs: 30_000 },
  requestTimeoutMs: 10_000,
  maxInFlight: 4,
} as const;

interface Entry {
  pod: PodRef;
  want: RedirectionValue | null;
  /** What the API server shows, as far as this process knows; undefined = unknown (never patched or observed). */
  have: RedirectionValue | null | undefined;
  inflight: boolean;
  /** Consecutive failures: the backoff exponent. */
  failures: number;
  retry: NodeJS.Timeout | undefined;
  /** 404 or uid mismatch: this uid will never exist again, so nothing is sent for it any more. */
  gone: boolean;
}

export class KubePodAnnotator implements PodAnnotator {
  readonly #api: PodsApi;
  readonly #log: Logger;
  readonly #backoff: BackoffPolicy;
  readonly #timeoutMs: number;
  readonly #maxInFlight: number;
  readonly #random: () => number;
  readonly #pods = new Map<string, Entry>();
  /** uids waiting for a patch slot, in arrival order. */
  readonly #queue = new Set<string>();
  /** What the last observe() saw on the server, for pods with no entry yet. */
  #seen = new Map<string, RedirectionValue | null>();
  #inflight = 0;
  #closed = false;
  #idle: Array<() => void> = [];
  #stats = { patched: 0, failed: 0, gone: 0 };

  constructor(o: KubePodAnnotatorOptions) {
    this.#api = new PodsApi(o.kubeConfig);
    this.#log = o.log ?? logger('annotate');
    this.#backoff = o.backoff ?? ANNOTATOR_DEFAULTS.backoff;
    this.#timeoutMs = o.requestTimeoutMs ?? ANNOTATOR_DEFAULTS.requestTimeoutMs;
    this.#maxInFlight = Math.max(1, o.maxInFlight ?? ANNOTATOR_DEFAULTS.maxInFlight);
    this.#random = o.random ?? Math.random;
  }

  set(pod: PodRef, value: RedirectionValue | null): void {
    if (this.#closed) return;
    let e = this.#pods.get(pod.uid);
    if (!e) {
      const have = this.#seen.get(pod.uid);
      e = { pod, want: value, have, inflight: false, failures: 0, retry: undefined, gone: false };
      this.#pods.set(pod.uid, e);
    }
    e.pod = pod;
    e.want = value;
    this.#schedule(e);
  }

  /**
   * What the API server shows now, from the pod watch: each pod of the node with its annotation
   * (null when absent). A pod patched before this process started is then not patched again for
   * the same value, and an annotation someone else changed is put back.
   */
  observe(pods: ReadonlyArray<{ readonly pod: PodRef; readonly value: RedirectionValue | null }>): void {
    if (this.#closed) return;
    this.#seen = new Map(pods.map((p) => [p.pod.uid, p.value]));
    for (const e of this.#pods.values()) {
      // A patch in flight answers for itself; the watch may not have seen it yet.
      if (e.inflight || !this.#seen.has(e.pod.uid)) continue;
      e.have = this.#seen.get(e.pod.uid);
      this.#schedule(e);
    }
  }

  stats(): AnnotatorStats {
    let outstanding = 0;
    for (const e of this.#pods.values()) if (!e.gone && e.want !== e.have) outstanding++;
    return { ...this.#stats, outstanding };
  }

  /** Resolves once no patch is in flight or queued (retries waiting on backoff do not count). */
  idle(): Promise<void> {
    if (this.#inflight === 0 && this.#queue.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.#idle.push(resolve));
  }

  /** Stops retrying and sending; waits for the patches in flight (each bounded by the request timeout). */
  async close(): Promise<void> {
    this.#closed = true;
    this.#queue.clear();
    for (const e of this.#pods.values()) if (e.retry) clearTimeout(e.retry);
    await this.idle();
  }

  /** Queues `e` if the server needs to hear from us, drops it if there is nothing left to remember. */
  #schedule(e: Entry): void {
    if (e.gone) {
      // The pod left: its tombstone can go too.
      if (e.want === null && !e.inflight) this.#forget(e);
      return;
    }
    if (e.want === e.have) {
      this.#queue.delete(e.pod.uid);
      if (e.want === null && !e.inflight) this.#forget(e);
      return;
    }
    // In flight: its completion looks again. Backing off: the timer does.
    if (e.inflight || e.retry) return;
    this.#queue.add(e.pod.uid);
    this.#pump();
  }

  #forget(e: Entry): void {
    if (e.retry) clearTimeout(e.retry);
    this.#queue.delete(e.pod.uid);
    this.#pods.delete(e.pod.uid);
  }

  #pump(): void {
    while (!this.#closed && this.#inflight < this.#maxInFlight && this.#queue.size > 0) {
      const uid = this.#queue.values().next().value!;
      this.#queue.delete(uid);
      const e = this.#pods.get(uid);
      if (e) void this.#patch(e);
    }
    if (this.#inflight === 0 && this.#queue.size === 0) {
      for (const resolve of this.#idle.splice(0)) resolve();
    }
  }

  async #patch(e: Entry): Promise<void> {
    const { pod } = e;
    const value = e.want;
    e.inflight = true;
    this.#inflight++;
    try {
      await this.#send(pod, value);
      e.have = value;
      e.failures = 0;
      this.#stats.patched++;
      this.#log.debug({ pod: `${pod.namespace}/${pod.name}`, uid: pod.uid, value }, 'redirection annotation set');
    } catch (err) {
      this.#failed(e, value, err);
    } finally {
      e.inflight = false;
      this.#inflight--;
      if (!this.#closed) this.#schedule(e);
      this.#pump();
    }
  }

  #failed(e: Entry, value: RedirectionValue | null, err: unknown): void {
    const { pod } = e;
    // Only an answer from the server has a status; a timeout or a refused connection has none.
    const code = err instanceof KubeApiError && err.code !== 0 ? err.code : undefined;
    const where = { pod: `${pod.namespace}/${pod.name}`, uid: pod.uid, value };
    // 404: the pod is deleted. 409/422: the name now belongs to another pod (our uid precondition
    // failed). Either way this uid is done; annotating again would never succeed.
    if (code === 404 || code === 409 || code === 422) {
      e.gone = true;
      this.#stats.gone++;
      this.#log.debug({ ...where, code }, 'pod deleted or replaced: its annotation is moot');
      return;
    }
    e.failures++;
    this.#stats.failed++;
    const delay = backoffDelay(this.#backoff, e.failures - 1, this.#random);
    // The first failure and then every tenth are warnings: an API server outage on a full node
    // would otherwise write a line per pod per retry.
    const level = e.failures === 1 || e.failures % 10 === 0 ? 'warn' : 'debug';
    this.#log[level](
      { ...where, code, err: whyFailed(err), failures: e.failures, retryInMs: delay },
      code === 401 || code === 403
        ? "the API server refused the annotation patch: does ambpf's ClusterRole grant patch on pods/status? retrying"
        : 'annotation patch failed, retrying',
    );
    e.retry = setTimeout(() => {
      e.retry = undefined;
      this.#schedule(e);
    }, delay);
    e.retry.unref();
  }

  async #send(pod: PodRef, value: RedirectionValue | null): Promise<void> {
    // A merge patch: only this annotation changes. Naming the uid makes it a precondition.
    const body = { metadata: { uid: pod.uid, annotations: { [REDIRECTION_ANNOTATION]: value } } };
    await this.#api.patchNamespacedPodStatus({
      namespace: pod.namespace,
      name: pod.name,
      body,
      strategy: PatchStrategy.MergePatch,
      fieldManager: 'ambpf',
      timeoutMs: this.#timeoutMs,
    });
  }
}

/** One line for a failed patch: the status, the Status reason and message the server sent. */
function whyFailed(err: unknown): string {
  if (!(err instanceof KubeApiError) || err.code === 0) return describeError(err);
  const reason = err.reason ? ` ${err.reason}` : '';
  return `HTTP ${err.code}${reason}${err.statusMessage ? `: ${err.statusMessage}` : ''}`;
}

/**
 * A pod of this node that carries `ambient.istio.io/redirection` but is not in the mesh any more (it
 * left while no agent ran, or an older agent crashed before removing it): istiod would keep sending
 * it HBONE. Feeds what the watch shows to the annotator (so nothing is patched twice) and removes the
 * stale ones; pods in the mesh are left to the handoff.
 */
export function clearStaleRedirection(
  annotator: KubePodAnnotator,
  snapshot: ClusterSnapshot,
  ambientUids: ReadonlySet<string>,
  node: string,
): void {
  const seen: Array<{ pod: PodRef; value: RedirectionValue | null }> = [];
  const stale: PodRef[] = [];
  for (const o of snapshot.pods) {
    const m = o.metadata;
    const spec = o.spec as { nodeName?: unknown } | undefined;
    if (!m || typeof m.uid !== 'string' || typeof m.name !== 'string' || typeof m.namespace !== 'string') continue;
    if (spec?.nodeName !== node) continue;
    const raw = (m.annotations as Record<string, unknown> | undefined)?.[REDIRECTION_ANNOTATION];
    const value = raw === 'enabled' || raw === 'pending' ? raw : null;
    const pod = { uid: m.uid, name: m.name, namespace: m.namespace };
    seen.push({ pod, value });
    if (value !== null && !ambientUids.has(m.uid)) stale.push(pod);
  }
  // What the server has first, so that set(null) sees an annotation to remove.
  annotator.observe(seen);
  for (const pod of stale) annotator.set(pod, null);
}
