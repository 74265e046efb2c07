// Where a process sits in the cgroup v2 tree, and whether that is inside the directory ambpf attaches
// its cgroup programs to (`ambpf run --cgroup`, kubelet's kubepods by default). The inpod datapath
// needs ztunnel's own sockets to run through those programs (bpf/ambpf_inpod.bpf.c, connect4/6 and
// sendmsg4/6 of ztunnel's spoofed legs and DNS answers); a ztunnel outside the subtree is invisible
// to them, and nothing else would say so.
import { readFileSync } from 'node:fs';
import { isAbsolute, join, resolve, sep } from 'node:path';
import { mountsOf, type Mount } from '../doctor/system.ts';

/** inside: at or under the attach directory; outside: elsewhere; unknown: the process's cgroup
 * could not be read (it exited, /proc is not ours, no cgroup v2 line). */
export type CgroupPlacement = 'inside' | 'outside' | 'unknown';

/** The v2 path of /proc/<pid>/cgroup's `0::` line (relative to the reader's cgroup namespace root). */
export function cgroupV2Line(text: string): string | undefined {
  for (const line of text.split('\n')) if (line.startsWith('0::')) return line.slice(3);
  return undefined;
}

/**
 * The cgroup v2 mount that holds `dir` (the longest mount point that is a prefix of it), else the
 * first cgroup v2 mount, else undefined.
 */
export function cgroup2MountOf(dir: string | undefined, mounts?: readonly Mount[]): string | undefined {
  const roots = mountsOf('cgroup2', mounts);
  const holding = dir === undefined ? [] : roots.filter((r) => within(resolve(dir), r));
  return holding.sort((a, b) => b.length - a.length)[0] ?? roots[0];
}

/** `path` is `dir` or below it, component-wise: /kubepods-besteffort is not under /kubepods. */
function within(path: string, dir: string): boolean {
  const d = dir.endsWith(sep) ? dir : dir + sep;
  return path === dir || path.startsWith(d);
}

/**
 * Whether the process's cgroup directory `procCgroup` (absolute, under the mount) lies inside
 * `attach`. Pure: both paths are normalised, so trailing slashes and `..` do not fool it.
 */
export function cgroupPlacement(attach: string, procCgroup: string | undefined): CgroupPlacement {
  if (procCgroup === undefined) return 'unknown';
  return within(resolve(procCgroup), resolve(attach)) ? 'inside' : 'outside';
}

export interface ProcCgroup {
  /** The absolute directory of the process's cgroup (mount point + v2 path), undefined if unreadable. */
  readonly dir: string | undefined;
  readonly placement: CgroupPlacement;
}

/**
 * The cgroup of `pid` relative to `attach` (an absolute directory under a cgroup v2 mount). A path
 * outside the reader's cgroup namespace shows as `/../x` and resolves outside the mount: outside.
 */
export function procCgroup(
  pid: number,
  attach: string,
  o: { procRoot?: string; mounts?: readonly Mount[] } = {},
): ProcCgroup {
  let text: string;
  try {
    text = readFileSync(`${o.procRoot ?? '/proc'}/${pid}/cgroup`, 'utf8');
  } catch {
    return { dir: undefined, placement: 'unknown' };
  }
  const v2 = cgroupV2Line(text);
  const mount = cgroup2MountOf(attach, o.mounts);
  if (v2 === undefined || mount === undefined || !isAbsolute(v2)) return { dir: undefined, placement: 'unknown' };
  const dir = join(mount, v2);
  return { dir, placement: cgroupPlacement(attach, dir) };
}
