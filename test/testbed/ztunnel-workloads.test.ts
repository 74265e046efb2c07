// The stand-in's workload manager against ztunnel's rules (src/inpod/statemanager.rs and
// workloadmanager.rs in istio/ztunnel), with a fake proxy factory, fake netns fds and a fake clock: no
// kernel needed. Every fd handed in must be closed exactly once by the end.
import t from 'tap';
import {
  WorkloadManager,
  PROXY_RETRY_MS,
  type DrainMode,
  type RunningProxy,
} from '../../src/testbed/ztunnel/workloads.ts';
import type { ZdsRequest, WorkloadInfo } from '../../src/testbed/ztunnel/zds-types.ts';

const info = (name: string): WorkloadInfo => ({ name, namespace: 'ns', serviceAccount: 'sa' });

function fixture() {
  const inode = new Map<number, string>(); // fake fd -> netns id
  const closed: number[] = [];
  const started: { uid: string; fd: number }[] = [];
  const drained: { uid: string; mode: DrainMode }[] = [];
  const failing = new Set<string>(); // uids whose proxy start fails (EADDRINUSE)
  const timers: { ms: number; fn: () => Promise<void>; cancelled: boolean }[] = [];
  let nextFd = 100;
  const m = new WorkloadManager({
    factory: {
      async start(uid, _info, fd): Promise<RunningProxy> {
        if (failing.has(uid)) throw new Error('bind([::]:15001): address in use (EADDRINUSE)');
        started.push({ uid, fd });
        return { drain: async (mode) => void drained.push({ uid, mode }) };
      },
    },
    netns: {
      id: (fd) => inode.get(fd) ?? 'gone',
      close: (fd) => void closed.push(fd),
    },
    timers: {
      after(ms, fn) {
        const e = { ms, fn, cancelled: false };
        timers.push(e);
        return () => void (e.cancelled = true);
      },
    },
  });
  const fd = (netns: string): number => {
    const n = nextFd++;
    inode.set(n, netns);
    return n;
  };
  const add = (uid: string, netns: string, extra: Partial<Extract<ZdsRequest, { kind: 'add' }>> = {}) =>
    m.handle({ kind: 'add', uid, info: info(uid), netnsFd: fd(netns), fdCount: 1, ...extra });
  const snapshot = () => m.handle({ kind: 'snapshot-sent' });
  const armed = () => timers.filter((x) => !x.cancelled);
  const fire = async () => {
    const live = armed();
    for (const x of live) x.cancelled = true;
    await Promise.all(live.map((x) => x.fn()));
  };
  /** The fds handed in that were closed, each once. */
  const allClosedOnce = () => {
    const given = [...inode.keys()].sort();
    return { given, closed: [...closed].sort() };
  };
  return { m, add, snapshot, fd, started, drained, failing, timers, armed, fire, closed, allClosedOnce };
}

t.test('Add starts a proxy; the same netns again is an ack and nothing new', async (t) => {
  const f = fixture();
  f.m.connected();
  t.same(await f.add('a', 'ns-1'), { ack: '' });
  t.same(await f.add('a', 'ns-1'), { ack: '' });
  t.equal(f.started.length, 1, 'one proxy');
  t.same(f.closed, [101], 'the second fd is not needed and closed');
  t.same(await f.snapshot(), { ack: '' });
  t.equal(f.m.ready, true);
  await f.m.drainAll();
  t.same(f.drained, [{ uid: 'a', mode: 'graceful' }]);
  t.same(f.allClosedOnce().closed, f.allClosedOnce().given);
});

t.test('Add with a new netns for a running uid drains the old proxy at once and starts a new one', async (t) => {
  const f = fixture();
  f.m.connected();
  await f.add('a', 'ns-1');
  await f.snapshot();
  t.same(await f.add('a', 'ns-2'), { ack: '' });
  t.same(
    f.started.map((s) => s.uid),
    ['a', 'a'],
  );
  t.same(f.drained, [{ uid: 'a', mode: 'immediate' }]);
  t.same(f.m.state().workloads, [{ uid: 'a', name: 'a', namespace: 'ns', netns: 'ns-2' }]);
  await f.m.drainAll();
  t.same(f.allClosedOnce().closed, f.allClosedOnce().given);
});

t.test('protocol errors exit: Add without workload info, Keep after the snapshot, a second SnapshotSent', async (t) => {
  const f = fixture();
  f.m.connected();
  t.same(await f.add('a', 'ns-1', { info: undefined }), { exit: 'workload_info is required but not present' });
  t.same(f.closed, [100]);
  t.same(await f.m.handle({ kind: 'keep', uid: 'b' }), { ack: '' }, 'Keep before the snapshot is fine');
  await f.snapshot();
  t.same(await f.m.handle({ kind: 'keep', uid: 'b' }), { exit: 'pod keep received after snapshot' });
  t.same(await f.snapshot(), { exit: 'pod snapshot received already' });
  t.equal(f.m.ready, false, 'not ready once it is about to exit');
});

