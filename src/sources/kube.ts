// The Kubernetes watch as a PodSource: Pods of this node (field selector spec.nodeName=<node>; the
// node's ztunnel pod is one of them) and all Namespaces (their labels decide ambient membership),
// mirrored by two reflectors and delivered as whole snapshots. Bursts of events (a deployment
// rolling, a relist) are coalesced into one snapshot; deliveries never overlap.
//
// A pod event that changes nothing the loader reads is no change, nor is the echo of the agent's own
// redirection annotation patches (pending -> enabled, one per pod, src/kube/own-writes.ts): at 250
// pods each would otherwise start a full reconcile pass.
import { isDeepStrictEqual } from 'node:util';
import type { KubeConfig } from '../kube/config.ts';
import { logger, type Logger } from '../log.ts';
import { Reflector, type ReflectorCounters } from '../kube/reflector.ts';
import { REDIRECTION_ANNOTATION } from '../state/desired.ts';
import type { ClusterSnapshot, KubeObjectLike, PodSource, SourceHealth } from './types.ts';
import { SnapshotValidator } from './validate.ts';

const moduleLog = logger('kube-source');

export interface KubeSourceOptions {
  readonly kubeConfig: KubeConfig;
  readonly nodeName: string;
  /** Wait this long after a change for more before delivering (ms). */
  readonly coalesceMs?: number;
  /** Relist when a watch heard no event or bookmark for this long (ms). */
  readonly staleAfterMs?: number;
  readonly backoffBaseMs?: number;
  readonly backoffMaxMs?: number;
  /** Server-side watch timeout: each watch lasts a random [t, 2t] seconds, then resumes. */
  readonly watchTimeoutSeconds?: number;
  readonly listTimeoutMs?: number;
  readonly listPageSize?: number;
  /** Where its lines go (default: the process logger, component kube-source). */
  readonly log?: Logger;
}

/** Totals for metrics (ambpf_watch_restarts_total, ...), summed over the pod and namespace watches. */
export interface KubeSourceCounters {
  readonly watchRestarts: number;
  readonly relists: number;
  readonly errors: number;
  readonly events: number;
  readonly snapshots: number;
  readonly snapshotErrors: number;
  /** Objects left out of the snapshots because they failed src/state/schema.ts (each counted once). */
  readonly invalidObjects: number;
  /** Epoch ms of the last completed list, event or bookmark; undefined before the first. */
  readonly lastEventAt: number | undefined;
}

export interface KubeSource extends PodSource {
  counters(): KubeSourceCounters;
}

export const KUBE_SOURCE_DEFAULTS = {
  coalesceMs: 25,
  staleAfterMs: 3 * 60_000,
  backoffBaseMs: 500,
  backoffMaxMs: 30_000,
  watchTimeoutSeconds: 300,
  listTimeoutMs: 60_000,
  listPageSize: 500,
} as const;

