// The one way tests wait: for a condition, polled, with a deadline. A fixed sleep before an
// assertion passes on an idle machine and fails on a busy one; a poll takes as long as the machine
// needs and no longer. The deadline is a bound on a hang, never a speed claim: keep it generous.

const POLL_MS = 20;

/**
 * Every `eventually` deadline is stretched by this factor: call sites state what an idle machine needs
 * with room to spare, and a machine whose cores are both busy (CI on a shared host, issue 19's stress
 * runs with two busy loops) is several times slower at starting processes and booting namespaces. Only
 * a failing run waits the longer deadline; a passing one returns as soon as its condition holds.
 */
const DEADLINE_SCALE = Number(process.env.AMBPF_TEST_DEADLINE_SCALE ?? 3);

const pause = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `cond` until it holds or `timeoutMs` passed; whether it held. `cond` is tried once more at the deadline. */
export async function waitUntil(cond: () => boolean | Promise<boolean>, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await cond()) return true;
    if (Date.now() > deadline) return false;
    await pause(POLL_MS);
  }
}

/** Polls `fn` until it returns a truthy value and returns it; throws naming `what` after `timeoutMs`. */
export async function eventually<T>(fn: () => T | Promise<T>, timeoutMs: number, what: string): Promise<T> {
  timeoutMs *= DEADLINE_SCALE;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await pause(POLL_MS);
  }
}

/**
 * Lets `ms` pass on purpose: only for assertions that something does NOT happen within a window
 * (no log line, no change). There is no condition to poll for an absence; a busy machine makes the
 * window longer in effect, so such a check can miss a late event but never fails a good run.
 */
export function observeFor(ms: number): Promise<void> {
  return pause(ms);
}
