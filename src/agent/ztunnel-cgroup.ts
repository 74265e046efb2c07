// Whether each ztunnel connected over ZDS runs inside the cgroup subtree ambpf attaches its programs
// to. The inpod datapath relies on ztunnel's own sockets passing through them: connect4/6 recognises
// its spoofed inbound legs and marks them so the app's replies come back to ztunnel, and sendmsg4/6
// gives its DNS answers the address the pod asked (bpf/ambpf_inpod.bpf.c). A ztunnel outside (a
// systemd service, a --cgroup that does not hold it) has its spoofed legs steered back into itself
// (those connections fail; never a bypass) and its DNS answers show the wrong server. ztunnel as a
// pod under kubepods is always inside; this says so, once per process, when it is not: in the log,
// in `ambpf status` and `ambpf doctor` (through a file beside the state file) and in /metrics.
import { readFileSync, renameSync, writeFileSync, mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import type { Logger } from '../log.ts';
import { describeError } from '../errors.ts';
import { procCgroup, type CgroupPlacement } from '../node/cgroup.ts';

export interface ZtunnelCgroupCheck {
  readonly pid: number;
  /** The process's cgroup directory (its /proc path, `/../..`, when no mount here shows it); null when
   * it could not be read. */
  readonly cgroup: string | null;
  readonly placement: CgroupPlacement;
}

/** The file's content: the connected ztunnels as the loader last saw them. */
export interface ZtunnelCgroupReport {
  readonly attach: string;
  readonly updatedAt: string;
  readonly ztunnels: readonly ZtunnelCgroupCheck[];
}

/** The sentence (and the fix) for a ztunnel outside the attach cgroup. */
export function outsideMessage(attach: string, c: ZtunnelCgroupCheck): string {
  // A path above ambpf's own cgroup namespace (a loader container with a private one) reads /../..
  const where = c.cgroup?.startsWith('/..') ? `${c.cgroup} (relative to ambpf's cgroup namespace)` : c.cgroup;
  return (
    `ztunnel (pid ${c.pid}) runs in cgroup ${where ?? '?'}, outside ${attach} where ambpf's programs are ` +
    'attached: its spoofed inbound legs are steered back into ztunnel (those connections fail) and its DNS ' +
    `answers do not carry the address the pod asked. Run ztunnel as a pod under ${attach}, or pass ` +
    '`ambpf run --cgroup` a directory that holds ztunnel'
  );
}

/**
 * Written by the loader beside its state file, named after it (state.json -> state.ztunnel-cgroup.json:
 * two loaders sharing a directory, as on the testbed, keep theirs apart); read by `ambpf status` and
 * `ambpf doctor`.
 */
export function ztunnelCgroupFile(stateFile: string): string {
  return `${stateFile.replace(/\.json$/, '')}.ztunnel-cgroup.json`;
}

/** The loader's last report beside `stateFile`; null when there is none (or it is not ours). */
export function readZtunnelCgroupReport(stateFile: string): ZtunnelCgroupReport | null {
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(ztunnelCgroupFile(stateFile), 'utf8'));
  } catch {
    return null;
  }
  const o = parsed as Partial<ZtunnelCgroupReport> | null;
  if (typeof o?.attach !== 'string' || typeof o.updatedAt !== 'string' || !Array.isArray(o.ztunnels)) return null;
  return o as ZtunnelCgroupReport;
}

export interface ZtunnelCgroupWatchOptions {
  /** The cgroup directory the programs are attached to (`ambpf run --cgroup`). */
  readonly attach: string;
  readonly log: Logger;
  /** Where the report goes (ztunnelCgroupFile(stateFile)); none: not written. */
  readonly file?: string;
  readonly procRoot?: string;
}

/** Checks the connected ztunnels' cgroups at each ZDS connect and leave (src/agent/handoff.ts). */
export class ZtunnelCgroupWatch {
  readonly #o: ZtunnelCgroupWatchOptions;
  #current: readonly ZtunnelCgroupCheck[] = [];
  /** pids already logged as outside: a ztunnel that reconnects is not logged again. */
  readonly #said = new Set<number>();

  constructor(o: ZtunnelCgroupWatchOptions) {
    this.#o = o;
  }

  get attach(): string {
    return this.#o.attach;
  }

  current(): readonly ZtunnelCgroupCheck[] {
    return this.#current;
  }

  /** The ztunnels connected now; a known pid keeps its first verdict (a process does not move). */
  update(pids: readonly number[]): readonly ZtunnelCgroupCheck[] {
    const known = new Map(this.#current.map((c) => [c.pid, c]));
    this.#current = [...new Set(pids)].map((pid) => known.get(pid) ?? this.#check(pid));
    // Bounded: the pids of ztunnels long gone are forgotten once many have piled up.
    if (this.#said.size > 64) for (const pid of this.#said) if (!pids.includes(pid)) this.#said.delete(pid);
    this.#write();
    return this.#current;
  }

  #check(pid: number): ZtunnelCgroupCheck {
    const { dir, placement } = procCgroup(pid, this.#o.attach, { procRoot: this.#o.procRoot });
    const c = { pid, cgroup: dir ?? null, placement };
    if (placement === 'outside' && !this.#said.has(pid)) {
      this.#said.add(pid);
      this.#o.log.error({ pid, cgroup: c.cgroup, attach: this.#o.attach }, outsideMessage(this.#o.attach, c));
    } else if (placement === 'unknown') {
      this.#o.log.debug({ pid }, "cannot read the cgroup of ztunnel's process: not checked");
    }
    return c;
  }

  #write(): void {
    const file = this.#o.file;
    if (!file) return;
    const report: ZtunnelCgroupReport = {
      attach: this.#o.attach,
      updatedAt: new Date().toISOString(),
      ztunnels: this.#current,
    };
    try {
      mkdirSync(dirname(file), { recursive: true });
      const tmp = `${file}.${process.pid}.tmp`;
      writeFileSync(tmp, JSON.stringify(report, null, 2) + '\n');
      renameSync(tmp, file);
    } catch (err) {
      this.#o.log.warn({ file, err: describeError(err) }, 'cannot write the ztunnel cgroup report');
    }
  }
}
