// Where a process sits in the cgroup v2 tree, and whether that is inside the directory ambpf attaches
// its cgroup programs to (`ambpf run --cgroup`, kubelet's kubepods by default). The inpod datapath
// needs ztunnel's own sockets to run through those programs (bpf/ambpf_inpod.bpf.c, connect4/6 and
// sendmsg4/6 of ztunnel's spoofed legs and DNS answers); a ztunnel outside the subtree is invisible
// to them, and nothing else would say so.
import { existsSync, opendirSync, readFileSync } from 'node:fs';
import { isAbsolute, join, posix, resolve, sep } from 'node:path';
import { readMountInfo, type MountInfo } from '../doctor/system.ts';

/** inside: at or under the attach directory; outside: elsewhere; unknown: the process's cgroup
 * could not be read (it exited, /proc is not ours, no cgroup v2 line). */
export type CgroupPlacement = 'inside' | 'outside' | 'unknown';

/** The v2 path of /proc/<pid>/cgroup's `0::` line (relative to the reader's cgroup namespace root). */
export function cgroupV2Line(text: string): string | undefined {
  for (const line of text.split('\n')) if (line.startsWith('0::')) return line.slice(3);
  return undefined;
}

/** `path` is `dir` or below it, component-wise: /kubepods-besteffort is not under /kubepods. */
function within(path: string, dir: string): boolean {
  const d = dir.endsWith(sep) ? dir : dir + sep;
  return path === dir || path.startsWith(d);
}

/** The cgroup v2 mount holding `dir` (the longest mount point that is a prefix of it), else the first. */
export function cgroup2MountOf(
  dir: string | undefined,
  mounts: readonly MountInfo[] = readMountInfo(),
): MountInfo | undefined {
  const v2 = mounts.filter((m) => m.fstype === 'cgroup2');
  const holding = dir === undefined ? [] : v2.filter((m) => within(resolve(dir), m.target));
  return holding.sort((a, b) => b.target.length - a.target.length)[0] ?? v2[0];
}

/**
 * The directory of cgroup `v2` (a /proc/<pid>/cgroup path) under `mount`, or undefined when the two
 * cannot be related by their text: either lies above the reader's cgroup namespace (`/..`, as in a
 * container with its own cgroup namespace and the node's cgroup tree mounted in), or the cgroup is
 * not below what the mount shows.
 */
export function cgroupDirOf(v2: string, mount: Pick<MountInfo, 'target' | 'root'>): string | undefined {
  const above = (p: string): boolean => p.split('/').includes('..');
  if (!isAbsolute(v2) || above(v2) || above(mount.root) || !within(v2, mount.root)) return undefined;
  return join(mount.target, posix.relative(mount.root, v2));
}

/**
 * Whether the process's cgroup directory `procCgroup` (absolute, under the mount) lies inside
 * `attach`. Pure: both paths are normalised, so trailing slashes and `..` do not fool it.
 */
export function cgroupPlacement(attach: string, procCgroup: string | undefined): CgroupPlacement {
  if (procCgroup === undefined) return 'unknown';
  return within(resolve(procCgroup), resolve(attach)) ? 'inside' : 'outside';
}

/** A node has at most a few thousand cgroups; a walk stops there. */
const MAX_CGROUP_DIRS = 100_000;

/**
 * The first directory at or under `root` that `match` accepts, depth first; bounded. A directory
 * removed or unreadable while we walk (match or readdir throws) is skipped with its subtree.
 */
export function findCgroupDir(root: string, match: (dir: string) => boolean): string | undefined {
  const stack = [root];
  for (let seen = 0; stack.length > 0 && seen < MAX_CGROUP_DIRS; seen++) {
    const dir = stack.pop()!;
    try {
      if (match(dir)) return dir;
      const d = opendirSync(dir);
      try {
        for (let e = d.readSync(); e !== null; e = d.readSync()) if (e.isDirectory()) stack.push(join(dir, e.name));
      } finally {
        d.closeSync();
      }
    } catch {
      // removed while we walked, or not readable: skip it
    }
  }
  return undefined;
}

/** The cgroup at or under `dir` whose cgroup.procs lists `pid` (in this PID namespace), or undefined. */
export function findPidCgroup(dir: string, pid: number): string | undefined {
  const want = String(pid);
  const lists = (d: string): boolean => {
    try {
      return readFileSync(join(d, 'cgroup.procs'), 'utf8').split('\n').includes(want);
    } catch {
      return false; // gone meanwhile; its subdirectories are still looked at
    }
  };
  return findCgroupDir(dir, lists);
}

export interface ProcCgroup {
  /** The process's cgroup directory, or its /proc path when no mount here shows it (undefined: unreadable). */
  readonly dir: string | undefined;
  readonly placement: CgroupPlacement;
}

/**
 * The cgroup of `pid` relative to `attach` (an absolute directory under a cgroup v2 mount). Its
 * /proc/<pid>/cgroup path resolved against the mount decides; when the path cannot be resolved (the
 * loader in a container with its own cgroup namespace sees `/../..` paths), whether the attach
 * subtree's cgroup.procs lists the pid.
 */
export function procCgroup(
  pid: number,
  attach: string,
  o: { procRoot?: string; mounts?: readonly MountInfo[] } = {},
): ProcCgroup {
  const procRoot = o.procRoot ?? '/proc';
  let text: string;
  try {
    text = readFileSync(`${procRoot}/${pid}/cgroup`, 'utf8');
  } catch {
    return { dir: undefined, placement: 'unknown' };
  }
  const v2 = cgroupV2Line(text);
  const mount = cgroup2MountOf(attach, o.mounts);
  if (v2 === undefined || mount === undefined) return { dir: undefined, placement: 'unknown' };
  const dir = cgroupDirOf(v2, mount);
  if (dir !== undefined) return { dir, placement: cgroupPlacement(attach, dir) };
  const found = findPidCgroup(attach, pid);
  if (found !== undefined) return { dir: found, placement: 'inside' };
  // Not listed under attach: outside, unless it exited while we looked.
  return existsSync(`${procRoot}/${pid}`)
    ? { dir: v2, placement: 'outside' }
    : { dir: undefined, placement: 'unknown' };
}
