// The machine a run happened on, recorded next to its numbers (results are meaningless without it).
import { readFileSync } from 'node:fs';
import { cpus, hostname, release, totalmem } from 'node:os';
import { run } from '../testbed/run.ts';
import type { Machine } from './types.ts';

async function toolVersion(argv: string[], pattern: RegExp): Promise<string> {
  try {
    const r = await run(argv, { check: false, timeoutMs: 5000 });
    return pattern.exec(r.stdout + r.stderr)?.[1] ?? 'unknown';
  } catch {
    return 'missing';
  }
}

function cpuModel(): string {
  try {
    const m = /^model name\s*:\s*(.+)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'));
    if (m?.[1]) return m[1].trim();
  } catch {
    /* fall through */
  }
  return cpus()[0]?.model ?? 'unknown';
}

export async function describeMachine(): Promise<Machine> {
  return {
    kernel: release(),
    cpuModel: cpuModel(),
    cores: cpus().length,
    memoryMiB: Math.round(totalmem() / 2 ** 20),
    hostname: hostname(),
    date: new Date().toISOString(),
    tools: {
      node: process.version,
      wrk: await toolVersion(['wrk', '-v'], /wrk (\S+)/),
      iperf3: await toolVersion(['iperf3', '-v'], /iperf (\S+)/),
      nginx: await toolVersion(['nginx', '-v'], /nginx\/(\S+)/),
    },
  };
}
