// When the long-lived loader gives back what a burst of work left resident (src/libbpf/memory.ts): as
// soon as startup is over, then once it has been quiet for a while after some work (a ZDS snapshot to a
// ztunnel that connected, a churn of pods, the safety net), never while it works and never twice for
// the same burst. Quiet means no reconcile pass: ZDS acks, source events and the safety net all end in
// passes, while the idle resync ticks (a few map lookups) do not, so an idle node trims only after its
// safety net, every 5 minutes, which costs a few hundred minor faults to bring the idle set back.

export interface IdleTrimOptions {
  /** A counter that moves whenever the loader works (the reconciler's passes). */
  readonly activity: () => number;
  /** Gives the memory back. */
  readonly trim: () => void;
  /** How long `activity` must stand still before a trim (default 5000 ms). */
  readonly quietMs?: number;
  /** The clock and the timer, injectable so a test drives the checks itself. */
  readonly now?: () => number;
  readonly every?: (fn: () => void, ms: number) => { cancel(): void };
}

const intervalTimer = (fn: () => void, ms: number): { cancel(): void } => {
  const timer = setInterval(fn, ms);
  timer.unref(); // a trim is never a reason to stay alive
  return { cancel: () => clearInterval(timer) };
};

export const IDLE_TRIM_QUIET_MS = 5000;

export class IdleTrim {
  readonly #o: IdleTrimOptions;
  readonly #quietMs: number;
  readonly #now: () => number;
  #timer: { cancel(): void } | undefined;
  #seen: number | undefined;
  #changedAt = 0;
  /** Whether work happened since the last trim. */
  #dirty = false;
  trims = 0;

  constructor(o: IdleTrimOptions) {
    this.#o = o;
    this.#quietMs = o.quietMs ?? IDLE_TRIM_QUIET_MS;
    this.#now = o.now ?? Date.now;
  }

  /**
   * Call once startup is over (the first full pass done): trims at once, as startup is the biggest
   * burst (loading the modules, libbpf and the verifier, the first pass), then checks every half quiet
   * period. Idempotent.
   */
  start(): void {
    if (this.#timer) return;
    this.trims++;
    this.#o.trim();
    this.#seen = this.#o.activity();
    this.#changedAt = this.#now();
    this.#timer = (this.#o.every ?? intervalTimer)(() => this.check(), Math.max(100, this.#quietMs / 2));
  }

  stop(): void {
    this.#timer?.cancel();
    this.#timer = undefined;
  }

  /** One look: trims when there was work and `activity` has not moved for quietMs. */
  check(): void {
    const a = this.#o.activity();
    const t = this.#now();
    if (a !== this.#seen) {
      this.#seen = a;
      this.#changedAt = t;
      this.#dirty = true;
      return;
    }
    if (!this.#dirty || t - this.#changedAt < this.#quietMs) return;
    this.#dirty = false;
    this.trims++;
    this.#o.trim();
  }
}
