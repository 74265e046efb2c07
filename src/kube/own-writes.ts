// The annotations this process wrote to pods, remembered until their watch event comes back. At 250
// pods the agent's own redirection patches (pending, then enabled, per pod) come back as 500 MODIFIED
// events; the pod source uses this record to tell them from news (someone else's edit of the same
// annotation is news: the annotator puts it back).

/** How long a write is expected to echo back (longer: the watch is broken and a relist follows anyway). */
const ECHO_WINDOW_MS = 60_000;

interface Write {
  readonly annotations: Readonly<Record<string, string | null>>;
  readonly at: number;
}

export class OwnWrites {
  readonly #byPod = new Map<string, Write[]>();
  readonly #now: () => number;

  constructor(now: () => number = Date.now) {
    this.#now = now;
  }

  /** Before a patch that sets these annotations (null: removes) on namespace/name is sent. */
  record(namespace: string, name: string, annotations: Readonly<Record<string, string | null>>): void {
    const key = `${namespace}/${name}`;
    const now = this.#now();
    const fresh = (this.#byPod.get(key) ?? []).filter((w) => now - w.at < ECHO_WINDOW_MS);
    fresh.push({ annotations, at: now });
    this.#byPod.set(key, fresh);
    // Pods deleted before their echo leave entries behind: drop the expired ones now and then.
    if (this.#byPod.size > 1024) this.#expire(now);
  }

  /**
   * Whether the pod's annotations now are what one of this process's recent writes set (that write,
   * and any before it, are then forgotten).
   */
  takeEcho(namespace: string, name: string, annotations: unknown): boolean {
    const key = `${namespace}/${name}`;
    const writes = this.#byPod.get(key);
    if (!writes) return false;
    const now = this.#now();
    const have = (annotations ?? {}) as Record<string, unknown>;
    const i = writes.findLastIndex(
      (w) => now - w.at < ECHO_WINDOW_MS && Object.entries(w.annotations).every(([k, v]) => (have[k] ?? null) === v),
    );
    if (i < 0) return false;
    const rest = writes.slice(i + 1);
    if (rest.length > 0) this.#byPod.set(key, rest);
    else this.#byPod.delete(key);
    return true;
  }

  #expire(now: number): void {
    for (const [key, writes] of this.#byPod) {
      const fresh = writes.filter((w) => now - w.at < ECHO_WINDOW_MS);
      if (fresh.length > 0) this.#byPod.set(key, fresh);
      else this.#byPod.delete(key);
    }
  }
}
