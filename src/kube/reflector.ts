// Keeps one resource (pods of a node, or namespaces) mirrored from the API server, and never lets
// the mirror go silently stale. The list+watch itself is @kubernetes/client-node's ListWatch; around
// it this adds what that class leaves out (see its issues #596 and #958):
//  - ListWatch gives up for good on any error but 410: restart it with capped exponential backoff;
//  - a staleness watchdog: no event or bookmark within `staleAfterMs` -> throw the watch away, relist;
//  - watches ask for bookmarks and a server-side timeout (ListWatch sets neither), so a quiet
//    resource still proves the stream is alive and streams are renewed now and then.
import {
  ADD,
  DELETE,
  ERROR,
  ListWatch,
  UPDATE,
  Watch,
  type KubeConfig,
  type KubernetesListObject,
  type KubernetesObject,
} from '@kubernetes/client-node';
import type { Logger } from '../log.ts';
import type { KubeObjectLike } from '../sources/types.ts';
import { backoffDelay, type BackoffPolicy } from './backoff.ts';
import { KubeAuthError, httpStatusOf, reasonOf } from './errors.ts';
import { listRaw } from './list.ts';

export interface ReflectorCounters {
  watchRestarts: number;
  relists: number;
  errors: number;
  events: number;
  /** Last completed list, event or bookmark (epoch ms). */
  lastEventAt: number | undefined;
}

export interface ReflectorOptions {
  readonly kubeConfig: KubeConfig;
  /** Collection path, e.g. /api/v1/pods. */
  readonly path: string;
  /** For logs: "pods", "namespaces". */
  readonly resource: string;
  readonly fieldSelector?: string | undefined;
  readonly labelSelector?: string | undefined;
  readonly backoff: BackoffPolicy;
  readonly staleAfterMs: number;
  /** Watches ask the server to end them after a random time in [t, 2t] seconds, like client-go. */
  readonly watchTimeoutSeconds: number;
  readonly listTimeoutMs: number;
  readonly pageSize: number;
  readonly log: Logger;
  /** Called after anything in the mirror changed (including a completed relist). */
  readonly onChange: () => void;
  readonly now?: () => number;
}

const WATCH_TYPES = new Set(['ADDED', 'MODIFIED', 'DELETED', 'BOOKMARK', 'ERROR']);

/** Why ListWatch cannot take this event (it would throw in an async handler: an unhandled rejection), or undefined if it can. */
function malformed(type: unknown, obj: unknown): string | undefined {
  if (typeof type !== 'string' || !WATCH_TYPES.has(type)) return `unknown event type ${JSON.stringify(type)}`;
  if (obj === null || typeof obj !== 'object') return 'event without an object';
  if (type === 'ERROR') return undefined;
  const meta = (obj as { metadata?: unknown }).metadata;
  if (meta === null || typeof meta !== 'object') return 'object without metadata';
  if (type !== 'BOOKMARK' && typeof (meta as { name?: unknown }).name !== 'string')
    return 'object without metadata.name';
  return undefined;
}

/**
 * ListWatch's Watch, plus bookmarks, a server-side timeout, a tap on every event for liveness, and
 * a filter that keeps malformed events (which would crash ListWatch's handler) away from it.
 */
class TappedWatch extends Watch {
  private readonly extra: () => Record<string, string | number | boolean>;
  private readonly tap: (type: string, obj: unknown) => void;
  private readonly reject: (why: string, raw: unknown) => void;
  constructor(
    kc: KubeConfig,
    extra: () => Record<string, string | number | boolean>,
    tap: (type: string, obj: unknown) => void,
    reject: (why: string, raw: unknown) => void,
  ) {
    super(kc);
    this.extra = extra;
    this.tap = tap;
    this.reject = reject;
  }
  override watch(
    path: string,
    queryParams: Record<string, string | number | boolean | undefined>,
    callback: (phase: string, apiObj: unknown, watchObj?: unknown) => void,
    done: (err: unknown) => void,
  ): Promise<AbortController> {
    return super.watch(
      path,
      { ...queryParams, ...this.extra() },
      (phase, obj, raw) => {
        const why = malformed(phase, obj);
        if (why !== undefined) return this.reject(why, raw);
        this.tap(phase, obj);
        callback(phase, obj, raw);
      },
      done,
    );
  }
}

