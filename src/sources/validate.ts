// What both pod sources do with the objects they hold before delivering them: check each against
// src/state/schema.ts, deliver the valid ones, and say once, in one log line, why each invalid one
// was left out. A bad object never hides the good ones, and the loader never acts on half a pod.
import type { Logger } from '../log.ts';
import { check, describeInvalid, type InvalidObject, type Kind } from '../state/schema.ts';
import type { ClusterSnapshot, KubeObjectLike } from './types.ts';

export class SnapshotValidator {
  readonly #log: Logger;
  /**
   * Results by object identity: the watch's mirror keeps an object until its next version, so each
   * version is checked (and an invalid one reported) once however many snapshots carry it.
   */
  readonly #seen = new WeakMap<object, KubeObjectLike | undefined>();
  #invalid = 0;

  constructor(log: Logger) {
    this.#log = log;
  }

  /** How many invalid objects were reported so far. */
  get invalidTotal(): number {
    return this.#invalid;
  }

  /** The valid pods and namespaces of a snapshot of raw objects. */
  snapshot(pods: readonly unknown[], namespaces: readonly unknown[]): ClusterSnapshot {
    return { pods: this.#valid('pod', pods), namespaces: this.#valid('namespace', namespaces) };
  }

  /** Reports an object that is not even an object (a list item); `where` says which one. */
  reportNotObject(where: string, field: string, value: unknown): void {
    const reason = `expected object, got ${value === null ? 'null' : Array.isArray(value) ? 'an array' : typeof value}`;
    this.#report({ object: where, field, reason, others: [] });
  }

  #valid(kind: Kind, raw: readonly unknown[]): KubeObjectLike[] {
    const out: KubeObjectLike[] = [];
    for (const item of raw) {
      const cacheable = item !== null && typeof item === 'object';
      let ok: KubeObjectLike | undefined;
      if (cacheable && this.#seen.has(item)) {
        ok = this.#seen.get(item);
      } else {
        const r = check(kind, item);
        // The object as it came (the schema's copy would cost an allocation and drop nothing).
        if ('invalid' in r) this.#report(r.invalid);
        else ok = item as KubeObjectLike;
        if (cacheable) this.#seen.set(item, ok);
      }
      if (ok) out.push(ok);
    }
    return out;
  }

  #report(i: InvalidObject): void {
    this.#invalid++;
    const { object, field, reason, others } = i;
    this.#log.error(
      { object, field, reason, ...(others.length > 0 ? { others } : {}) },
      `invalid object skipped: ${describeInvalid(i)}`,
    );
  }
}
