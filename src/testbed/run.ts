// Runs the system tools the testbed drives (ip, sysctl via nsenter, iptables, openssl). One place so
// every failure becomes a TestbedCommandError naming the command and its stderr.
import { spawn } from 'node:child_process';
import { TestbedCommandError } from './errors.ts';

export interface RunResult {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

export interface RunOptions {
  /** Text written to the child's stdin (then closed). */
  readonly input?: string;
  /** Kill the child (SIGKILL) after this many ms; default 30 s so nothing can hang a test forever. */
  readonly timeoutMs?: number;
  /** Throw TestbedCommandError on a non-zero exit (default true). */
  readonly check?: boolean;
  readonly env?: NodeJS.ProcessEnv;
}

export async function run(argv: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  const [file, ...args] = argv;
  if (file === undefined) throw new TypeError('run: empty argv');
  const child = spawn(file, args, { stdio: ['pipe', 'pipe', 'pipe'], env: opts.env ?? process.env });
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  child.stdout.on('data', (b: Buffer) => out.push(b));
  child.stderr.on('data', (b: Buffer) => err.push(b));
  child.stdin.on('error', () => {
    /* child exited before reading stdin: its exit status tells why */
  });
  child.stdin.end(opts.input ?? '');
  const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 30_000);
  const result = await new Promise<RunResult>((resolve, reject) => {
    child.on('error', (e) => reject(e));
    child.on('close', (code, signal) =>
      resolve({
        code,
        signal,
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8'),
      }),
    );
  }).finally(() => clearTimeout(timer));
  if ((opts.check ?? true) && result.code !== 0) {
    throw new TestbedCommandError(argv, result.code, result.stderr, result.signal);
  }
  return result;
}

/** `ip -batch -` with many commands in one process: a testbed makes dozens of links and routes. */
export async function ipBatch(netns: string | undefined, lines: readonly string[]): Promise<void> {
  if (lines.length === 0) return;
  const argv = netns === undefined ? ['ip', '-batch', '-'] : ['ip', '-n', netns, '-batch', '-'];
  await run(argv, { input: lines.join('\n') + '\n' });
}

/** Runs argv inside a named netns without `ip netns exec` (which remounts /sys and hides bpffs/cgroups). */
export async function inNetns(netnsPath: string, argv: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  return run(['nsenter', `--net=${netnsPath}`, '--', ...argv], opts);
}

/** Writes sysctls in a netns (through /proc/sys of a process that entered it). */
export async function sysctls(netnsPath: string, values: Readonly<Record<string, string | number>>): Promise<void> {
  const args = Object.entries(values).map(([k, v]) => `${k}=${v}`);
  if (args.length === 0) return;
  await inNetns(netnsPath, ['sysctl', '-q', '-w', ...args]);
}