export class Reflector {
  readonly counters: ReflectorCounters = { watchRestarts: 0, relists: 0, errors: 0, events: 0, lastEventAt: undefined };
  private readonly opts: ReflectorOptions;
  private readonly now: () => number;
  /** Bumped whenever a ListWatch is abandoned: callbacks of older generations are ignored. */
  private generation = 0;
  private current: ListWatch<KubernetesObject> | undefined;
  /** The ListWatch whose objects are served: the previous one until a fresh relist completes. */
  private served: ListWatch<KubernetesObject> | undefined;
  private everListed = false;
  private attempt = 0;
  private restartTimer: NodeJS.Timeout | undefined;
  private stopped = false;
  private lastHeardAt = 0;
  private firstSync: { resolve: () => void; reject: (err: Error) => void } | undefined;

  constructor(opts: ReflectorOptions) {
    this.opts = opts;
    this.now = opts.now ?? Date.now;
  }

  /** Starts; resolves after the first list was applied, rejects if the credentials are refused. */
  start(): Promise<void> {
    const synced = new Promise<void>((resolve, reject) => {
      this.firstSync = { resolve, reject };
    });
    this.spawn();
    return synced;
  }

  get synced(): boolean {
    return this.everListed;
  }

  /** The mirrored objects, raw as the server sent them (lists and watch events alike). */
  items(): readonly KubeObjectLike[] {
    return (this.served?.list() ?? []) as readonly KubeObjectLike[];
  }

  /** The watchdog: relists when nothing was heard for staleAfterMs (unless a restart is already pending). */
  checkStale(): void {
    if (this.stopped || this.restartTimer) return;
    const silentMs = this.now() - this.lastHeardAt;
    if (silentMs <= this.opts.staleAfterMs) return;
    this.opts.log.warn(
      { resource: this.opts.resource, silentMs, staleAfterMs: this.opts.staleAfterMs },
      'watch restart: no event or bookmark within the staleness bound; relisting',
    );
    this.counters.watchRestarts++;
    this.spawn();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.generation++;
    if (this.restartTimer) clearTimeout(this.restartTimer);
    this.restartTimer = undefined;
    const lws = new Set([this.current, this.served]);
    for (const lw of lws) await lw?.stop();
  }

  /** A fresh ListWatch (so a fresh list): at start and when the watchdog fires. */
  private spawn(): void {
    const gen = ++this.generation;
    if (this.restartTimer) clearTimeout(this.restartTimer);
    this.restartTimer = undefined;
    const previous = this.current;
    // The old stream's events must stop now; its objects stay served until the new list lands.
    if (previous) void previous.stop();
    this.lastHeardAt = this.now();
    const o = this.opts;
    const watch = new TappedWatch(
      o.kubeConfig,
      () => ({
        allowWatchBookmarks: true,
        timeoutSeconds: o.watchTimeoutSeconds + Math.floor(Math.random() * o.watchTimeoutSeconds),
      }),
      (type, obj) => {
        if (gen === this.generation) this.heard(type, obj);
      },
      (why, raw) => {
        this.counters.errors++;
        o.log.error(
          { resource: o.resource, why, event: JSON.stringify(raw)?.slice(0, 200) },
          'malformed watch event skipped',
        );
      },
    );
    // client-node's own inactivity timeout aborts a stalled request; keep it behind the watchdog,
    // which relists, so it only cleans up connections the watchdog already gave up on.
    // (The field is public in the JavaScript but declared private in the typings.)
    (watch as unknown as { requestTimeoutMs: number }).requestTimeoutMs = Math.max(2 * o.staleAfterMs, 1000);
    const list = async (): Promise<KubernetesListObject<KubernetesObject>> => {
      const result = await listRaw(o.kubeConfig, o.path, {
        fieldSelector: o.fieldSelector,
        labelSelector: o.labelSelector,
        pageSize: o.pageSize,
        timeoutMs: o.listTimeoutMs,
      });
      const items = result.items.filter((item) => this.usable(item));
      if (gen === this.generation) this.listed(lw, items.length);
      return { metadata: result.metadata, items: items as KubernetesObject[] };
    };
    const lw: ListWatch<KubernetesObject> = new ListWatch(o.path, watch, list, false, o.labelSelector, o.fieldSelector);
    const changed = (): void => {
      if (gen === this.generation && lw === this.served) o.onChange();
    };
    lw.on(ADD, changed);
    lw.on(UPDATE, changed);
    lw.on(DELETE, changed);
    lw.on(ERROR, (err: unknown) => {
      if (gen === this.generation) this.failed(lw, err);
    });
    this.current = lw;
    this.run(lw, gen);
  }

