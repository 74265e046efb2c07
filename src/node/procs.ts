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
  /** Start time, clock ticks after boot (/proc/<pid>/stat field 22); undefined if unreadable. */
  readonly started: number | undefined;
}

/** Field 22 of /proc/<pid>/stat (starttime); the fields are counted after the command's closing ')'. */
function startTime(procRoot: string, pid: string): number | undefined {
  try {
    const stat = readFileSync(`${procRoot}/${pid}/stat`, 'utf8');
    const v = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]);
    return Number.isFinite(v) ? v : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Oldest first (the sandbox, which starts before the pod's containers), pid for equal or unknown start
 * times. Not the pid alone: pids wrap (pid_max is 32768 on many nodes), and a process started after a
 * wrap sorts before the sandbox. A process of another netns in the pod's cgroup (the bench's and
 * testbed's ztunnel stand-ins open their listeners as processes in a mesh pod's netns, in ztunnel's
 * cgroup) then became "the pod's netns", and the loader marked that mesh pod as ztunnel.
 */
function oldestFirst(a: PodProcess, b: PodProcess): number {
  if (a.started !== undefined && b.started !== undefined && a.started !== b.started) return a.started - b.started;
  return a.pid - b.pid;
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
  // marker -> uid, looked up per path component: a scan of a node's ~1,000 processes for 250 pods cost
  // ~140 ms comparing every component with every marker, ~15 ms this way (issue 20).
  const markers = new Map<string, string>();
  for (const uid of uids) for (const m of podCgroupMarkers(uid)) markers.set(m, uid);
  const uidOf = (part: string): string | undefined => {
    const direct = markers.get(part);
    if (direct !== undefined || !part.endsWith('.slice')) return direct;
    // systemd driver: `kubepods-besteffort-pod<uid>.slice`: the marker follows one of the dashes.
    for (let i = part.indexOf('-'); i >= 0; i = part.indexOf('-', i + 1)) {
      const uid = markers.get(part.slice(i + 1, -'.slice'.length));
      if (uid !== undefined) return uid;
    }
    return undefined;
  };
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
    // Match a whole path component so pod "ab" never matches pod "abc".
    const uid = cgroupText
      .split(/[/\n:]/)
      .map(uidOf)
      .find((u) => u !== undefined);
    if (uid === undefined) continue;
    let netnsId: string;
    try {
      netnsId = readlinkSync(`${procRoot}/${pidText}/ns/net`);
    } catch {
      continue;
    }
    const v2 =
      cgroupText
        .split('\n')
        .find((l) => l.startsWith('0::'))
        ?.slice(3) ?? '';
    const list = found.get(uid) ?? [];
    list.push({ pid: Number(pidText), cgroup: v2, netnsId, started: startTime(procRoot, pidText) });
    found.set(uid, list);
  }
  for (const list of found.values()) list.sort(oldestFirst);
  return found;
}
