// Starting processes inside a pod or node: the child first writes its own pid into the target
// cgroup, then nsenter(1)s the target netns and execs the command, so the command runs with the
// pod's network and cgroup (what BPF cgroup programs and the loader's discovery see) while keeping
// the host's mounts — `ip netns exec` would remount /sys and hide bpffs and cgroupfs.
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { openSync, closeSync } from 'node:fs';
import { run, type RunOptions, type RunResult } from './run.ts';
import { SystemError } from '../errors.ts';

/** The wrapper argv: `sh -c 'echo $$ > cgroup.procs; exec nsenter --net=NS -- argv…'`. */
export function enterArgv(cgroupPath: string, netnsPath: string, argv: readonly string[]): string[] {
  const script = 'echo $$ > "$1" || exit 125; ns="$2"; shift 2; exec nsenter --net="$ns" -- "$@"';
  return ['sh', '-c', script, 'ambtb-enter', join(cgroupPath, 'cgroup.procs'), netnsPath, ...argv];
}

export async function execIn(
  cgroupPath: string,
  netnsPath: string,
  argv: readonly string[],
  opts: RunOptions = {},
): Promise<RunResult> {
  return run(enterArgv(cgroupPath, netnsPath, argv), opts);
}

export interface SpawnOptions {
  /** Append the child's stdout+stderr to this file (detached children cannot use our pipes). */
  readonly logFile?: string;
  /** Keep running after this process exits (`ambpf testbed up`); default false. */
  readonly detached?: boolean;
  readonly env?: NodeJS.ProcessEnv;
  /** Pipe stdout/stderr to the caller instead of a file (not with detached). */
  readonly pipe?: boolean;
}

export interface TestbedProcess {
  readonly pid: number;
  readonly child: ChildProcess;
  /** Resolves with the exit code (null when killed by a signal). */
  readonly exited: Promise<number | null>;
  kill(signal?: NodeJS.Signals): void;
}

export function spawnIn(
  cgroupPath: string,
  netnsPath: string,
  argv: readonly string[],
  opts: SpawnOptions = {},
): TestbedProcess {
  const [file, ...args] = enterArgv(cgroupPath, netnsPath, argv);
  let fd: number | undefined;
  let stdio: 'ignore' | 'pipe' | number = 'ignore';
  if (opts.logFile !== undefined) {
    fd = openSync(opts.logFile, 'a');
    stdio = fd;
  } else if (opts.pipe) {
    stdio = 'pipe';
  }
  const child = spawn(file as string, args, {
    stdio: ['ignore', stdio, stdio],
    detached: opts.detached ?? false,
    env: opts.env ?? process.env,
  });
  if (fd !== undefined) closeSync(fd);
  if (opts.detached) child.unref();
  const exited = new Promise<number | null>((resolve) => {
    child.on('exit', (code) => resolve(code));
    child.on('error', () => resolve(null));
  });
  if (child.pid === undefined)
    throw new SystemError('starting a testbed process', 2, `could not start ${argv.join(' ')}`);
  return {
    pid: child.pid,
    child,
    exited,
    kill(signal: NodeJS.Signals = 'SIGTERM') {
      try {
        child.kill(signal);
      } catch {
        /* already gone */
      }
    },
  };
}
