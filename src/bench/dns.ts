// DNS queries per second (issue 18, inpod only): a mesh pod's resolver traffic captured to ztunnel's
// DNS port 15053, per path:
//   direct              the client asks 127.0.0.1:15053 itself (the floor)
//   iptables/nftables   Istio's in-pod rules (nat REDIRECT of UDP 53 to 15053, raw conntrack zone 1)
//   ebpf                ambpf run --mode inpod (sendmsg4 to 127.0.0.1:15053, recvmsg4 restoring the server)
// Sink: dnsmasq on 127.0.0.1:15053 in the mesh pod's netns, held by ztunnel's pod cgroup (where in-pod
// ztunnel's DNS proxy listens), answering one name from its own data, so the redirect is what is
// measured, not a proxy. nginx stays on 15001/15006/15008 as in the sink phase: the eBPF path
// captures a pod only once ztunnel's listeners are there.
// Client: dnsperf in the mesh pod. It sends from unconnected UDP sockets (sendto per query), so the
// eBPF path runs its hooks on every query and every answer; glibc connects its socket, which costs
// ambpf one connect4 per lookup instead. The redirected paths address a resolver where nothing
// listens (DNS_UPSTREAM_IPS[0]:53, no upstream running): a query the capture missed is lost and
// counted as an error, never as a figure.
import { join } from 'node:path';
import { writeFileSync } from 'node:fs';
import type { Testbed } from '../testbed/testbed.ts';
import type { TestbedPod } from '../testbed/types.ts';
import { waitForPort } from '../testbed/helpers.ts';
import { DNS_UPSTREAM_IPS, dnsmasqArgv } from '../testbed/dns-upstream.ts';
import { logger } from '../log.ts';
import { BenchError } from './errors.ts';
import { cpuUsageUs } from './load.ts';
import { sinkActors, startHttpSink, type MatrixObserver, type MatrixOptions } from './matrix.ts';
import { startPath, type PathContext } from './paths.ts';
import type { SinkPlace } from './sinks.ts';
import { schedule } from './stats.ts';
import { isDirect, type PathName, type Sample } from './types.ts';

const log = logger('bench');

/** ztunnel's DNS proxy port inside the pod (src/testbed/ztunnel/dns.ts PORT_DNS). */
const PORT_DNS = 15053;
const NAME = 'bench.test';
const ANSWER = '198.18.88.1';
/** dnsperf: sockets and queries in flight (enough to keep one dnsmasq busy on a shared 2-core machine). */
const CLIENTS = 4;
const IN_FLIGHT = 64;

export interface DnsperfResult {
  readonly sent: number;
  readonly completed: number;
  /** Answers with rcode NOERROR (the sink answers every query with one address). */
  readonly noerror: number;
  readonly lost: number;
  readonly qps: number;
  readonly avgUs: number;
}

/** The summary dnsperf prints at the end of a run. */
export function parseDnsperf(stdout: string): DnsperfResult | undefined {
  const num = (re: RegExp): number | undefined => {
    const m = re.exec(stdout);
    return m?.[1] === undefined ? undefined : Number(m[1]);
  };
  const sent = num(/Queries sent:\s+(\d+)/);
  const completed = num(/Queries completed:\s+(\d+)/);
  const lost = num(/Queries lost:\s+(\d+)/);
  const qps = num(/Queries per second:\s+([\d.]+)/);
  const avg = num(/Average Latency \(s\):\s+([\d.]+)/);
  if (sent === undefined || completed === undefined || lost === undefined || qps === undefined || avg === undefined)
    return undefined;
  return { sent, completed, noerror: num(/Response codes:.*\bNOERROR (\d+)/) ?? 0, lost, qps, avgUs: avg * 1e6 };
}

interface DnsSink {
  stop(): Promise<void>;
}

