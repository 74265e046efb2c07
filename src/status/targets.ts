// Turning the kernel's ids in link info back into names an operator knows: a cgroup id is the
// inode of its directory, a netns is known by inode (named ones under /run/netns, else a process in
// it). Searches are bounded: a node has at most a few thousand cgroups.
import { readdirSync, statSync } from 'node:fs';
import { findCgroupDir } from '../node/cgroup.ts';

/** The directory under `root` whose inode is `id` (cgroup v2 ids are inode numbers), or null. */
export function cgroupPathById(root: string, id: bigint): string | null {
  return findCgroupDir(root, (dir) => BigInt(statSync(dir).ino) === id) ?? null;
}

/** A path naming the netns with this inode: /run/netns/NAME if it has a name, else /proc/PID/ns/net. */
export function netnsPathByIno(ino: number): string | null {
  const candidates: string[] = [];
  try {
    candidates.push(...readdirSync('/run/netns').map((n) => `/run/netns/${n}`));
  } catch {
    // no named netns on this machine
  }
  for (const p of candidates) {
    try {
      if (statSync(p).ino === ino) return p;
    } catch {
      // deleted meanwhile
    }
  }
  for (const pid of readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    try {
      if (statSync(`/proc/${pid}/ns/net`).ino === ino) return `/proc/${pid}/ns/net`;
    } catch {
      // exited meanwhile
    }
  }
  return null;
}
