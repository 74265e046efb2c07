// BPF run-time statistics through BPF_ENABLE_STATS: while the handle is open every program run adds
// to run_cnt and run_time_ns; kernel.bpf_stats_enabled (someone else's switch) is never touched.
import t from 'tap';
import { BpfObject, BpfRunTimeStats, bpfStatsSysctl, progRunStats, statsCostPerRunNs } from '../../src/libbpf/index.ts';
import { fixtureObject } from './fixture.ts';
import { waitUntil } from '../helpers/wait.ts';

t.test('counts every run while enabled, leaves the sysctl alone', async (t) => {
  const sysctl = bpfStatsSysctl();
  using obj = BpfObject.open(await fixtureObject('basic'));
  obj.load();
  const prog = obj.program('count_packets');
  const pkt = new Uint8Array(64);
  pkt[12] = 0x08;
  const stats = BpfRunTimeStats.enable();
  const before = progRunStats(prog.id);
  // Seven single runs, not repeat: 7: the kernel ends a repeat loop with EINTR after some runs when a
  // signal is pending (a child's SIGCHLD), and the count is then unknown.
  for (let i = 0; i < 7; i++) prog.testRun({ data: pkt });
  const after = progRunStats(prog.id);
  stats.close();
  stats.close();
  t.ok(before && after, 'the program is found by id');
  t.equal((after?.runCnt ?? 0n) - (before?.runCnt ?? 0n), 7n, 'seven runs counted');
  t.ok(
    (after?.runTimeNs ?? 0n) > (before?.runTimeNs ?? 0n),
    `run time counted (${(after?.runTimeNs ?? 0n) - (before?.runTimeNs ?? 0n)} ns)`,
  );
  t.equal(bpfStatsSysctl(), sysctl, 'kernel.bpf_stats_enabled as it was');
});

t.test('a program that is gone has no statistics', async (t) => {
  let id: number;
  {
    using obj = BpfObject.open(await fixtureObject('basic'));
    obj.load();
    id = obj.program('count_packets').id;
  }
  // The kernel frees a closed program asynchronously (RCU): poll for it to go.
  await waitUntil(() => progRunStats(id) === undefined, 10_000);
  t.equal(progRunStats(id), undefined);
});

// Only "on" is tested: the statistics are global, and a concurrent holder (another test's bench
// --profile) would make runs count while this process holds nothing.
t.test('statsCostPerRunNs: what an empty program measures per run while the statistics are on', async (t) => {
  const stats = BpfRunTimeStats.enable();
  try {
    const ns = statsCostPerRunNs(20_000);
    // Two clock reads around an empty program: more than nothing, far less than a microsecond.
    t.ok(ns !== undefined && ns > 0 && ns < 1000, `an empty program measures ${ns?.toFixed(1)} ns per run`);
  } finally {
    stats.close();
  }
});
