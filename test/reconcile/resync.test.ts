// The resync policy (src/reconcile/resync.ts) on an injected clock and timer: which ticks run a pass,
// that the safety net keeps its own clock, and that a failed pass is retried.
import t from 'tap';
import { ResyncPolicy, SAFETY_NET_MS, type Resyncable } from '../../src/reconcile/resync.ts';

type ResyncCall = { rescanKernel?: boolean; scope?: Iterable<string>; retry?: boolean };

function harness(): {
  target: Resyncable & { calls: Array<ResyncCall>; listeners: boolean; fail: boolean };
  policy: ResyncPolicy;
  clock: { now: number };
  timer: { fn: (() => void) | undefined; ms: number; cancelled: boolean };
} {
  const clock = { now: 1_000_000 };
  const timer = { fn: undefined as (() => void) | undefined, ms: 0, cancelled: false };
  const target = {
    calls: [] as Array<ResyncCall>,
    listeners: true,
    fail: false,
    hasUnresolved: false,
    ztunnelListenersPresent(): boolean {
      return this.listeners;
    },
    resync(o: ResyncCall = {}): Promise<unknown> {
      this.calls.push(o);
      return this.fail ? Promise.reject(new Error('ip dump interrupted')) : Promise.resolve(undefined);
    },
  };
  const policy = new ResyncPolicy(target, {
    intervalMs: 2000,
    now: () => clock.now,
    every: (fn, ms) => {
      timer.fn = fn;
      timer.ms = ms;
      return {
        cancel: () => {
          timer.cancelled = true;
        },
      };
    },
  });
  return { target, policy, clock, timer };
}

t.test('a quiet node: no pass until the safety net is due, which re-reads the kernel', async (t) => {
  const { target, policy, clock, timer } = harness();
  policy.start();
  t.equal(timer.ms, 2000, 'ticks every --resync-ms');
  timer.fn?.();
  t.same(target.calls, [], 'nothing unresolved, listeners present: no pass');
  clock.now += SAFETY_NET_MS + 1;
  timer.fn?.();
  t.same(target.calls, [{ rescanKernel: true }], 'the safety net runs a full pass');
  timer.fn?.();
  t.equal(target.calls.length, 1, 'and then waits for the next one');
  policy.stop();
  t.ok(timer.cancelled, 'stop cancels the timer');
});

t.test('unresolved pods and a restarted ztunnel are retried on the next tick', async (t) => {
  const { target, policy, timer } = harness();
  policy.start();
  target.hasUnresolved = true;
  timer.fn?.();
  t.same(
    target.calls,
    [{ rescanKernel: false, retry: true }],
    'a retry (of what is unresolved) does not re-read the kernel',
  );
  target.hasUnresolved = false;
  target.listeners = false;
  timer.fn?.();
  t.same(target.calls[1], { rescanKernel: false }, 'listeners gone: a full pass');
});

t.test('the safety net keeps its clock on a busy node', async (t) => {
  const { target, policy, clock, timer } = harness();
  policy.start();
  target.hasUnresolved = true;
  const ticks = SAFETY_NET_MS / 2000 + 10;
  for (let i = 0; i < ticks; i++) {
    clock.now += 2000;
    timer.fn?.();
  }
  const full = target.calls.filter((c) => c.rescanKernel).length;
  t.equal(target.calls.length, ticks, 'a pass on every tick while something is unresolved');
  t.equal(full, 1, 'one of them (after SAFETY_NET_MS) is the safety net');
});

t.test('a pass that throws is retried on the next tick', async (t) => {
  const { target, policy, timer } = harness();
  policy.start();
  target.listeners = false;
  target.fail = true;
  timer.fn?.();
  await new Promise((resolve) => setImmediate(resolve));
  t.equal(target.hasUnresolved, true, 'marked unresolved');
  target.listeners = true;
  target.fail = false;
  timer.fn?.();
  t.equal(target.calls.length, 2, 'retried although nothing else asks for it');
});

t.test('on demand: now() and rescanNow()', async (t) => {
  const { target, policy } = harness();
  policy.now();
  policy.rescanNow();
  policy.now('uid-a');
  t.same(target.calls, [{}, { rescanKernel: true }, { scope: ['uid-a'] }], "a pod's ZDS change: a pass of that pod");
  target.calls.length = 2;
  target.fail = true;
  policy.now();
  policy.rescanNow();
  await new Promise((resolve) => setImmediate(resolve));
  t.equal(target.calls.length, 4, 'a failure is logged, not thrown');
});
