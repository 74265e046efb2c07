// Snapshots of machine state a testbed must leave as it found it: netns names, the cgroup v2 tree
// under the root, the root netns' iptables rules, bpffs top level and ipsets.
import { readdirSync } from 'node:fs';
import { run } from '../../src/testbed/run.ts';
import { cgroup2Root } from '../../src/testbed/cgroup.ts';
import { listTree } from '../../src/testbed/cleanup.ts';

export interface MachineSnapshot {
  readonly netns: string[];
  readonly cgroups: string[];
  readonly iptables: string;
  readonly bpffs: string[];
  readonly ipsets: string;
}

/** Only objects carrying `prefix` count: other engineers run tests on this machine at the same time. */
export async function snapshot(prefix: string): Promise<MachineSnapshot> {
  const mine = (s: string): boolean => s.includes(prefix);
  const netns = (await run(['ip', 'netns', 'list'])).stdout
    .split('\n')
    .map((l) => l.split(' ')[0] ?? '')
    .filter(mine);
  const save = (await run(['iptables-save'])).stdout
    .split('\n')
    .filter((l) => !l.startsWith('#') && !l.startsWith(':'))
    .join('\n');
  let bpffs: string[] = [];
  try {
    bpffs = readdirSync('/sys/fs/bpf').filter(mine);
  } catch {
    bpffs = [];
  }
  const ipsets = (await run(['ipset', 'list', '-n'], { check: false })).stdout;
  return { netns, cgroups: listTree(cgroup2Root(), 6, { dirsOnly: true }).filter(mine), iptables: save, bpffs, ipsets };
}
