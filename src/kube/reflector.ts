// Keeps one resource (pods of a node, or namespaces) mirrored from the API server, and never lets
// the mirror go silently stale: list (in pages), then watch from the list's resourceVersion, applying
// each event to the mirror; around that
//  - errors restart the watch with capped exponential backoff, resuming from the last resourceVersion;
//    410 Gone (an ERROR event or the answer to the watch) relists;
//  - a staleness watchdog: no event or bookmark within `staleAfterMs` -> throw the watch away, relist;
//  - watches ask for bookmarks and a server-side timeout, so a quiet resource still proves the stream
//    is alive and streams are renewed now and then;
//  - a relist builds a new mirror while the last good one is served; 401/403 after a good start keep
//    it served (and say what to grant), at start they fail at once.
import type { Logger } from '../log.ts';
import type { KubeObjectLike } from '../sources/types.ts';
import { backoffDelay, type BackoffPolicy } from './backoff.ts';
import type { KubeConfig } from './config.ts';
import { KubeAuthError, httpStatusOf, reasonOf } from './errors.ts';
import { openWatch, type WatchHandle } from './http.ts';
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
  /**
   * A MODIFIED object that is `same` as the version it replaces is stored without onChange: what the
   * consumer reads of it did not change (e.g. only the resourceVersion and an annotation it writes).
   */
  readonly same?: (before: KubeObjectLike, after: KubeObjectLike) => boolean;
  readonly now?: () => number;
}

const WATCH_TYPES = new Set(['ADDED', 'MODIFIED', 'DELETED', 'BOOKMARK', 'ERROR']);

/** Why an event cannot be applied to the mirror, or undefined if it can. */
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
 * One list+watch and the objects it produced, keyed namespace/name. A relist by the watchdog starts a
 * new one; a 410 or an error resumes the same one (relisting into it, or watching from its version).
 */
class Mirror {
  readonly objects = new Map<string, KubeObjectLike>();
  resourceVersion = '';
  watch: WatchHandle | undefined;
  /** Clean stream ends in a row with nothing heard in between: paces re-watches of a server that closes at once. */
  quietEnds = 0;
  stopped = false;

  stop(): void {
    this.stopped = true;
    this.watch?.abort();
    this.watch = undefined;
  }
}

function keyOf(obj: KubeObjectLike): string {
  const m = obj.metadata;
  return `${typeof m?.namespace === 'string' ? m.namespace : ''}/${String(m?.name)}`;
}

