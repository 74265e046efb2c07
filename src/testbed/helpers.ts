// Test and demo helpers on a running testbed: an HTTP server in a pod, curl from a pod, waiting for a
// listener. Each is bounded in time.
import { fileURLToPath } from 'node:url';
import type { Target, Testbed } from './testbed.ts';
import type { TestbedProcess } from './exec.ts';
import { TestbedTimeoutError } from './errors.ts';

const HTTP_ECHO = fileURLToPath(new URL('./servers/http-echo.ts', import.meta.url));

/** Node 24 binary: the one running us (tests, bin/ambpf both run on node_modules/node). */
export function nodeBinary(): string {
  return process.execPath;
}

/** Waits until something listens on TCP `port` inside the target's netns (checked with `ss`). */
export async function waitForPort(tb: Testbed, target: Target, port: number, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await tb.exec(target, ['ss', '-Hltn', `sport = :${port}`], { check: false, timeoutMs: 2000 });
    if (r.code === 0 && r.stdout.trim() !== '') return;
    if (Date.now() > deadline) throw new TestbedTimeoutError(`a listener on port ${port}`, timeoutMs, { port });
    await new Promise((res) => setTimeout(res, 25));
  }
}

/** Starts the HTTP echo server in a pod (body: "hello from <pod> peer=<source ip> path=<path>") and waits for it. */
export async function startHttpServer(tb: Testbed, pod: Target, port = 8080, name?: string): Promise<TestbedProcess> {
  const label = name ?? (typeof pod === 'string' ? pod : pod.name);
  const p = tb.spawn(pod, [nodeBinary(), HTTP_ECHO, String(port), label]);
  await waitForPort(tb, pod, port);
  return p;
}

export interface CurlResult {
  /** curl's exit code (0 ok, 7 refused, 28 timeout, 52 empty reply, 56 reset). */
  readonly exitCode: number;
  readonly status: number;
  readonly body: string;
  readonly stderr: string;
}

/** curl http://ip:port/path from inside a pod (its netns and cgroup), with a hard timeout. */
export async function curl(
  tb: Testbed,
  from: Target,
  ip: string,
  port: number,
  opts: { path?: string; timeoutMs?: number; interface?: string } = {},
): Promise<CurlResult> {
  const t = opts.timeoutMs ?? 3000;
  const host = ip.includes(':') ? `[${ip}]` : ip;
  const argv = [
    'curl',
    '-sS',
    '--max-time',
    String(t / 1000),
    '-o',
    '-',
    '-w',
    '\n%{http_code}',
    `http://${host}:${port}${opts.path ?? '/'}`,
  ];
  if (opts.interface) argv.splice(1, 0, '--interface', opts.interface);
  const r = await tb.exec(from, argv, { check: false, timeoutMs: t + 2000 });
  const cut = r.stdout.lastIndexOf('\n');
  return {
    exitCode: r.code ?? -1,
    status: Number(r.stdout.slice(cut + 1)) || 0,
    body: r.stdout.slice(0, Math.max(cut, 0)),
    stderr: r.stderr,
  };
}
