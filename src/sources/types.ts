// What a pod source (a pods file, a Kubernetes watch) hands to the loader: the cluster objects it
// currently knows, whole, as they arrived. Both sources check every object against one schema
// (src/state/schema.ts, via src/sources/validate.ts) and deliver only the valid ones, each invalid
// one logged with its reason; what the objects mean (membership, IP clashes) is src/state/desired.ts.

/** The subset of a Kubernetes object's shape ambpf reads. Everything is optional: input is untrusted. */
export interface KubeObjectLike {
  readonly apiVersion?: unknown;
  readonly kind?: unknown;
  readonly metadata?: {
    readonly name?: unknown;
    readonly namespace?: unknown;
    readonly uid?: unknown;
    readonly labels?: unknown;
    readonly annotations?: unknown;
    readonly resourceVersion?: unknown;
    readonly deletionTimestamp?: unknown;
  };
  readonly spec?: unknown;
  readonly status?: unknown;
}

export interface ClusterSnapshot {
  /** Pods of this node (a source may also deliver other nodes' pods; desired state filters by nodeName). */
  readonly pods: readonly KubeObjectLike[];
  readonly namespaces: readonly KubeObjectLike[];
}

export interface SourceHealth {
  /** True once the first complete list was delivered. */
  readonly synced: boolean;
  /** Milliseconds since the source last heard anything (event, bookmark, file change); undefined before the first. */
  readonly lastEventAgeMs: number | undefined;
  /** How often the source restarted its watch after an error. */
  readonly restarts: number;
}

export interface PodSource {
  /**
   * Starts delivering snapshots to `onSnapshot`: one after the first full sync (the returned promise
   * resolves after it was delivered), then one after every change (sources may coalesce bursts).
   */
  start(onSnapshot: (snapshot: ClusterSnapshot) => void | Promise<void>): Promise<void>;
  /** Stops watching; never touches the kernel state. */
  stop(): Promise<void>;
  health(): SourceHealth;
}
