// Run the real bpftool and `bin/ambpf` with the same arguments and compare what they print.
// bpftool is the oracle: stdout must be byte-identical and the exit codes equal. stderr is not
// compared (ambpf's help text names ambpf and its read-only subset), only shown on a mismatch.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { Test } from 'tap';
import { runInspect } from '../../src/inspect/cli.ts';
import { LibbpfKernel } from '../../src/inspect/kernel.ts';

const AMBPF = fileURLToPath(new URL('../../bin/ambpf', import.meta.url));

export interface Run {
  readonly stdout: Buffer;
  readonly stderr: string;
  readonly code: number | null;
}

function run(cmd: string, args: readonly string[]): Run {
  const r = spawnSync(cmd, args, {
    timeout: 30_000,
    maxBuffer: 64 << 20,
    env: { ...process.env, AMBPF_LOG_LEVEL: 'silent' },
  });
  if (r.error) throw r.error;
  return { stdout: r.stdout, stderr: r.stderr.toString('latin1'), code: r.status };
}

export function bpftool(args: readonly string[]): Run {
  return run('bpftool', args);
}

export function ambpf(args: readonly string[]): Run {
  return run(AMBPF, args);
}

/**
 * The same command run inside the test process (what bin/ambpf runs after its Node start-up, ~0.3 s
 * each): used for the bulk of the cases, with a subset also going through bin/ambpf end to end.
 */
export function ambpfInProcess(args: readonly string[]): Run {
  const [kind, ...rest] = args;
  if (kind !== 'map' && kind !== 'prog') throw new Error(`not an inspect command: ${args.join(' ')}`);
  const r = runInspect(kind, rest, new LibbpfKernel());
  return { stdout: r.stdout, stderr: r.stderr.toString('latin1'), code: r.exitCode };
}

export function hasBpftool(): boolean {
  const r = spawnSync('bpftool', ['version'], { timeout: 10_000 });
  return r.status === 0 && /bpftool v7\./.test(r.stdout.toString());
}

/** Both tools, then one assertion on stdout bytes and one on the exit code. */
export function same(
  t: Test,
  args: readonly string[],
  expectCode?: number,
  how: 'cli' | 'in-process' = 'in-process',
): { oracle: Run; ours: Run } {
  const oracle = bpftool(args);
  const ours = how === 'cli' ? ambpf(args) : ambpfInProcess(args);
  const label = args.join(' ');
  t.equal(ours.stdout.toString('latin1'), oracle.stdout.toString('latin1'), `stdout: ${label}`, {
    ambpfStderr: ours.stderr,
    bpftoolStderr: oracle.stderr,
  });
  t.equal(ours.code, oracle.code, `exit code: ${label}`);
  if (expectCode !== undefined) t.equal(oracle.code, expectCode, `bpftool exit code is ${expectCode}: ${label}`);
  return { oracle, ours };
}
