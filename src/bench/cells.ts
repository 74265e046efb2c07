// One cell of the matrix: reset state, measure one workload from the client pod to its endpoint
// (bounded in time), and turn the tool's output into metrics. CPU per request is the delta of the
// client's and the server's pod cgroup `usage_usec` over the cell, divided by the requests served.
import type { Testbed } from '../testbed/testbed.ts';
import type { TestbedPod } from '../testbed/types.ts';
import { killTimeWait } from './hygiene.ts';
import { cpuUsageUs, runIperf, runWrk } from './load.ts';
import type { CpuPlan } from './cpus.ts';
import type { WorkloadName } from './types.ts';

export interface Endpoint {
  readonly ip: string;
  readonly port: number;
}

export interface CellTarget {
  readonly client: TestbedPod;
  /** Pods whose cgroup CPU counts as the server side (ztunnel's pod; in e2e also the destination). */
  readonly servers: readonly TestbedPod[];
  readonly endpoint: Endpoint;
  /** Netns whose TIME_WAIT sockets are killed before the cell. */
  readonly netns: readonly string[];
}

export interface CellOptions {
  readonly seconds: number;
  readonly wrkScript: string;
  /** Concurrent connections of wrk. */
  readonly connections: number;
  /** Where the client runs (cpus.ts); unpinned without. */
  readonly cpus?: CpuPlan | undefined;
}

export interface CellResult {
  readonly metrics: Record<string, number>;
  readonly errors: number;
  /** Requests completed (HTTP workloads; a connection each for `connections`). */
  readonly requests?: number;
}

const WRITE_BYTES: Readonly<Record<string, number>> = {
  'bulk-1k': 1024,
  'bulk-16k': 16 * 1024,
  'bulk-128k': 128 * 1024,
};

const sumCpu = (pods: readonly TestbedPod[]): number => pods.reduce((a, p) => a + cpuUsageUs(p.cgroupPath), 0);

export async function runCell(tb: Testbed, workload: WorkloadName, t: CellTarget, o: CellOptions): Promise<CellResult> {
  await killTimeWait(t.netns);
  const writeBytes = WRITE_BYTES[workload];
  if (writeBytes !== undefined) {
    const r = await runIperf(tb, t.client, {
      ip: t.endpoint.ip,
      port: t.endpoint.port,
      seconds: o.seconds,
      writeBytes,
      cpus: o.cpus,
    });
    return { metrics: { gbps: r.bitsPerSecond / 1e9, retransmits: r.retransmits }, errors: 0 };
  }
  const c0 = cpuUsageUs(t.client.cgroupPath);
  const s0 = sumCpu(t.servers);
  const r = await runWrk(tb, t.client, {
    url: `http://${t.endpoint.ip.includes(':') ? `[${t.endpoint.ip}]` : t.endpoint.ip}:${t.endpoint.port}/`,
    seconds: o.seconds,
    connections: o.connections,
    close: workload === 'connections',
    script: o.wrkScript,
    cpus: o.cpus,
  });
  const c1 = cpuUsageUs(t.client.cgroupPath);
  const s1 = sumCpu(t.servers);
  const secs = r.durationUs / 1e6;
  const reqs = Math.max(r.requests, 1);
  const metrics: Record<string, number> =
    workload === 'connections'
      ? { connPerSec: r.requests / secs }
      : { reqPerSec: r.requests / secs, p50us: r.p50, p99us: r.p99, p999us: r.p999 };
  metrics['clientCpuUsPerReq'] = (c1 - c0) / reqs;
  metrics['serverCpuUsPerReq'] = (s1 - s0) / reqs;
  return { metrics, errors: r.socketErrors + r.statusErrors, requests: r.requests };
}