export function createKubeSource(options: KubeSourceOptions): KubeSource {
  const { log: injected, ...rest } = options;
  const o = { ...KUBE_SOURCE_DEFAULTS, ...definedOnly(rest), kubeConfig: rest.kubeConfig, nodeName: rest.nodeName };
  const log = injected ?? moduleLog;
  const validator = new SnapshotValidator(log);
  let deliver: (s: ClusterSnapshot) => void | Promise<void> = () => {};
  let ready = false;
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  let watchdog: NodeJS.Timeout | undefined;
  let delivering = false;
  let dirty = false;
  let snapshots = 0;
  let snapshotErrors = 0;

  const common = {
    kubeConfig: o.kubeConfig,
    backoff: { baseMs: o.backoffBaseMs, maxMs: o.backoffMaxMs },
    staleAfterMs: o.staleAfterMs,
    watchTimeoutSeconds: o.watchTimeoutSeconds,
    listTimeoutMs: o.listTimeoutMs,
    pageSize: o.listPageSize,
    log,
    onChange: schedule,
  };
  const pods = new Reflector({
    ...common,
    path: '/api/v1/pods',
    resource: 'pods',
    fieldSelector: `spec.nodeName=${o.nodeName}`,
    same: noNews(o.kubeConfig),
  });
  const namespaces = new Reflector({ ...common, path: '/api/v1/namespaces', resource: 'namespaces' });
  const reflectors = [pods, namespaces];

  function snapshot(): ClusterSnapshot {
    return validator.snapshot(pods.items(), namespaces.items());
  }

  function schedule(): void {
    dirty = true;
    if (!ready || stopped || timer || delivering) return;
    timer = setTimeout(() => {
      timer = undefined;
      void flush();
    }, o.coalesceMs);
  }

  async function flush(): Promise<void> {
    if (delivering || stopped) return;
    delivering = true;
    try {
      while (dirty && !stopped) {
        dirty = false;
        try {
          await deliver(snapshot());
          snapshots++;
        } catch (err) {
          // The consumer (reconcile) failed; the next change or relist delivers again.
          snapshotErrors++;
          log.error({ err: (err as Error).message }, 'snapshot consumer failed');
        }
      }
    } finally {
      delivering = false;
    }
  }

  function sum(key: keyof ReflectorCounters): number {
    return reflectors.reduce((n, r) => n + ((r.counters[key] as number | undefined) ?? 0), 0);
  }

  return {
    async start(onSnapshot) {
      deliver = onSnapshot;
      log.info({ node: o.nodeName, server: o.kubeConfig.server }, 'watching pods of this node and namespaces');
      watchdog = setInterval(
        () => {
          for (const r of reflectors) r.checkStale();
        },
        Math.max(50, Math.min(o.staleAfterMs / 4, 10_000)),
      );
      watchdog.unref();
      try {
        await Promise.all(reflectors.map((r) => r.start()));
      } catch (err) {
        await this.stop();
        throw err;
      }
      if (stopped) return;
      // The first snapshot is delivered before start() resolves (the PodSource contract).
      dirty = true;
      await flush();
      ready = true;
      log.info({ pods: pods.items().length, namespaces: namespaces.items().length }, 'initial sync delivered');
      if (dirty) schedule();
    },
    async stop() {
      stopped = true;
      if (timer) clearTimeout(timer);
      if (watchdog) clearInterval(watchdog);
      await Promise.all(reflectors.map((r) => r.stop()));
    },
    health(): SourceHealth {
      const heard = Math.max(0, ...reflectors.map((r) => r.counters.lastEventAt ?? 0));
      return {
        synced: ready,
        lastEventAgeMs: heard > 0 ? Math.max(0, Date.now() - heard) : undefined,
        restarts: sum('watchRestarts'),
      };
    },
    counters(): KubeSourceCounters {
      const last = Math.max(0, ...reflectors.map((r) => r.counters.lastEventAt ?? 0));
      return {
        watchRestarts: sum('watchRestarts'),
        relists: sum('relists'),
        errors: sum('errors'),
        events: sum('events'),
        snapshots,
        snapshotErrors,
        invalidObjects: validator.invalidTotal,
        lastEventAt: last > 0 ? last : undefined,
      };
    },
  };
}

/**
 * Two versions of a pod that differ at most in what the loader does not read (apiVersion/kind,
 * metadata.resourceVersion, managedFields) and in the redirection annotation, which the agent writes.
 */
export function sameButRedirection(before: KubeObjectLike, after: KubeObjectLike): boolean {
  return isDeepStrictEqual(withoutWritten(before), withoutWritten(after));
}

function withoutWritten(o: KubeObjectLike): object {
  // apiVersion and kind too: a list's items come without them, a watch event's object with them.
  const { apiVersion: _a, kind: _k, ...body } = o;
  const {
    resourceVersion: _rv,
    managedFields: _mf,
    annotations,
    ...meta
  } = (o.metadata ?? {}) as Record<string, unknown>;
  const { [REDIRECTION_ANNOTATION]: _r, ...others } = (annotations ?? {}) as Record<string, unknown>;
  // No annotations and none but the redirection one read alike (an empty map either way).
  return { ...body, metadata: { ...meta, ...(Object.keys(others).length > 0 ? { annotations: others } : {}) } };
}

function redirectionOf(o: KubeObjectLike): unknown {
  return (o.metadata?.annotations as Record<string, unknown> | undefined)?.[REDIRECTION_ANNOTATION];
}

/**
 * A pod event that is no news: nothing the loader reads changed, or only the redirection annotation,
 * to what this process itself wrote (its echo). Someone else's edit of the annotation is news.
 */
function noNews(kc: KubeConfig): (before: KubeObjectLike, after: KubeObjectLike) => boolean {
  return (before, after) => {
    if (!sameButRedirection(before, after)) return false;
    if (redirectionOf(before) === redirectionOf(after)) return true;
    const m = after.metadata;
    return kc.writes.takeEcho(String(m?.namespace), String(m?.name), m?.annotations);
  };
}

function definedOnly<T extends object>(obj: T): Partial<T> {
  return Object.fromEntries(Object.entries(obj).filter(([, v]) => v !== undefined)) as Partial<T>;
}
