// The load generators, each bounded in time: wrk (new connections with `Connection: close`, or
// kept-alive request/response with latency percentiles through a Lua `done` hook) and the iperf3
// client (bulk at a given write size). Both run inside the client pod (netns + cgroup).
import { readFileSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import type { Testbed, Target } from '../testbed/testbed.ts';
import { BenchError } from './errors.ts';
import { pinned, type CpuPlan } from './cpus.ts';

/** wrk prints this JSON line from its `done` hook: exact counts and µs percentiles incl. p99.9. */
const WRK_LUA = `done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('AMBPF_WRK {"requests":%d,"durationUs":%d,"socketErrors":%d,"statusErrors":%d,"p50":%d,"p99":%d,"p999":%d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
`;

export interface WrkResult {
  readonly requests: number;
  readonly durationUs: number;
  readonly socketErrors: number;
  readonly statusErrors: number;
  readonly p50: number;
  readonly p99: number;
  readonly p999: number;
}

export function wrkScript(dir: string): string {
  const path = join(dir, 'ambpf-bench-wrk.lua');
  if (!existsSync(path)) writeFileSync(path, WRK_LUA);
  return path;
}

/** Parses the AMBPF_WRK line of wrk's output. */
export function parseWrk(stdout: string): WrkResult | undefined {
  const m = /^AMBPF_WRK (\{.*\})$/m.exec(stdout);
  if (!m?.[1]) return undefined;
  return JSON.parse(m[1]) as WrkResult;
}

export interface WrkOptions {
  readonly url: string;
  readonly seconds: number;
  readonly connections: number;
  /** New connection per request (`Connection: close`). */
  readonly close: boolean;
  readonly script: string;
  /** Pins wrk to the client's CPUs (cpus.ts). */
  readonly cpus?: CpuPlan | undefined;
}

export async function runWrk(tb: Testbed, client: Target, o: WrkOptions): Promise<WrkResult> {
  const argv = ['wrk', '-t1', `-c${o.connections}`, `-d${o.seconds}s`, '--timeout', '2s', '-s', o.script];
  if (o.close) argv.push('-H', 'Connection: close');
  argv.push(o.url);
  const r = await tb.exec(client, pinned(o.cpus, 'client', argv), { check: false, timeoutMs: (o.seconds + 15) * 1000 });
  const parsed = parseWrk(r.stdout);
  if (r.code !== 0 || !parsed)
    throw new BenchError(
      `wrk against ${o.url} failed (exit ${r.code}): ${(r.stderr || r.stdout).trim().slice(0, 300)}`,
      { url: o.url },
    );
  return parsed;
}

export interface IperfResult {
  readonly bitsPerSecond: number;
  readonly retransmits: number;
}

/** The receiver's rate (what arrived, not what was queued) and the sender's retransmits from `iperf3 -J`. */
export function parseIperf(stdout: string): IperfResult | undefined {
  let j: { end?: { sum_received?: { bits_per_second?: number }; sum_sent?: { retransmits?: number } }; error?: string };
  try {
    j = JSON.parse(stdout) as typeof j;
  } catch {
    return undefined;
  }
  const bps = j.end?.sum_received?.bits_per_second;
  if (j.error || typeof bps !== 'number') return undefined;
  return { bitsPerSecond: bps, retransmits: j.end?.sum_sent?.retransmits ?? 0 };
}

export interface IperfOptions {
  readonly ip: string;
  readonly port: number;
  readonly seconds: number;
  /** Bytes per write(): the -l of iperf3. */
  readonly writeBytes: number;
  /** Pins iperf3 to the client's CPUs (cpus.ts). */
  readonly cpus?: CpuPlan | undefined;
}

export async function runIperf(tb: Testbed, client: Target, o: IperfOptions): Promise<IperfResult> {
  const argv = [
    'iperf3',
    '-c',
    o.ip,
    '-p',
    String(o.port),
    '-t',
    String(o.seconds),
    '-l',
    String(o.writeBytes),
    '-J',
    '--connect-timeout',
    '3000',
  ];
  const r = await tb.exec(client, pinned(o.cpus, 'client', argv), { check: false, timeoutMs: (o.seconds + 15) * 1000 });
  const parsed = parseIperf(r.stdout);
  if (r.code !== 0 || !parsed) {
    let reason = r.stderr.trim();
    try {
      reason = (JSON.parse(r.stdout) as { error?: string }).error ?? reason;
    } catch {
      /* not JSON */
    }
    throw new BenchError(
      `iperf3 to ${o.ip}:${o.port} with ${o.writeBytes}-byte writes failed (exit ${r.code}): ${reason.slice(0, 300)}`,
    );
  }
  return parsed;
}

/** cgroup v2 CPU time (user + system) of everything in the cgroup, µs. */
export function cpuUsageUs(cgroupPath: string): number {
  const m = /^usage_usec (\d+)$/m.exec(readFileSync(join(cgroupPath, 'cpu.stat'), 'utf8'));
  if (!m?.[1]) throw new BenchError(`${cgroupPath}/cpu.stat has no usage_usec`);
  return Number(m[1]);
}
