// Readiness of raw fds without blocking Node's event loop and without spinning a core.
//
// Node's libuv cannot watch a SOCK_SEQPACKET fd for us: net.Socket({ fd }) refuses it (uv_guess_handle
// knows only stream unix sockets, TCP and UDP) and Node exposes no uv_poll_t. So one poll(2) per
// process runs on libuv's thread pool (koffi's `.async`) over every fd someone waits on, plus an
// eventfd that the main thread writes to when the set changes ("wake"); the poll then returns and is
// re-armed with the new set. Idle, that is one pool thread asleep in poll(): no CPU, no timer.
// Cost: while any fd is waited on, one of libuv's UV_THREADPOOL_SIZE (default 4) threads is held,
// whatever the number of sockets (never one per socket, which would exhaust the pool). When nothing
// is waited on, no poll is pending and the process may exit as usual.
//
// A fd inside a pending poll is closed only after that poll returned (closeFd defers it), so the
// kernel never sees its number reused by a new file while the pool thread still lists it.
import { libcPoll, libcRaw } from '../libbpf/ffi.ts';
import { closeFd as closeRawFd } from '../libbpf/handle.ts';

export const POLLIN = 0x1;
export const POLLOUT = 0x4;
const POLLERR = 0x8;
const POLLHUP = 0x10;
const POLLNVAL = 0x20;
const EFD_NONBLOCK = 0o4000;
const EFD_CLOEXEC = 0o2000000;
/** sizeof(struct pollfd): int fd; short events; short revents. */
const POLLFD_SIZE = 8;
/** After a failed poll() (EINTR, ENOMEM) wait this long before the next, so a persistent error cannot spin. */
const POLL_ERROR_PAUSE_MS = 10;

export type Direction = 'read' | 'write';

interface Waiter {
  resolve: () => void;
  reject: (err: Error) => void;
}

interface Entry {
  read?: Waiter;
  write?: Waiter;
}

interface Pending {
  buf: Buffer;
  fds: number[];
}

class Reactor {
  readonly #entries = new Map<number, Entry>();
  #pending: Pending | undefined;
  #armScheduled = false;
  #wakeFd = -1;
  readonly #deferredClose = new Set<number>();

  /** Resolves when `fd` is ready for `dir` (or has an error/hangup: the caller's syscall then reports it). */
  wait(fd: number, dir: Direction): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const entry = this.#entries.get(fd) ?? {};
      if (entry[dir]) {
        reject(new Error(`reactor: fd ${fd} already has a ${dir} waiter`));
        return;
      }
      entry[dir] = { resolve, reject };
      this.#entries.set(fd, entry);
      this.#changed();
    });
  }

  /** Reject the waiters of `fd` (the fd is being closed) and stop watching it. */
  cancel(fd: number, err: Error): void {
    const entry = this.#entries.get(fd);
    if (!entry) return;
    this.#entries.delete(fd);
    entry.read?.reject(err);
    entry.write?.reject(err);
    this.#changed();
  }

  /** close(2) now, or right after the pending poll returned if it lists this fd. */
  closeFd(fd: number): void {
    if (this.#pending?.fds.includes(fd)) {
      this.#deferredClose.add(fd);
      this.#wake();
    } else {
      closeRawFd(fd);
    }
  }

  #changed(): void {
    if (this.#pending) {
      this.#wake();
    } else {
      this.#scheduleArm();
    }
  }

  #scheduleArm(): void {
    if (this.#armScheduled || this.#pending) return;
    this.#armScheduled = true;
    // setImmediate, not a microtask: waiters resolved by the last poll re-register from their
    // continuations first, so one poll covers them all instead of one wake each.
    setImmediate(() => {
      this.#armScheduled = false;
      this.#arm();
    });
  }

  #ensureWakeFd(): number {
    if (this.#wakeFd < 0) {
      const fd = libcRaw.eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC) as number;
      if (fd < 0) throw new Error('reactor: eventfd() failed');
      this.#wakeFd = fd;
    }
    return this.#wakeFd;
  }

  #wake(): void {
    const one = Buffer.alloc(8);
    one.writeBigUInt64LE(1n);
    libcRaw.write(this.#ensureWakeFd(), one, 8);
  }

  #arm(): void {
    if (this.#pending || this.#entries.size === 0) return;
    const wakeFd = this.#ensureWakeFd();
    const fds = [wakeFd, ...this.#entries.keys()];
    const buf = Buffer.alloc(fds.length * POLLFD_SIZE);
    fds.forEach((fd, i) => {
      const entry = i === 0 ? undefined : this.#entries.get(fd);
      const events = i === 0 ? POLLIN : (entry?.read ? POLLIN : 0) | (entry?.write ? POLLOUT : 0);
      buf.writeInt32LE(fd, i * POLLFD_SIZE);
      buf.writeInt16LE(events, i * POLLFD_SIZE + 4);
    });
    const pending: Pending = { buf, fds };
    this.#pending = pending;
    // The Buffer stays referenced by `pending` until the callback: the pool thread writes revents into it.
    libcPoll.async(buf, fds.length, -1, (err: unknown, rc: number) => this.#done(pending, err, rc));
  }

  #done(pending: Pending, err: unknown, rc: number): void {
    this.#pending = undefined;
    if (err === null && rc > 0) {
      pending.fds.forEach((fd, i) => {
        if (i === 0) return;
        const revents = pending.buf.readInt16LE(i * POLLFD_SIZE + 6);
        if (revents === 0) return;
        const entry = this.#entries.get(fd);
        if (!entry) return;
        const failed = (revents & (POLLERR | POLLHUP | POLLNVAL)) !== 0;
        const waiters: Waiter[] = [];
        if (entry.read && (failed || (revents & POLLIN) !== 0)) {
          waiters.push(entry.read);
          delete entry.read;
        }
        if (entry.write && (failed || (revents & POLLOUT) !== 0)) {
          waiters.push(entry.write);
          delete entry.write;
        }
        if (!entry.read && !entry.write) this.#entries.delete(fd);
        for (const w of waiters) w.resolve();
      });
    }
    // Drain the eventfd (a wake may have raced with a ready fd; reading an empty one is EAGAIN).
    libcRaw.read(this.#ensureWakeFd(), Buffer.alloc(8), 8);
    for (const fd of this.#deferredClose) closeRawFd(fd);
    this.#deferredClose.clear();
    if (err !== null || rc < 0) {
      setTimeout(() => this.#scheduleArm(), POLL_ERROR_PAUSE_MS);
      return;
    }
    this.#scheduleArm();
  }
}

/** The process's one reactor (one pool thread at most, whatever the number of sockets). */
export const reactor = new Reactor();
