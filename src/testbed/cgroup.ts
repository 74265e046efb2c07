// cgroup v2 subtrees for the testbed: `<cgroup2 root>/<prefix>/<node>/kubepods/besteffort/pod<uid>/<cid>`
// is what kubelet's cgroupfs driver leaves, and what the loader walks to find a pod's processes.
import { readFileSync, mkdirSync, readdirSync, rmdirSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { SystemError } from '../errors.ts';

/** Mount point of the cgroup v2 hierarchy (/sys/fs/cgroup/unified on hybrid hosts, /sys/fs/cgroup on unified ones). */
export function cgroup2Root(): string {
  const mounts = readFileSync('/proc/self/mounts', 'utf8').split('\n');
  for (const line of mounts) {
    const [, mountPoint, fsType] = line.split(' ');
    if (fsType === 'cgroup2' && mountPoint !== undefined) return mountPoint;
  }
  throw new SystemError(
    'finding the cgroup v2 mount',
    2,
    'no cgroup2 filesystem is mounted (the testbed needs cgroup v2)',
  );
}

export function makeCgroup(path: string): void {
  mkdirSync(path, { recursive: true });
}

/** Moves a process into a cgroup (used for helper processes the testbed itself starts). */
export function addProcess(cgroupPath: string, pid: number): void {
  writeFileSync(join(cgroupPath, 'cgroup.procs'), `${pid}\n`);
}

/** Pids directly in a cgroup and all its descendants. */
export function pidsIn(cgroupPath: string): number[] {
  const pids: number[] = [];
  const walk = (dir: string): void => {
    let procs = '';
    try {
      procs = readFileSync(join(dir, 'cgroup.procs'), 'utf8');
    } catch {
      return;
    }
    for (const l of procs.split('\n')) if (l.trim()) pids.push(Number(l));
    for (const e of readdirSync(dir, { withFileTypes: true })) if (e.isDirectory()) walk(join(dir, e.name));
  };
  walk(cgroupPath);
  return pids;
}

/**
 * Kills every process in the subtree and waits until it is empty. `cgroup.kill` (5.14+) is atomic
 * against forks; older kernels get a SIGKILL loop over cgroup.procs.
 */
export async function killSubtree(cgroupPath: string, timeoutMs = 10_000): Promise<void> {
  if (!existsSync(cgroupPath)) return;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const pids = pidsIn(cgroupPath);
    if (pids.length === 0) return;
    try {
      writeFileSync(join(cgroupPath, 'cgroup.kill'), '1\n');
    } catch {
      for (const pid of pids) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          /* already gone */
        }
      }
    }
    if (Date.now() > deadline) {
      throw new SystemError('emptying a testbed cgroup', 16, `${pids.length} process(es) still in ${cgroupPath}`, {
        cgroupPath,
      });
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** rmdir bottom-up (cgroupfs refuses rm -r: each directory is removed once its children are). */
export function removeTree(cgroupPath: string): void {
  if (!existsSync(cgroupPath)) return;
  for (const e of readdirSync(cgroupPath, { withFileTypes: true }))
    if (e.isDirectory()) removeTree(join(cgroupPath, e.name));
  try {
    rmdirSync(cgroupPath);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== 'ENOENT')
      throw new SystemError('removing a testbed cgroup', 16, `rmdir ${cgroupPath} failed [${code}]`, { cgroupPath });
  }
}
