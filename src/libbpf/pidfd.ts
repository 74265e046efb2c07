// Another process's file descriptor, copied into this one: pidfd_open + pidfd_getfd (Linux 5.6+;
// needs ptrace access to the process, i.e. root). The datapath takes ztunnel's listening sockets
// this way, since ztunnel does not hand them over.
import { libcRaw, lastErrno } from './ffi.ts';
import { SystemError } from '../errors.ts';
import { closeFd } from './handle.ts';

const SYS_PIDFD_OPEN = 434;
const SYS_PIDFD_GETFD = 438;

/** A duplicate, in this process, of fd `fd` of process `pid`; the caller closes it. */
export function copyFdOf(pid: number, fd: number): number {
  const pidfd = Number(libcRaw.syscall(SYS_PIDFD_OPEN, 'int', pid, 'uint', 0));
  if (pidfd < 0) throw new SystemError('pidfd_open', lastErrno(), `cannot open process ${pid}`, { pid });
  try {
    const copy = Number(libcRaw.syscall(SYS_PIDFD_GETFD, 'int', pidfd, 'int', fd, 'uint', 0));
    if (copy < 0)
      throw new SystemError('pidfd_getfd', lastErrno(), `cannot copy fd ${fd} out of process ${pid}`, { pid, fd });
    return copy;
  } finally {
    closeFd(pidfd);
  }
}

/** Run fn with a copy of fd `fd` of process `pid`; the copy is closed afterwards. */
export function withFdOf<T>(pid: number, fd: number, fn: (copy: number) => T): T {
  const copy = copyFdOf(pid, fd);
  try {
    return fn(copy);
  } finally {
    closeFd(copy);
  }
}
