// Finds a pod's processes the way istio-cni does for pods that are already running: the pod UID
// appears in the cgroup path of every container of the pod (cgroupfs driver: `pod<uid>`; systemd
// driver: `kubepods-…-pod<uid with _>.slice`). One of them leads to the pod's network namespace.
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';

/** Both spellings kubelet uses for a pod's cgroup directory. */
export function podCgroupMarkers(uid: string): readonly string[] {
  return [`pod${uid}`, `pod${uid.replaceAll('-', '_')}`];
}

export interface PodProcess {
  readonly pid: number;
  /** The process's cgroup v2 path (relative to the v2 root), e.g. /kubepods/besteffort/pod<uid>/<ctr>. */
  readonly cgroup: string;
  /** `net:[4026532xyz]`: identifies the netns without opening it. */
  readonly netnsId: string;
}

/**
 * Scans /proc once and returns, for each wanted pod UID, the processes found in its cgroup. A
 * single scan per reconcile keeps the cost linear in processes, not pods × processes.
 */
export async function findPodProcesses(
  uids: readonly string[],
  procRoot = '/proc',
): Promise<Map<string, PodProcess[]>> {
  const found = new Map<string, PodProcess[]>();
  if (uids.length === 0) return found;
  const markers: [string, string][] = [];
  for (const uid of uids) for (const m of podCgroupMarkers(uid)) markers.push([m, uid]);
  // Synchronous reads: /proc answers from memory, and a few hundred tiny async reads cost more in
  // thread-pool round trips (~10 ms) than the reads themselves (~1 ms). This runs on every reconcile.
  let entries: string[];
  try {
    entries = readdirSync(procRoot);
  } catch {
    return found;
  }
  for (const pidText of entries) {
    if (!/^\d+$/.test(pidText)) continue;
    let cgroupText: string;
    try {
      cgroupText = readFileSync(`${procRoot}/${pidText}/cgroup`, 'utf8');
    } catch {
      continue; // the process exited while we looked
    }
    const parts = cgroupText.split(/[/\n:]/);
    for (const [marker, uid] of markers) {
      // Match a whole path component so pod "ab" never matches pod "abc".
      if (!parts.some((part) => part === marker || part.endsWith(`-${marker}.slice`))) continue;
      let netnsId: string;
      try {
        netnsId = readlinkSync(`${procRoot}/${pidText}/ns/net`);
      } catch {
        break;
      }
      const v2 =
        cgroupText
          .split('\n')
          .find((l) => l.startsWith('0::'))
          ?.slice(3) ?? '';
      const list = found.get(uid) ?? [];
      list.push({ pid: Number(pidText), cgroup: v2, netnsId });
      found.set(uid, list);
      break;
    }
  }
  for (const list of found.values()) list.sort((a, b) => a.pid - b.pid);
  return found;
}
