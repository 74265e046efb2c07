// The servers that stand where ztunnel listens: nginx for HTTP (1 KiB answers) on 15001/15006/15008
// and iperf3 for bulk, so the measured hop is the redirect and nothing else; each runs with the
// IP_TRANSPARENT preload (transparent-shim.ts). Where ztunnel listens depends on the topology: node =
// in ztunnel's pod (its netns and cgroup); inpod = in the mesh pod's netns but ztunnel's cgroup, as
// real ztunnel opens its listeners in netns it was handed (the inpod loader only captures listeners
// held by ztunnel's processes).
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Testbed } from '../testbed/testbed.ts';
import type { TestbedPod } from '../testbed/types.ts';
import type { TestbedProcess } from '../testbed/exec.ts';
import { waitForPort } from '../testbed/helpers.ts';
import { logger } from '../log.ts';
import { pinned, type CpuPlan } from './cpus.ts';

const log = logger('bench');

/** What nginx answers: exactly 1 KiB of body, the request/response size. */
export const BODY_BYTES = 1024;

/** Where a sink runs: `netns` is the pod whose network namespace it listens in, `holder` the pod whose cgroup it is in. */
export interface SinkPlace {
  readonly netns: TestbedPod;
  readonly holder: TestbedPod;
}

/** A sink in one pod's own netns and cgroup. */
export const inPod = (pod: TestbedPod): SinkPlace => ({ netns: pod, holder: pod });

function spawnSink(
  tb: Testbed,
  place: SinkPlace,
  argv: readonly string[],
  logFile: string,
  env: NodeJS.ProcessEnv,
): TestbedProcess {
  return tb.spawnAt(place.netns.netnsPath, place.holder.containerCgroupPath, argv, { logFile, env });
}

export interface Sink {
  readonly ports: readonly number[];
  stop(): Promise<void>;
}

/**
 * `dualStack`: one `[::]` listener per port taking both families (ipv6only=off), as ztunnel's own
 * listeners are, so IPv4 and IPv6 connections of a dual-stack pod reach the same socket.
 */
function nginxConf(dir: string, ports: readonly number[], dualStack: boolean): string {
  const body = 'x'.repeat(BODY_BYTES - 1) + '\n';
  return [
    'worker_processes 1;',
    `pid ${join(dir, 'nginx.pid')};`,
    `error_log ${join(dir, 'error.log')} warn;`,
    'events { worker_connections 4096; multi_accept on; }',
    'http {',
    '  access_log off;',
    `  client_body_temp_path ${join(dir, 'body')};`,
    `  proxy_temp_path ${join(dir, 'proxy')};`,
    `  fastcgi_temp_path ${join(dir, 'fastcgi')};`,
    `  uwsgi_temp_path ${join(dir, 'uwsgi')};`,
    `  scgi_temp_path ${join(dir, 'scgi')};`,
    '  keepalive_requests 10000000;',
    '  keepalive_timeout 60s;',
    '  server {',
    ...ports.map((p) =>
      dualStack ? `    listen [::]:${p} ipv6only=off backlog=4096;` : `    listen ${p} backlog=4096;`,
    ),
    `    location / { default_type text/plain; return 200 '${body}'; }`,
    '  }',
    '}',
    '',
  ].join('\n');
}

async function stopProcess(p: TestbedProcess, what: string): Promise<void> {
  p.kill('SIGTERM');
  const timer = setTimeout(() => {
    log.warn({ pid: p.pid, what }, 'sink did not stop on SIGTERM within 5 s; killing it');
    p.kill('SIGKILL');
  }, 5000);
  await p.exited;
  clearTimeout(timer);
}

/** The sink once every port listens (bounded); stopped again if one never does. */
async function listening(
  tb: Testbed,
  place: SinkPlace,
  p: TestbedProcess,
  ports: readonly number[],
  what: string,
): Promise<Sink> {
  try {
    for (const port of ports) await waitForPort(tb, place.netns, port, 10_000);
  } catch (err) {
    await stopProcess(p, what);
    throw err;
  }
  return { ports, stop: () => stopProcess(p, what) };
}

/** nginx answering 1 KiB on every port, at `place`; resolves once all ports listen. */
export async function startNginx(
  tb: Testbed,
  place: SinkPlace,
  ports: readonly number[],
  dir: string,
  shim: string,
  cpus?: CpuPlan,
): Promise<Sink> {
  mkdirSync(dir, { recursive: true });
  const conf = join(dir, 'nginx.conf');
  writeFileSync(
    conf,
    nginxConf(
      dir,
      ports,
      place.netns.ips.some((a) => a.includes(':')),
    ),
  );
  const argv = ['nginx', '-p', dir, '-c', conf, '-e', join(dir, 'error.log'), '-g', 'daemon off;'];
  const p = spawnSink(tb, place, pinned(cpus, 'server', argv), join(dir, 'nginx.out'), {
    ...process.env,
    LD_PRELOAD: shim,
  });
  return listening(tb, place, p, ports, 'nginx');
}

/** `iperf3 -s` on `port` (with an idle extra listener on `extraPort`, see transparent-shim.ts). */
export async function startIperfServer(
  tb: Testbed,
  place: SinkPlace,
  port: number,
  dir: string,
  shim: string,
  extraPort?: number,
  cpus?: CpuPlan,
): Promise<Sink> {
  mkdirSync(dir, { recursive: true });
  const env: NodeJS.ProcessEnv = { ...process.env, LD_PRELOAD: shim };
  if (extraPort !== undefined) env['AMBPF_BENCH_EXTRA_LISTEN'] = String(extraPort);
  const p = spawnSink(
    tb,
    place,
    pinned(cpus, 'server', ['iperf3', '-s', '-p', String(port)]),
    join(dir, `iperf3-${port}.out`),
    env,
  );
  const ports = extraPort === undefined ? [port] : [port, extraPort];
  return listening(tb, place, p, ports, 'iperf3');
}