async function startDnsSink(tb: Testbed, place: SinkPlace, dir: string): Promise<DnsSink> {
  const argv = dnsmasqArgv({ addresses: ['127.0.0.1'], port: PORT_DNS, records: { [NAME]: [ANSWER] } });
  const p = tb.spawnAt(place.netns.netnsPath, place.holder.containerCgroupPath, argv, {
    logFile: join(dir, 'dnsmasq-sink.out'),
  });
  const stop = async (): Promise<void> => {
    p.kill('SIGTERM');
    await p.exited;
  };
  try {
    await waitForPort(tb, place.netns, PORT_DNS, 10_000);
  } catch (err) {
    await stop();
    throw err;
  }
  return { stop };
}

interface DnsCellOptions {
  readonly seconds: number;
  /** The query file dnsperf reads. */
  readonly data: string;
  /** Where dnsperf's own report of the cell is kept (the logs of the run). */
  readonly report: string;
}

async function dnsCell(
  tb: Testbed,
  client: TestbedPod,
  server: TestbedPod,
  path: PathName,
  o: DnsCellOptions,
): Promise<{ metrics: Record<string, number>; errors: number }> {
  const { seconds, data } = o;
  const [ip, port] = isDirect(path) ? ['127.0.0.1', PORT_DNS] : [DNS_UPSTREAM_IPS[0], 53];
  const argv = [
    'dnsperf',
    '-s',
    ip,
    '-p',
    String(port),
    '-d',
    data,
    '-l',
    String(seconds),
    '-c',
    String(CLIENTS),
    '-q',
    String(IN_FLIGHT),
    '-t',
    '1',
  ];
  const c0 = cpuUsageUs(client.cgroupPath);
  const s0 = cpuUsageUs(server.cgroupPath);
  const r = await tb.exec(client, argv, { check: false, timeoutMs: (seconds + 15) * 1000 });
  const c1 = cpuUsageUs(client.cgroupPath);
  const s1 = cpuUsageUs(server.cgroupPath);
  writeFileSync(o.report, r.stdout + r.stderr);
  const out = parseDnsperf(r.stdout);
  if (r.code !== 0 || !out)
    throw new BenchError(
      `dnsperf in ${client.name} failed (exit ${r.code}): ${(r.stderr || r.stdout).trim().slice(-300)}`,
    );
  const n = Math.max(out.completed, 1);
  return {
    metrics: { qps: out.qps, avgUs: out.avgUs, clientCpuUsPerReq: (c1 - c0) / n, serverCpuUsPerReq: (s1 - s0) / n },
    // Lost queries and answers other than NOERROR: a capture that went elsewhere shows here.
    errors: out.lost + (out.completed - out.noerror),
  };
}

/** The DNS workload: every round, every path (rotated) brought up in turn against the same sinks. */
export async function runDnsPhase(tb: Testbed, ctx: PathContext, o: MatrixOptions, obs: MatrixObserver): Promise<void> {
  const { meshClient, zpod, sinks } = sinkActors(tb);
  const data = join(o.dir, 'dns-queries.txt');
  writeFileSync(data, `${NAME} A\n`);
  const http = await startHttpSink(tb, o);
  let dns: DnsSink | undefined;
  try {
    dns = await startDnsSink(tb, sinks, o.dir);
    for (const { round, warmup, order } of schedule(o.paths, o.rounds, o.warmup)) {
      for (const pathName of order) {
        const path = await startPath(ctx, pathName);
        try {
          await path.settle();
          const report = join(o.dir, `dnsperf-${round}-${pathName}.txt`);
          const r = await dnsCell(tb, meshClient, zpod, pathName, { seconds: o.seconds, data, report });
          const sample: Sample = {
            phase: 'sink',
            round,
            warmup,
            path: pathName,
            workload: 'dns',
            placement: 'same-node',
            ...r,
          };
          log.info(
            { phase: 'sink', round, warmup, path: pathName, workload: 'dns', ...r.metrics, errors: r.errors },
            'cell',
          );
          obs.sample(sample);
          if (path.coldStartMs.length > 0) obs.loader(path.coldStartMs, path.rssKiB());
        } finally {
          await path.down();
        }
      }
    }
  } finally {
    await dns?.stop();
    await http.stop();
  }
}
