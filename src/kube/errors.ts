// Errors from talking to the Kubernetes API: the HTTP status (`code`, also as `statusCode`, the name
// Node's own HTTP errors use) and the reason and message of the Status object the server sent.
import { AmbpfError, UsageError } from '../errors.ts';

/** The kubeconfig or in-cluster credentials cannot be loaded: a usage problem the operator fixes. */
export class KubeConfigError extends UsageError {
  override readonly name: string = 'KubeConfigError';
}

/** The API server answered with an error Status (or not at all). */
export class KubeApiError extends AmbpfError {
  override readonly name: string = 'KubeApiError';
  /** HTTP status; 0 when no response arrived (connection refused, timeout). */
  readonly code: number;
  readonly statusCode: number;
  /** The Status object's reason (Expired, Unauthorized, InternalError, ...), when the server sent one. */
  readonly reason: string | undefined;
  /** The Status object's message, when the server sent one. */
  readonly statusMessage: string | undefined;
  constructor(
    message: string,
    code: number,
    reason: string | undefined,
    url: string,
    options: { cause?: unknown; statusMessage?: string | undefined } = {},
  ) {
    super(message, { url, code, reason }, options.cause === undefined ? {} : { cause: options.cause });
    this.code = code;
    this.statusCode = code;
    this.reason = reason;
    this.statusMessage = options.statusMessage;
  }
}

/** 401/403: retrying with the same credentials will not help, so start-up fails with this at once. */
export class KubeAuthError extends KubeApiError {
  override readonly name: string = 'KubeAuthError';
}

/** The HTTP status of any error a list or watch produced (ours, or Node's), if it has one. */
export function httpStatusOf(err: unknown): number | undefined {
  if (err === null || typeof err !== 'object') return undefined;
  const e = err as { code?: unknown; statusCode?: unknown };
  if (typeof e.statusCode === 'number') return e.statusCode;
  if (typeof e.code === 'number') return e.code;
  return undefined;
}

/** One line saying why a list or watch failed, for logs. */
export function reasonOf(err: unknown): string {
  if (err instanceof Error) {
    const status = httpStatusOf(err);
    const code = (err as { code?: unknown }).code;
    const cause = (err as { cause?: { code?: unknown; message?: unknown } }).cause;
    const detail =
      typeof code === 'string' ? ` [${code}]` : cause && typeof cause.code === 'string' ? ` [${cause.code}]` : '';
    return `${status !== undefined && !(err instanceof KubeApiError) ? `HTTP ${status} ` : ''}${err.message}${detail}`;
  }
  return String(err);
}
