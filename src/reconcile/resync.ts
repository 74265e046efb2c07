// When the loader re-runs a pass without a new snapshot. Event-driven passes (a pod changed) come from
// the sources; this policy adds the ones nothing announces:
//  - retry: the last passes left something unresolved (a sandbox not up yet, a pod ztunnel has not
//    opened its listeners in): a pass of those pods on the next tick; ztunnel's listeners left the
//    datapath (ztunnel restarted): a full pass on the next tick;
//  - safety net: a full pass every SAFETY_NET_MS regardless, which also re-reads what passes in
//    between trust of the kernel (clsact filters, in-pod listeners). It runs on its own clock: a busy
//    node (a pod event every few seconds) or a pod that stays unresolved must not postpone it;
//  - on demand: a ZDS change of one pod (now, that pod), a ztunnel that left (now, a full pass) or
//    connected (now, re-reading the kernel).
// With nothing changing a tick costs a few map lookups (the topology's inspect), no pass: an idle
// loader at 250 pods spends its CPU on the safety net, ~0.3 s every SAFETY_NET_MS (issue 20).
// `ambpf run` starts it after the first pass and stops it on SIGTERM.
import { describeError } from '../errors.ts';
import { logger } from '../log.ts';

const log = logger('resync');

/**
 * The full pass that runs however quiet the node is. Every change is announced (a source event, a CNI
 * ADD, ZDS), so this only catches what nothing announced (a lost event, a sandbox re-created without
 * one): 5 minutes, where a full pass at 250 pods costs ~0.3 s of CPU (0.1 % of a core).
 */
export const SAFETY_NET_MS = 300_000;

/** What the policy drives (the Reconciler). */
export interface Resyncable {
  /** Whether the last pass left something to retry soon; the policy sets it when a pass throws. */
  hasUnresolved: boolean;
  ztunnelListenersPresent(): boolean;
  /** rescanKernel: the safety net; scope: these pods; retry: what is unresolved; else a full pass. */
  resync(o?: { rescanKernel?: boolean; scope?: Iterable<string>; retry?: boolean }): Promise<unknown>;
}

export interface ResyncOptions {
  /** How often to look (--resync-ms). */
  readonly intervalMs: number;
  readonly safetyNetMs?: number;
  /** The clock and the timer, injectable so a test drives the ticks itself. */
  readonly now?: () => number;
  readonly every?: (fn: () => void, ms: number) => { cancel(): void };
}

const intervalTimer = (fn: () => void, ms: number): { cancel(): void } => {
  const timer = setInterval(fn, ms);
  return { cancel: () => clearInterval(timer) };
};

export class ResyncPolicy {
  readonly #target: Resyncable;
  readonly #intervalMs: number;
  readonly #safetyNetMs: number;
  readonly #now: () => number;
  readonly #every: (fn: () => void, ms: number) => { cancel(): void };
  #timer: { cancel(): void } | undefined;
  #lastSafetyNet = 0;

  constructor(target: Resyncable, o: ResyncOptions) {
    this.#target = target;
    this.#intervalMs = o.intervalMs;
    this.#safetyNetMs = o.safetyNetMs ?? SAFETY_NET_MS;
    this.#now = o.now ?? Date.now;
    this.#every = o.every ?? intervalTimer;
  }

  /** Starts ticking (the first safety net is SAFETY_NET_MS from now). Idempotent. */
  start(): void {
    if (this.#timer) return;
    this.#lastSafetyNet = this.#now();
    this.#timer = this.#every(() => this.tick(), this.#intervalMs);
  }

  stop(): void {
    this.#timer?.cancel();
    this.#timer = undefined;
  }

  /** One look: a pass if something is left to retry, ztunnel's listeners went, or the safety net is due. */
  tick(): void {
    const t = this.#target;
    const safetyNet = this.#now() - this.#lastSafetyNet > this.#safetyNetMs;
    const listeners = safetyNet || t.ztunnelListenersPresent();
    if (!t.hasUnresolved && listeners && !safetyNet) return;
    if (safetyNet) this.#lastSafetyNet = this.#now();
    // Listeners gone: a full pass finds the pods whose listeners went; else only what is unresolved.
    const pass = safetyNet
      ? { rescanKernel: true }
      : listeners
        ? { rescanKernel: false, retry: true }
        : { rescanKernel: false };
    t.resync(pass).catch((err: unknown) => {
      // A pass that throws (an `ip` dump interrupted by churn, say) is retried on the next tick.
      t.hasUnresolved = true;
      log.error({ err: describeError(err) }, 'resync failed; retrying');
    });
  }

  /** A pass now (something changed that no source announces: a ZDS ack of `uid`, a ztunnel that left). */
  now(uid?: string): void {
    this.#target
      .resync(uid === undefined ? {} : { scope: [uid] })
      .catch((err: unknown) => log.error({ err: describeError(err) }, 'pass after a ZDS change failed'));
  }

  /** A pass now that also re-reads the kernel (a ztunnel connected: its listeners are new). */
  rescanNow(): void {
    this.#target
      .resync({ rescanKernel: true })
      .catch((err: unknown) => log.error({ err: describeError(err) }, 'pass after a ztunnel connected failed'));
  }
}
