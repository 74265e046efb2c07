// Typed ZDS failures. Every one names the peer (pid from SO_PEERCRED and the socket path), the message
// kind it happened on (hello, add, keep, del, snapshot-sent, ack, datagram, ...) and the reason, so one
// log line tells an operator which ztunnel (or agent) misbehaved and how.
import { AmbpfError } from '../errors.ts';

export interface ZdsErrorOptions {
  /** The workload's uid, when the message carried one. */
  uid?: string | undefined;
  cause?: unknown;
}

/** Base class; also used as is for failures that fit no subclass (e.g. the snapshot callback threw). */
export class ZdsError extends AmbpfError {
  override readonly name: string = 'ZdsError';
  /** "pid 123 on /var/run/ztunnel/ztunnel.sock (conn 4)" or just the path when no pid is known. */
  readonly peer: string;
  /** The ZDS message kind the failure is about. */
  readonly message_kind: string;
  /** Why, in words (for ZdsNackError: ztunnel's own error text). */
  readonly reason: string;
  readonly uid: string | undefined;
  constructor(peer: string, kind: string, reason: string, options: ZdsErrorOptions = {}) {
    const what = options.uid === undefined ? kind : `${kind} (uid ${options.uid})`;
    super(`ZDS ${what}, peer ${peer}: ${reason}`, { peer, kind, uid: options.uid }, { cause: options.cause });
    this.peer = peer;
    this.message_kind = kind;
    this.reason = reason;
    this.uid = options.uid;
  }
}

/** No ack (or hello) within the deadline; the connection was dropped. */
export class ZdsTimeoutError extends ZdsError {
  override readonly name: string = 'ZdsTimeoutError';
}

/** The peer answered Ack{error}: `reason` is its text. The connection stays up. */
export class ZdsNackError extends ZdsError {
  override readonly name: string = 'ZdsNackError';
}

/** The peer went away (EOF, reset, send failure) or the connection was closed locally mid-exchange. */
export class ZdsClosedError extends ZdsError {
  override readonly name: string = 'ZdsClosedError';
}

/** Truncated, oversized or undecodable datagram, or the wrong number of fds. */
export class ZdsProtocolError extends ZdsError {
  override readonly name: string = 'ZdsProtocolError';
}

/** add() while no ztunnel is connected. */
export class ZdsNoPeerError extends ZdsError {
  override readonly name: string = 'ZdsNoPeerError';
}
