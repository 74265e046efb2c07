// Turning the kernel's ids in link info back into names an operator knows: a cgroup id is the
// inode of its directory, a netns is known by inode (named ones under /run/netns, else a process in
// it). Searches are bounded: a node has at most a few thousand cgroups.
import { opendirSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

const MAX_CGROUP_DIRS = 100_000;

/** The directory under `root` whose inode is `id` (cgroup v2 ids are inode numbers), or null. */
export function cgroupPathById(root: string, id: bigint): string | null {
  const stack = [root];
  let seen = 0;
  while (stack.length && seen < MAX_CGROUP_DIRS) {
    const dir = stack.pop()!;
    seen++;
    try {
      if (BigInt(statSync(dir).ino) === id) return dir;
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
  return null;
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