t.test('an Add without exactly one fd is a nack and a reconnect; the fds are dropped', async (t) => {
  const f = fixture();
  f.m.connected();
  t.same(await f.m.handle({ kind: 'add', uid: 'a', info: info('a'), netnsFd: undefined, fdCount: 0 }), {
    reconnect: 'No control message',
  });
  t.same(await f.add('a', 'ns-1', { fdCount: 2 }), { reconnect: 'Expected 1 FD, got 2' });
  t.same(f.closed, [100]);
  t.equal(f.started.length, 0);
});

t.test('the snapshot drains (immediately) proxies it does not name; Keep saves one across a reconnect', async (t) => {
  const f = fixture();
  f.m.connected();
  await f.add('a', 'ns-a');
  await f.add('b', 'ns-b');
  await f.add('c', 'ns-c');
  await f.snapshot();
  f.m.disconnected();
  t.equal(f.m.ready, false, 'not ready while disconnected');
  t.equal(f.m.state().workloads.length, 3, 'proxies survive the disconnect');
  f.m.connected();
  await f.add('a', 'ns-a'); // same netns: kept as is
  await f.m.handle({ kind: 'keep', uid: 'b' });
  t.equal(f.m.ready, false, 'not ready before the new snapshot');
  await f.snapshot();
  t.same(f.drained, [{ uid: 'c', mode: 'immediate' }]);
  t.same(
    f.m.state().workloads.map((w) => w.uid),
    ['a', 'b'],
  );
  t.equal(f.started.length, 3, 'nothing restarted');
  t.equal(f.m.ready, true);
});

t.test('Del: after the snapshot the proxy drains at once; before it, the pod only leaves the snapshot', async (t) => {
  const f = fixture();
  f.m.connected();
  await f.add('a', 'ns-a');
  await f.add('b', 'ns-b');
  t.same(await f.m.handle({ kind: 'del', uid: 'b' }), { ack: '' });
  t.same(f.drained, [], 'a Del before the snapshot drains nothing itself');
  await f.snapshot();
  t.same(f.drained, [{ uid: 'b', mode: 'immediate' }], 'the snapshot reconcile does');
  t.same(await f.m.handle({ kind: 'del', uid: 'a' }), { ack: '' });
  t.same(await f.m.handle({ kind: 'del', uid: 'unknown' }), { ack: '' }, 'Del of an unknown uid is an ack');
  t.same(
    f.drained.map((d) => d.uid),
    ['b', 'a'],
  );
  t.same(f.m.state().workloads, []);
});

t.test('a proxy that cannot start: nack, pending, retried every 5 s until it starts, then ready', async (t) => {
  const f = fixture();
  f.m.connected();
  f.failing.add('a');
  const v = await f.add('a', 'ns-a');
  t.match(v, { ack: /^failure to start proxy: .*EADDRINUSE/ });
  t.same(f.m.state().pending, ['a']);
  t.same(
    f.armed().map((x) => x.ms),
    [PROXY_RETRY_MS],
  );
  t.same(await f.snapshot(), { ack: '' });
  t.equal(f.m.ready, false, 'a snapshot with a pending proxy is not ready');
  await f.fire();
  t.same(
    f.armed().map((x) => x.ms),
    [PROXY_RETRY_MS],
    'still failing: retried again in 5 s',
  );
  t.equal(f.started.length, 0);
  f.failing.delete('a');
  await f.fire();
  t.equal(f.started.length, 1);
  t.same(f.m.state().pending, []);
  t.same(f.armed(), [], 'no more retries');
  t.equal(f.m.ready, true);
  t.same(f.closed, [], 'the pending fd was kept for the retry, then by the proxy');
});

t.test('a Del before the snapshot drops a pending proxy; a new connection forgets pending ones', async (t) => {
  const f = fixture();
  f.m.connected();
  f.failing.add('a');
  f.failing.add('b');
  await f.add('a', 'ns-a');
  await f.add('b', 'ns-b');
  await f.m.handle({ kind: 'del', uid: 'a' });
  t.same(f.m.state().pending, ['b']);
  t.same(f.closed, [100]);
  f.m.disconnected();
  t.same(f.armed(), [], 'retries belong to the connection');
  f.m.connected();
  t.same(f.m.state().pending, []);
  t.same(f.closed, [100, 101]);
});

t.test('ready stays set when an Add fails after the snapshot (ztunnel only re-checks on success)', async (t) => {
  const f = fixture();
  f.m.connected();
  await f.snapshot();
  t.equal(f.m.ready, true);
  f.failing.add('a');
  t.match(await f.add('a', 'ns-a'), { ack: /^failure to start proxy/ });
  t.equal(f.m.ready, true);
  await f.m.handle({ kind: 'del', uid: 'other' });
  t.equal(f.m.ready, false, 'the next processed message re-checks: a proxy is pending');
});

t.test('a pending Add replaced by a working one in another netns (istio#52858) runs the new one', async (t) => {
  const f = fixture();
  f.m.connected();
  f.failing.add('a');
  await f.add('a', 'ns-1');
  f.failing.delete('a');
  t.same(await f.add('a', 'ns-2'), { ack: '' });
  t.same(f.m.state().pending, []);
  t.same(
    f.m.state().workloads.map((w) => w.netns),
    ['ns-2'],
  );
  t.same(f.closed, [100], 'the failed netns fd is closed');
});
