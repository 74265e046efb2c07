// The fake API server's storage: objects per kind, one global resourceVersion counter (etcd's
// revision: every write bumps it, across kinds) and the event history watches resume from. History
// can be compacted (`compact`), after which a watch or an exact list from an older version gets
// 410 Gone, as with etcd's compaction behind kube-apiserver.
import { randomUUID } from 'node:crypto';

export type Kind = 'Pod' | 'Namespace';
export type KubeObject = Record<string, unknown> & { metadata: Record<string, unknown> };
export type EventType = 'ADDED' | 'MODIFIED' | 'DELETED';

export interface StoredEvent {
  readonly rv: number;
  readonly type: EventType;
  readonly kind: Kind;
  /** The object after the change (for DELETED: its last state, stamped with the deletion's version). */
  readonly object: KubeObject;
  /** The object before the change (undefined for ADDED): watches with selectors need it. */
  readonly prev: KubeObject | undefined;
}

export class StoreError extends Error {
  override readonly name = 'StoreError';
}

export function keyOf(obj: KubeObject): string {
  const ns = typeof obj.metadata['namespace'] === 'string' ? obj.metadata['namespace'] : '';
  return `${ns}/${String(obj.metadata['name'])}`;
}

const clone = <T>(v: T): T => structuredClone(v);

export class ObjectStore {
  /** Starts high like a real cluster, so no client can get away with assuming small numbers. */
  private revision = 1000;
  private compacted = 1000;
  private readonly objects: Record<Kind, Map<string, KubeObject>> = { Pod: new Map(), Namespace: new Map() };
  private history: StoredEvent[] = [];
  private readonly listeners = new Set<(e: StoredEvent) => void>();

  get resourceVersion(): number {
    return this.revision;
  }

  /** Oldest version a watch can resume from: events after it are all still in history. */
  get compactedVersion(): number {
    return this.compacted;
  }

  subscribe(fn: (e: StoredEvent) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  list(kind: Kind): KubeObject[] {
    return [...this.objects[kind].values()].map(clone);
  }

  get(kind: Kind, namespace: string, name: string): KubeObject | undefined {
    const o = this.objects[kind].get(`${namespace}/${name}`);
    return o ? clone(o) : undefined;
  }

  /** The objects of `kind` as they were at version `rv` (rv >= compactedVersion), rebuilt from history. */
  listAt(kind: Kind, rv: number): KubeObject[] {
    if (rv < this.compacted) throw new StoreError(`version ${rv} is compacted (oldest ${this.compacted})`);
    const state = new Map(this.objects[kind]);
    for (let i = this.history.length - 1; i >= 0; i--) {
      const e = this.history[i]!;
      if (e.rv <= rv) break;
      if (e.kind !== kind) continue;
      if (e.prev) state.set(keyOf(e.prev), e.prev);
      else state.delete(keyOf(e.object));
    }
    return [...state.values()].map(clone);
  }

  /** Events of every kind after `rv`, oldest first; `rv` must not be older than compactedVersion. */
  since(rv: number): StoredEvent[] {
    if (rv < this.compacted) throw new StoreError(`version ${rv} is compacted (oldest ${this.compacted})`);
    return this.history.filter((e) => e.rv > rv);
  }

  create(kind: Kind, input: Record<string, unknown>): KubeObject {
    const obj = this.normalize(kind, input);
    const key = keyOf(obj);
    if (this.objects[kind].has(key)) throw new StoreError(`${kind} ${key} already exists`);
    obj.metadata['uid'] ??= randomUUID();
    obj.metadata['creationTimestamp'] ??= new Date().toISOString().replace(/\.\d+Z$/, 'Z');
    return this.write('ADDED', kind, obj, undefined);
  }

  update(kind: Kind, input: Record<string, unknown>): KubeObject {
    const obj = this.normalize(kind, input);
    const prev = this.objects[kind].get(keyOf(obj));
    if (!prev) throw new StoreError(`${kind} ${keyOf(obj)} does not exist`);
    obj.metadata['uid'] = prev.metadata['uid'];
    obj.metadata['creationTimestamp'] = prev.metadata['creationTimestamp'];
    return this.write('MODIFIED', kind, obj, prev);
  }

  upsert(kind: Kind, input: Record<string, unknown>): KubeObject {
    const obj = this.normalize(kind, input);
    return this.objects[kind].has(keyOf(obj)) ? this.update(kind, obj) : this.create(kind, obj);
  }

  delete(kind: Kind, namespace: string, name: string): KubeObject {
    const prev = this.objects[kind].get(`${namespace}/${name}`);
    if (!prev) throw new StoreError(`${kind} ${namespace}/${name} does not exist`);
    return this.write('DELETED', kind, clone(prev), prev);
  }

  /** Forgets all history: watches and exact lists from any version before now get 410 Gone. */
  compact(): void {
    this.compacted = this.revision;
    this.history = [];
  }

  private normalize(kind: Kind, input: Record<string, unknown>): KubeObject {
    const { apiVersion: _a, kind: _k, ...rest } = clone(input);
    const obj = { apiVersion: 'v1', kind, ...rest } as unknown as KubeObject;
    if (obj.metadata === null || typeof obj.metadata !== 'object') throw new StoreError(`${kind} has no metadata`);
    if (typeof obj.metadata['name'] !== 'string' || obj.metadata['name'] === '')
      throw new StoreError(`${kind} has no metadata.name`);
    if (kind === 'Pod') obj.metadata['namespace'] ??= 'default';
    else delete obj.metadata['namespace'];
    return obj;
  }

  private write(type: EventType, kind: Kind, obj: KubeObject, prev: KubeObject | undefined): KubeObject {
    this.revision++;
    obj.metadata['resourceVersion'] = String(this.revision);
    if (type === 'DELETED') this.objects[kind].delete(keyOf(obj));
    else this.objects[kind].set(keyOf(obj), obj);
    const event: StoredEvent = {
      rv: this.revision,
      type,
      kind,
      object: clone(obj),
      prev: prev ? clone(prev) : undefined,
    };
    this.history.push(event);
    for (const fn of this.listeners) fn(event);
    return clone(obj);
  }
}
