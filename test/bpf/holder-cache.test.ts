// SocketHolderCache (src/bpf/inpod-listeners.ts): finds which fd of a process holds a socket inode,
// reading as few of its fds as it can, and never answers with an fd that now holds another socket
// (a closed listener's fd number taken by a new one). Real sockets of this process, real /proc.
import t from 'tap';
import { createServer, type Server } from 'node:net';
import { readlinkSync } from 'node:fs';
import { SocketHolderCache } from '../../src/bpf/inpod-listeners.ts';

async function listen(): Promise<{ server: Server; fd: number; inode: string }> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const fd = (server as unknown as { _handle: { fd: number } })._handle.fd;
  const inode = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/self/fd/${fd}`))?.[1];
  if (inode === undefined) throw new Error(`fd ${fd} is no socket`);
  return { server, fd, inode };
}

const close = (s: Server): Promise<void> => new Promise((resolve) => s.close(() => resolve()));

t.test('finds the holders, and a reused fd number is read again', async (t) => {
  const cache = new SocketHolderCache();
  const a = await listen();
  const b = await listen();
  t.same(
    cache.find([process.pid], [a.inode, b.inode]),
    new Map([
      [a.inode, { pid: process.pid, fd: a.fd }],
      [b.inode, { pid: process.pid, fd: b.fd }],
    ]),
  );
  t.same(cache.find([process.pid], [b.inode]).get(b.inode), { pid: process.pid, fd: b.fd }, 'from what it knows');

  await close(a.server);
  const c = await listen(); // the lowest free fd: usually a's
  t.same(cache.find([process.pid], [c.inode]).get(c.inode), { pid: process.pid, fd: c.fd }, 'without being told');
  cache.forget([c.inode]);
  await close(c.server);
  const d = await listen();
  t.same(cache.find([process.pid], [d.inode]).get(d.inode), { pid: process.pid, fd: d.fd }, 'after forget');
  t.equal(cache.find([process.pid], [a.inode]).size, 0, 'a closed socket has no holder');
  t.equal(cache.find([], [d.inode]).size, 0, 'nor one of a process not asked about');
  await close(b.server);
  await close(d.server);
});
