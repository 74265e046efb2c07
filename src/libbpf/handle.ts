// Explicit lifetimes for every libbpf-ts handle: close() is idempotent, any use after close throws
// ClosedHandleError (instead of handing libbpf a dangling pointer or a recycled fd), and `using`
// works through Symbol.dispose.
import { closeSync } from 'node:fs';
import { ClosedHandleError } from './errors.ts';

export abstract class Handle implements Disposable {
  #closed = false;

  /** Short human description for errors ("map ambpf_pods", "link 12"). */
  protected abstract describe(): string;
  /** Release the native resource; called once by close(). */
  protected abstract release(): void;

  get closed(): boolean {
    return this.#closed;
  }

  protected ensureOpen(): void {
    if (this.#closed) throw new ClosedHandleError(this.describe());
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.release();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** Close a raw fd we own, ignoring EBADF (it was already gone). */
export function closeFd(fd: number): void {
  if (fd < 0) return;
  try {
    closeSync(fd);
  } catch {
    // already closed: nothing left to release
  }
}
