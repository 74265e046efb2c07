// Failures of the local testbed: a command it ran (ip, iptables, nsenter, openssl) failed, or a spec
// it was given does not make a cluster.
import { AmbpfError, type AmbpfErrorContext } from '../errors.ts';

/** A tool the testbed shells out to exited non-zero; carries the argv and stderr so the cause is visible. */
export class TestbedCommandError extends AmbpfError {
  override readonly name: string = 'TestbedCommandError';
  readonly argv: readonly string[];
  readonly exitStatus: number | null;
  readonly stderr: string;
  constructor(argv: readonly string[], exitStatus: number | null, stderr: string, signal?: string | null) {
    const how = exitStatus === null ? `was killed by ${signal ?? 'a signal'}` : `exited with status ${exitStatus}`;
    const why = stderr.trim().split('\n').slice(-3).join(' / ');
    super(`testbed command \`${argv.join(' ')}\` ${how}${why ? `: ${why}` : ''}`, {
      command: argv.join(' '),
      exitStatus: exitStatus ?? -1,
    });
    this.argv = argv;
    this.exitStatus = exitStatus;
    this.stderr = stderr;
  }
}

/** The spec handed to startTestbed cannot be built (duplicate names, unknown node, too many pods). */
export class TestbedSpecError extends AmbpfError {
  override readonly name: string = 'TestbedSpecError';
  constructor(message: string, context: AmbpfErrorContext = {}) {
    super(`invalid testbed spec: ${message}`, context, { exitCode: 2 });
  }
}

/** Something the testbed waited for (a port, a stand-in, a process) did not happen in time. */
export class TestbedTimeoutError extends AmbpfError {
  override readonly name: string = 'TestbedTimeoutError';
  constructor(what: string, timeoutMs: number, context: AmbpfErrorContext = {}) {
    super(`testbed timed out after ${timeoutMs} ms waiting for ${what}`, { ...context, timeoutMs });
  }
}

/** A pod or node name given to exec/spawn is not part of this testbed. */
export class TestbedLookupError extends AmbpfError {
  override readonly name: string = 'TestbedLookupError';
  constructor(target: string, detail: string) {
    super(`testbed has no ${detail} named "${target}"`, { target });
  }
}
