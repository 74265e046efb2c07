// Where the benchmark's processes run: client, server (the sinks) and the loader each pinned to their
// own CPUs where the machine has them (`taskset`), so a cell's client and server never take turns on
// one CPU, and the loader's housekeeping never lands on either. Loopback and veth packets are
// processed in softirq on the CPU that sends them, so pinning the processes places their packets too.
//   >= 3 CPUs  loader on the first allowed CPU, server on the second, client on the third (the rest
//              stay idle: fewer CPUs in play, less noise);
//   2 CPUs     client on the second, server and loader share the first (the loader idles during a
//              cell; the client, the busiest of the three, gets a CPU of its own);
//   1 CPU      nothing is pinned.
import { readFileSync } from 'node:fs';

export type CpuRole = 'client' | 'server' | 'loader';

export interface CpuPlan {
  readonly allowed: readonly number[];
  readonly roles: Readonly<Record<CpuRole, readonly number[]>>;
  /** One line for results.md: what was pinned where. */
  readonly note: string;
}

/** The CPUs this process may run on (Cpus_allowed_list of /proc/self/status, e.g. "0-3,6"). */
export function allowedCpus(status = readFileSync('/proc/self/status', 'utf8')): number[] {
  const m = /^Cpus_allowed_list:\s*(\S+)$/m.exec(status);
  if (!m?.[1]) return [];
  const out: number[] = [];
  for (const part of m[1].split(',')) {
    const [a, b] = part.split('-').map(Number);
    if (a === undefined || !Number.isInteger(a)) continue;
    for (let c = a; c <= (b !== undefined && Number.isInteger(b) ? b : a); c++) out.push(c);
  }
  return out;
}

export function cpuPlan(allowed: readonly number[] = allowedCpus(), pin = true): CpuPlan {
  if (!pin)
    return {
      allowed,
      roles: { loader: [], server: [], client: [] },
      note: 'nothing pinned (--no-pin): the scheduler places client, server and loader',
    };
  const [a, b, c] = allowed;
  if (a !== undefined && b !== undefined && c !== undefined) {
    return {
      allowed,
      roles: { loader: [a], server: [b], client: [c] },
      note: `CPUs pinned (taskset): loader ${a}, server (sinks) ${b}, client (wrk, iperf3 -c) ${c}`,
    };
  }
  if (a !== undefined && b !== undefined) {
    return {
      allowed,
      roles: { loader: [a], server: [a], client: [b] },
      note: `2 CPUs: client (wrk, iperf3 -c) pinned to CPU ${b}; server (sinks) and loader share CPU ${a} (taskset)`,
    };
  }
  return { allowed, roles: { loader: [], server: [], client: [] }, note: 'one CPU: nothing pinned' };
}

/** argv run under `taskset -c` on the role's CPUs (unchanged when the plan pins nothing). */
export function pinned(plan: CpuPlan | undefined, role: CpuRole, argv: readonly string[]): string[] {
  const cpus = plan?.roles[role] ?? [];
  return cpus.length === 0 ? [...argv] : ['taskset', '-c', cpus.join(','), ...argv];
}