export class Reflector {
  readonly counters: ReflectorCounters = { watchRestarts: 0, relists: 0, errors: 0, events: 0, lastEventAt: undefined };
  private readonly opts: ReflectorOptions;
  private readonly now: () => number;
  /** Bumped whenever a mirror is abandoned: callbacks of older generations are ignored. */
  private generation = 0;
  private current: Mirror | undefined;
  /** The mirror whose objects are served: the previous one until a fresh relist completes. */
  private served: Mirror | undefined;
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
    return this.served ? [...this.served.objects.values()] : [];
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
    this.current?.stop();
    this.served?.stop();
    // A stop before the first list (API server unreachable, SIGTERM at start): start() returns now,
    // not when the pending list times out, past kubelet's grace period.
    this.firstSync?.resolve();
    this.firstSync = undefined;
    // Idle pooled connections are unref'd by node:http's agent: they do not keep the process alive.
    await Promise.resolve();
  }

  /** A fresh mirror (so a fresh list): at start and when the watchdog fires. */
  private spawn(): void {
    const gen = ++this.generation;
    if (this.restartTimer) clearTimeout(this.restartTimer);
    this.restartTimer = undefined;
    // The old stream's events must stop now; its objects stay served until the new list lands.
    this.current?.stop();
    this.lastHeardAt = this.now();
    const m = new Mirror();
    this.current = m;
    this.run(m, gen);
  }

  /** Lists when the mirror has no resourceVersion (first time, after a 410), then watches from it. */
  private run(m: Mirror, gen: number): void {
    const live = (): boolean => gen === this.generation && !m.stopped && !this.stopped;
    const go = async (): Promise<void> => {
      if (!m.resourceVersion) await this.list(m, live);
      if (live()) this.watch(m, gen, live);
    };
    go().catch((err: unknown) => {
      if (live()) this.failed(m, err);
    });
  }

  private async list(m: Mirror, live: () => boolean): Promise<void> {
    const o = this.opts;
    const result = await listRaw(o.kubeConfig, o.path, {
      fieldSelector: o.fieldSelector,
      labelSelector: o.labelSelector,
      pageSize: o.pageSize,
      timeoutMs: o.listTimeoutMs,
    });
    if (!live()) return;
    m.objects.clear();
    for (const item of result.items) if (this.usable(item)) m.objects.set(keyOf(item), item);
    m.resourceVersion = result.metadata.resourceVersion ?? '';
    this.listed(m);
  }

  private watch(m: Mirror, gen: number, live: () => boolean): void {
    const o = this.opts;
    const params = new URLSearchParams();
    if (o.fieldSelector) params.set('fieldSelector', o.fieldSelector);
    if (o.labelSelector) params.set('labelSelector', o.labelSelector);
    params.set('watch', 'true');
    params.set('allowWatchBookmarks', 'true');
    params.set('resourceVersion', m.resourceVersion);
    params.set('timeoutSeconds', String(o.watchTimeoutSeconds + Math.floor(Math.random() * o.watchTimeoutSeconds)));
    // A silent connection is dropped well after the watchdog relisted, so this only cleans up
    // connections the watchdog already gave up on.
    const idleMs = Math.max(2 * o.staleAfterMs, 1000);
    m.watch = openWatch(o.kubeConfig, `${o.path}?${params.toString()}`, idleMs, {
      onLine: (line) => {
        if (live()) this.line(m, line);
      },
      onEnd: (err) => {
        m.watch = undefined;
        if (!live()) return;
        if (err !== undefined && httpStatusOf(err) === 410) m.resourceVersion = '';
        else if (err !== undefined) return this.failed(m, err);
        // The server's timeout (or a 410 ERROR event) ended it: go on, pacing a server that ends
        // streams at once.
        const delayMs = m.quietEnds++ === 0 ? 0 : backoffDelay(o.backoff, m.quietEnds - 2);
        this.later(delayMs, gen, () => this.run(m, gen));
      },
    });
  }

  private line(m: Mirror, line: string): void {
    let ev: { type?: unknown; object?: unknown };
    try {
      ev = JSON.parse(line) as typeof ev;
    } catch {
      return this.rejectEvent('not JSON', line);
    }
    const why = malformed(ev?.type, ev?.object);
    if (why !== undefined) return this.rejectEvent(why, line);
    const type = ev.type as string;
    const obj = ev.object as KubeObjectLike;
    this.heard(type, obj);
    if (type === 'ERROR') {
      // 410 Expired: the stream ends next; the mirror relists then.
      if ((obj as { code?: unknown }).code === 410) m.resourceVersion = '';
      return;
    }
    m.quietEnds = 0;
    const rv = obj.metadata?.resourceVersion;
    if (typeof rv === 'string' && rv !== '') m.resourceVersion = rv;
    if (type === 'BOOKMARK') return;
    const key = keyOf(obj);
    const before = m.objects.get(key);
    if (type === 'DELETED') {
      if (!m.objects.delete(key)) return;
    } else {
      m.objects.set(key, obj);
      if (type === 'MODIFIED' && before && this.opts.same?.(before, obj)) return;
    }
    if (m === this.served) this.opts.onChange();
  }

  private rejectEvent(why: string, raw: string): void {
    this.counters.errors++;
    this.opts.log.error(
      { resource: this.opts.resource, why, event: raw.slice(0, 200) },
      'malformed watch event skipped',
    );
  }

  private listed(m: Mirror): void {
    this.lastHeardAt = this.now();
    // A completed list is news from the server too: the age metric must not read "never" on a quiet cluster.
    this.counters.lastEventAt = this.lastHeardAt;
    this.attempt = 0;
    if (this.everListed) this.counters.relists++;
    this.opts.log.debug({ resource: this.opts.resource, count: m.objects.size }, 'listed');
    if (this.served !== m) {
      const old = this.served;
      this.served = m;
      if (old && old !== m) old.stop();
    }
    this.everListed = true;
    this.opts.onChange();
    this.firstSync?.resolve();
    this.firstSync = undefined;
  }

  /** The mirror is keyed by metadata.namespace/name: skip items without a name. */
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
      // An in-stream Status (410 Expired, or a server error): the stream ends next and is restarted.
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

  private failed(m: Mirror, err: unknown): void {
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
    // Resumes from the last resourceVersion when it has one (a 410 then makes it relist).
    this.later(delayMs, this.generation, () => this.run(m, this.generation));
  }

  private later(delayMs: number, gen: number, fn: () => void): void {
    if (this.restartTimer) clearTimeout(this.restartTimer);
    this.restartTimer = setTimeout(() => {
      this.restartTimer = undefined;
      if (gen !== this.generation || this.stopped) return;
      fn();
    }, delayMs);
  }
}
