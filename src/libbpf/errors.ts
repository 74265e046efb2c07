// Typed failures of libbpf-ts. A LibbpfError names the libbpf function, the errno (number and
// symbolic name), libbpf's own decoding of it, and which object/program/map was involved; a
// verifier rejection also carries the log (tail in the message, whole log on `verifierLog`).
import { AmbpfError, ERRNO, errnoName, type AmbpfErrorContext } from '../errors.ts';
import { raw } from './ffi.ts';

/** libbpf's text for an errno, including its private 4000+ codes (e.g. "Kernel verifier blocks program loading"). */
export function libbpfStrerror(errno: number): string {
  const buf = Buffer.alloc(256);
  const rc = raw.libbpf_strerror(-Math.abs(errno), buf, buf.length) as number;
  const text = buf.toString('utf8', 0, Math.max(0, buf.indexOf(0)));
  return rc === 0 && text ? text : `error ${Math.abs(errno)}`;
}

export interface LibbpfErrorContext {
  object?: string;
  program?: string;
  map?: string;
  path?: string;
  link?: string;
  /** Full verifier log of a rejected program. */
  verifierLog?: string;
  /** Extra sentence appended to the message (what to check, what to do). */
  hint?: string;
}

const VERIFIER_TAIL_LINES = 20;

/** The last lines of a verifier log: the reason is at the end. */
export function verifierTail(log: string, lines = VERIFIER_TAIL_LINES): string {
  const all = log.replace(/\0+$/, '').trimEnd().split('\n');
  return all.slice(-lines).join('\n');
}

export class LibbpfError extends AmbpfError {
  override readonly name: string = 'LibbpfError';
  /** The libbpf (or syscall wrapper) function that failed. */
  readonly fn: string;
  /** Positive errno. */
  readonly errno: number;
  /** Symbolic errno name (ENOENT, LIBBPF_ERRNO__4007, ...). */
  readonly code: string;
  readonly detail: string;
  readonly verifierLog: string | undefined;
  readonly object: string | undefined;
  readonly program: string | undefined;
  readonly map: string | undefined;

  constructor(fn: string, errno: number, ctx: LibbpfErrorContext = {}) {
    const abs = Math.abs(errno);
    const code = errnoName(abs);
    const detail = libbpfStrerror(abs);
    const what = [
      ctx.object ? `object ${ctx.object}` : '',
      ctx.program ? `program ${ctx.program}` : '',
      ctx.map ? `map ${ctx.map}` : '',
      ctx.link ? `link ${ctx.link}` : '',
      ctx.path ? `path ${ctx.path}` : '',
    ]
      .filter(Boolean)
      .join(', ');
    let message = `${fn} failed${what ? ` for ${what}` : ''}: ${detail} (${code})`;
    if (ctx.hint) message += `. ${ctx.hint[0]?.toUpperCase()}${ctx.hint.slice(1)}`;
    if (ctx.verifierLog) message += `\nverifier log (last lines):\n${verifierTail(ctx.verifierLog)}`;
    const context: AmbpfErrorContext = {
      fn,
      errno: abs,
      code,
      object: ctx.object,
      program: ctx.program,
      map: ctx.map,
      path: ctx.path,
    };
    super(message, context);
    this.fn = fn;
    this.errno = abs;
    this.code = code;
    this.detail = detail;
    this.verifierLog = ctx.verifierLog;
    this.object = ctx.object;
    this.program = ctx.program;
    this.map = ctx.map;
  }
}

/** An update into a map that has no room left (E2BIG): the loader reports and counts it, never drops silently. */
export class MapFullError extends LibbpfError {
  override readonly name: string = 'MapFullError';
  readonly maxEntries: number;
  constructor(map: string, maxEntries: number) {
    super('bpf_map_update_elem', ERRNO.E2BIG, { map });
    this.message = `map ${map} is full (max_entries ${maxEntries}): ${this.fn} failed with ${this.code}; raise the map's size at load time`;
    this.maxEntries = maxEntries;
  }
}

/** A name that does not exist in an object (map or program); lists the names that do. */
export class UnknownNameError extends AmbpfError {
  override readonly name: string = 'UnknownNameError';
  constructor(kind: 'map' | 'program', name: string, object: string, known: readonly string[]) {
    super(
      `object ${object} has no ${kind} named '${name}'; its ${kind}s are: ${known.length ? known.join(', ') : '(none)'}`,
      { kind, wanted: name, object },
    );
  }
}

/** A handle used after close(): a programming error, caught here instead of a segfault in libbpf. */
export class ClosedHandleError extends AmbpfError {
  override readonly name: string = 'ClosedHandleError';
  constructor(what: string) {
    super(`${what} is closed and can no longer be used`, { what });
  }
}

/** Throw a LibbpfError when an int API returned a negative errno; returns the non-negative result. */
export function check(fn: string, rc: number, ctx: LibbpfErrorContext = {}): number {
  if (rc < 0) throw new LibbpfError(fn, -rc, ctx);
  return rc;
}