  private run(lw: ListWatch<KubernetesObject>, gen: number): void {
    lw.start().catch((err: unknown) => {
      if (gen === this.generation) this.failed(lw, err);
    });
  }

  private listed(lw: ListWatch<KubernetesObject>, count: number): void {
    this.lastHeardAt = this.now();
    // A completed list is news from the server too: the age metric must not read "never" on a quiet cluster.
    this.counters.lastEventAt = this.lastHeardAt;
    this.attempt = 0;
    if (this.everListed) this.counters.relists++;
    this.opts.log.debug({ resource: this.opts.resource, count }, 'listed');
    // ListWatch applies the list right after our promise resolves (same microtask run); switch the
    // served mirror once it has, then announce the change.
    setImmediate(() => {
      if (this.stopped || this.current !== lw) return;
      if (this.served !== lw) {
        const old = this.served;
        this.served = lw;
        if (old && old !== lw) void old.stop();
      }
      this.everListed = true;
      this.opts.onChange();
      this.firstSync?.resolve();
      this.firstSync = undefined;
    });
  }

  /** ListWatch indexes by metadata.namespace/name and throws on an item without them: skip such items. */
  private usable(item: unknown): item is KubeObjectLike {
    const meta = item !== null && typeof item === 'object' ? (item as { metadata?: unknown }).metadata : undefined;
    const name = meta !== null && typeof meta === 'object' ? (meta as { name?: unknown }).name : undefined;
    if (typeof name === 'string' && name !== '') return true;
    this.counters.errors++;
    this.opts.log.error(
      { resource: this.opts.resource, item: JSON.stringify(item)?.slice(0, 200) },
      'listed object has no metadata.name; skipped',
    );
    return false;
  }

  private heard(type: string, obj: unknown): void {
    if (type === 'ERROR') {
      // An in-stream Status (410 Expired, or a server error): ListWatch ends the stream and relists on
      // 410 itself; other codes come back through `failed` when the stream closes.
      this.counters.errors++;
      const st = (obj ?? {}) as { code?: unknown; reason?: unknown; message?: unknown };
      this.opts.log.warn(
        { resource: this.opts.resource, code: st.code, reason: st.reason, message: st.message },
        st.code === 410 ? 'watch expired (410 Gone); relisting' : 'watch returned an error event',
      );
      return;
    }
    this.lastHeardAt = this.now();
    this.counters.events++;
    this.counters.lastEventAt = this.lastHeardAt;
    if (type !== 'BOOKMARK') this.attempt = 0;
  }

  private failed(lw: ListWatch<KubernetesObject>, err: unknown): void {
    if (this.stopped) return;
    this.counters.errors++;
    if (err instanceof KubeAuthError && !this.everListed) {
      // Wrong credentials at start: retrying will not fix them, say so now.
      this.opts.log.error({ resource: this.opts.resource, err: err.message }, 'credentials refused');
      this.firstSync?.reject(err);
      this.firstSync = undefined;
      return;
    }
    const delayMs = backoffDelay(this.opts.backoff, this.attempt++);
    this.counters.watchRestarts++;
    const status = httpStatusOf(err);
    // Refused after a good start (a revoked role binding, a token the server no longer takes): say
    // what to fix, and keep retrying with backoff, serving the last good state meanwhile.
    const hint =
      status === 403
        ? `forbidden: grant list/watch on ${this.opts.resource} to ambpf's service account`
        : status === 401
          ? 'unauthorized: the API server refused the token (rotated or revoked)'
          : undefined;
    this.opts.log.warn(
      {
        resource: this.opts.resource,
        reason: reasonOf(err),
        status,
        ...(hint ? { hint } : {}),
        delayMs,
        attempt: this.attempt,
      },
      'watch restart after error',
    );
    if (this.restartTimer) clearTimeout(this.restartTimer);
    const gen = this.generation;
    this.restartTimer = setTimeout(() => {
      this.restartTimer = undefined;
      if (gen !== this.generation || this.stopped) return;
      // Resumes from the last resourceVersion when it has one (a 410 then makes it relist).
      this.run(lw, gen);
    }, delayMs);
  }
}
