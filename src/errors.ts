// Errors ambpf raises on purpose. Each carries enough context for a one-line message that tells an
// operator what failed and what to do; the CLI prints `message` (never a bare stack trace) and
// exits with `exitCode`.
import { constants as osConstants } from 'node:os';

/**
 * errno values by name, Linux's (Node's own table): the one place a number stands for an errno.
 * Compare by name: `err.code === 'ENOENT'` on an error that carries one, `rc === -ERRNO.ENOENT` on a
 * libbpf return code; never a bare 2.
 */
export const ERRNO = osConstants.errno;
export type ErrnoName = keyof typeof ERRNO;

/** errno number -> symbolic name (ENOENT, EPERM, ...) from ERRNO. */
export function errnoName(errno: number): string {
  const abs = Math.abs(errno);
  for (const [name, value] of Object.entries(ERRNO)) {
    if (value === abs) return name;
  }
  // libbpf's private codes (4000+) have no libc name.
  return abs >= 4000 && abs < 4100 ? `LIBBPF_ERRNO__${abs}` : `E${abs}`;
}

export interface AmbpfErrorContext {
  readonly [key: string]: string | number | boolean | undefined;
}

/** Base class: a failure ambpf understands and can explain. */
export class AmbpfError extends Error {
  override readonly name: string = 'AmbpfError';
  readonly context: AmbpfErrorContext;
  readonly exitCode: number;
  constructor(message: string, context: AmbpfErrorContext = {}, options: { cause?: unknown; exitCode?: number } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.context = context;
    this.exitCode = options.exitCode ?? 1;
  }
}

/** Bad input from the user (flags, files, manifests): exit code 2 like most CLIs' usage errors. */
export class UsageError extends AmbpfError {
  override readonly name: string = 'UsageError';
  constructor(message: string, context: AmbpfErrorContext = {}) {
    super(message, context, { exitCode: 2 });
  }
}

/** A kernel or system feature ambpf needs is absent; names the feature and the kernel that brings it. */
export class MissingFeatureError extends AmbpfError {
  override readonly name: string = 'MissingFeatureError';
  readonly feature: string;
  readonly sinceKernel: string | undefined;
  constructor(feature: string, sinceKernel: string | undefined, detail = '') {
    super(
      `missing kernel feature: ${feature}` +
        (sinceKernel ? ` (needs Linux ${sinceKernel} or newer)` : '') +
        (detail ? `: ${detail}` : ''),
      { feature, sinceKernel },
    );
    this.feature = feature;
    this.sinceKernel = sinceKernel;
  }
}

/** An OS-level call (syscall, child process) failed with an errno. */
export class SystemError extends AmbpfError {
  override readonly name: string = 'SystemError';
  readonly errno: number;
  readonly code: string;
  constructor(op: string, errno: number, detail: string, context: AmbpfErrorContext = {}) {
    const code = errnoName(errno);
    super(`${op}: ${detail} (${code})`, { ...context, op, errno, code });
    this.errno = Math.abs(errno);
    this.code = code;
  }
}

/** Render any thrown value as the one line the CLI prints. */
export function describeError(err: unknown): string {
  if (err instanceof AmbpfError) return err.message;
  if (err instanceof Error) {
    const code = (err as NodeJS.ErrnoException).code;
    return code ? `${err.message} [${code}]` : err.message;
  }
  return String(err);
}
