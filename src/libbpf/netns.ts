// Running synchronous calls inside another network namespace. setns() switches only the calling
// thread, which is Node's main thread here: fine around synchronous koffi calls, wrong around
// anything async (other callbacks would run in the wrong netns), so a Promise result is refused.
import { openSync } from 'node:fs';
import { libcRaw, lastErrno } from './ffi.ts';
import { SystemError, AmbpfError, ERRNO } from '../errors.ts';
import { closeFd } from './handle.ts';

const CLONE_NEWNET = 0x40000000;

function setns(fd: number, what: string): void {
  if ((libcRaw.setns(fd, CLONE_NEWNET) as number) !== 0) {
    const errno = lastErrno();
    throw new SystemError(`setns(${what})`, errno, 'cannot enter the network namespace');
  }
}

function openNs(path: string): number {
  try {
    return openSync(path, 'r');
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw new SystemError(`open ${path}`, -(e.errno ?? -ERRNO.ENOENT), 'cannot open the network namespace', { path });
  }
}

/** Run fn (synchronous) with the thread inside the netns at path (/run/netns/NAME or /proc/PID/ns/net). */
export function withNetns<T>(path: string, fn: () => T): T {
  const target = openNs(path);
  try {
    return withNetnsFd(target, fn, path);
  } finally {
    closeFd(target);
  }
}

/** withNetns for a netns fd the caller owns (e.g. one received over SCM_RIGHTS); the fd stays open. */
export function withNetnsFd<T>(fd: number, fn: () => T, what = `netns fd ${fd}`): T {
  const orig = openNs('/proc/thread-self/ns/net');
  try {
    setns(fd, what);
    try {
      const result = fn();
      if (result instanceof Promise) {
        throw new AmbpfError('withNetns: fn returned a Promise; only synchronous calls may run inside a netns', {
          path: what,
        });
      }
      return result;
    } finally {
      setns(orig, 'original netns');
    }
  } finally {
    closeFd(orig);
  }
}

/** withNetns when a path is given, else just fn() in the current netns. */
export function inNetns<T>(path: string | undefined, fn: () => T): T {
  return path ? withNetns(path, fn) : fn();
}
