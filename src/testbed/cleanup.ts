// Removing a testbed by its name prefix, also one left behind by a crashed run. Every kernel object
// a testbed makes is named from its prefix, and every prefix belongs to the family "ambtb…", so
// `ambpf testbed down --all` can find leftovers without any state file:
//   netns        /run/netns/<prefix>-*          (veths, bridges, routes, ipsets, iptables rules die with them)
//   cgroup       <cgroup2>/<prefix>/            (processes killed via cgroup.kill, then rmdir bottom-up)
//   bpffs        /sys/fs/bpf/<prefix>-*         (pins a loader made under the suggested dirs)
//   run dir      <tmpdir>/<prefix>/             (CA, logs, testbed.json)
//   resolv.conf  /etc/netns/<prefix>-*/         (a pod's resolver for `ip netns exec`, dns-upstream.ts)
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cgroup2Root, killSubtree, removeTree } from './cgroup.ts';
import { run } from './run.ts';
import { logger } from '../log.ts';

const log = logger('testbed');

/** Every testbed prefix starts with this; distinctive enough never to match anything else on a machine. */
export const PREFIX_FAMILY = 'ambtb';
export const BPFFS_ROOT = '/sys/fs/bpf';
const NETNS_DIR = '/run/netns';
/** Where `ip netns exec <name>` finds files to bind-mount over /etc (dns-upstream.ts writes resolv.conf there). */
export const ETC_NETNS = '/etc/netns';

export function runDirOf(prefix: string): string {
  return join(tmpdir(), prefix);
}

/**
 * Paths under `root` down to `depth` levels whose names pass `keep` (a directory that fails it is
 * not entered); unreadable directories are skipped. For leftover checks: cgroup trees, bpffs.
 */
export function listTree(
  root: string,
  depth: number,
  o: { keep?: (name: string) => boolean; dirsOnly?: boolean } = {},
): string[] {
  const out: string[] = [];
  const visit = (dir: string, d: number): void => {
    let entries;
    try {
      entries = readdirSync(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      if ((o.dirsOnly && !e.isDirectory()) || (o.keep && !o.keep(e.name))) continue;
      out.push(join(dir, e.name));
      if (e.isDirectory() && d > 1) visit(join(dir, e.name), d - 1);
    }
  };
  visit(root, depth);
  return out.sort();
}

function listDir(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

function ownedBy(prefix: string, name: string): boolean {
  return name === prefix || name.startsWith(`${prefix}-`);
}

/** Removes everything of one testbed; idempotent, and tolerant of half-made testbeds. */
export async function removeByPrefix(prefix: string): Promise<void> {
  if (!prefix.startsWith(PREFIX_FAMILY))
    throw new RangeError(`refusing to remove "${prefix}": testbed prefixes start with ${PREFIX_FAMILY}`);
  const cg = join(cgroup2Root(), prefix);
  // Processes first: a netns held by a live process outlives `ip netns del`.
  await killSubtree(cg);
  for (const name of listDir(NETNS_DIR).filter((n) => ownedBy(prefix, n))) {
    const r = await run(['ip', 'netns', 'del', name], { check: false });
    if (r.code !== 0 && existsSync(join(NETNS_DIR, name)))
      log.warn({ netns: name, stderr: r.stderr.trim() }, 'could not delete testbed netns');
  }
  removeTree(cg);
  for (const name of listDir(BPFFS_ROOT).filter((n) => ownedBy(prefix, n))) {
    rmSync(join(BPFFS_ROOT, name), { recursive: true, force: true });
  }
  for (const name of listDir(ETC_NETNS).filter((n) => ownedBy(prefix, n))) {
    rmSync(join(ETC_NETNS, name), { recursive: true, force: true });
  }
  rmSync(runDirOf(prefix), { recursive: true, force: true });
}

/**
 * The live process that owns a testbed (startTestbed writes <runDir>/owner unless detached), or
 * undefined when it is detached or its owner is gone: `down --all` leaves owned testbeds alone so it
 * never pulls a cluster from under a test someone else is running right now.
 */
export function liveOwner(prefix: string): number | undefined {
  let pid: number;
  try {
    pid = Number(readFileSync(join(runDirOf(prefix), 'owner'), 'utf8').trim());
  } catch {
    return undefined;
  }
  try {
    return Number.isInteger(pid) && pid > 0 && readFileSync(`/proc/${pid}/cmdline`, 'utf8').length > 0
      ? pid
      : undefined;
  } catch {
    return undefined;
  }
}

/** Prefixes of all testbeds present on this machine (running or left behind). */
export function findPrefixes(): string[] {
  const found = new Set<string>();
  const family = (n: string): string | undefined => (n.startsWith(PREFIX_FAMILY) ? n.split('-')[0] : undefined);
  let cgRoot: string | undefined;
  try {
    cgRoot = cgroup2Root();
  } catch {
    cgRoot = undefined;
  }
  // Run dirs are <tmpdir>/<prefix> exactly; other files there that merely start with the family are not ours.
  const runDirs = listDir(tmpdir()).filter((n) => /^ambtb[a-z0-9]+$/.test(n));
  for (const n of [
    ...listDir(NETNS_DIR),
    ...listDir(ETC_NETNS),
    ...listDir(BPFFS_ROOT),
    ...(cgRoot ? listDir(cgRoot) : []),
    ...runDirs,
  ]) {
    const p = family(n);
    if (p) found.add(p);
  }
  return [...found].sort();
}
