// State reset between cells (docs/kernel-facts.md "Benchmark hygiene"): TIME_WAIT sockets left
// by one path collide with the next path's SYNs on the same 4-tuple (a REDIRECT run once made the
// following direct run lose 60% to SYN retransmits), so they are destroyed in every netns a cell
// touched before the next cell starts.
import { inNetns } from '../testbed/run.ts';

/** `ss -K state time-wait` in each netns; returns how many were killed (best effort per netns). */
export async function killTimeWait(netnsPaths: readonly string[]): Promise<number> {
  let killed = 0;
  for (const ns of new Set(netnsPaths)) {
    const r = await inNetns(ns, ['ss', '-H', '-K', '-t', 'state', 'time-wait'], { check: false, timeoutMs: 10_000 });
    killed += r.stdout.split('\n').filter((l) => l.trim() !== '').length;
  }
  return killed;
}
