// SeqpacketSocket on real AF_UNIX sockets: datagram boundaries, SCM_RIGHTS carrying a netns fd that
// is the same namespace on arrival, MSG_TRUNC reported with the real size, the 1024-byte send limit,
// SO_PEERCRED, EOF, and that waiting costs no CPU (the reactor's poll sleeps on the thread pool).
import t, { type Test } from 'tap';
import { fstatSync, openSync, statSync } from 'node:fs';
import { closeFd } from '../../src/libbpf/handle.ts';
import { SeqpacketSocket, ZDS_MAX_MESSAGE, ZdsProtocolError } from '../../src/zds/index.ts';
import { recvWithin, socketPath } from './helpers.ts';

async function pair(t: Test): Promise<{ a: SeqpacketSocket; b: SeqpacketSocket; path: string }> {
  const path = socketPath(t);
  const listener = SeqpacketSocket.listen(path);
  const accepted = listener.accept();
  const a = SeqpacketSocket.connect(path);
  const b = await accepted;
  t.teardown(() => {
    a.close();
    b.close();
    listener.close();
  });
  return { a, b, path };
}

t.test('datagrams keep their boundaries and the peer pid is ours', async (t) => {
  const { a, b } = await pair(t);
  await a.send(new Uint8Array([1, 2, 3]));
  await a.send(new Uint8Array([4]));
  const d1 = await recvWithin(b, 5000, 'first');
  const d2 = await recvWithin(b, 5000, 'second');
  t.same([...(d1?.data ?? [])], [1, 2, 3]);
  t.same([...(d2?.data ?? [])], [4]);
  t.equal(d1?.truncated, false);
  t.equal(b.peerCred().pid, process.pid);
  t.equal(a.peerCred().pid, process.pid);
});

t.test('a netns fd sent with SCM_RIGHTS arrives as the same namespace', async (t) => {
  const { a, b } = await pair(t);
  const ns = openSync('/proc/self/ns/net', 'r');
  t.teardown(() => closeFd(ns));
  await a.send(new Uint8Array([7]), [ns]);
  const d = await recvWithin(b, 5000, 'datagram with fd');
  t.equal(d?.fds.length, 1);
  const fd = d?.fds[0] ?? -1;
  t.not(fd, ns, 'a new fd number in the receiver');
  t.equal(fstatSync(fd).ino, statSync('/proc/self/ns/net').ino, 'same netns inode');
  closeFd(fd);
});

t.test('a datagram over 1024 bytes is reported truncated with its real size; send refuses it', async (t) => {
  const { a, b } = await pair(t);
  await a.sendUnchecked(new Uint8Array(1500).fill(9));
  const d = await recvWithin(b, 5000, 'oversized');
  t.equal(d?.truncated, true);
  t.equal(d?.size, 1500);
  t.equal(d?.data.length, ZDS_MAX_MESSAGE);
  await t.rejects(a.send(new Uint8Array(ZDS_MAX_MESSAGE + 1)), ZdsProtocolError);
  await t.rejects(a.send(new Uint8Array(ZDS_MAX_MESSAGE + 1)), /1025 bytes.*at most 1024/);
  await a.send(new Uint8Array(ZDS_MAX_MESSAGE)); // exactly the limit is fine
  t.equal((await recvWithin(b, 5000, 'limit-sized'))?.truncated, false);
});

t.test('close gives the peer EOF; a recv pending on a closed socket rejects', async (t) => {
  const { a, b } = await pair(t);
  const pending = b.recv();
  a.close();
  t.equal(await pending, null, 'EOF');
  const mine = a.recv();
  await t.rejects(mine, /closed/);
  t.throws(() => SeqpacketSocket.connect('/nonexistent/zds.sock'), /ENOENT/);
});

t.test('an idle connected pair costs no CPU', async (t) => {
  const { a, b } = await pair(t);
  // Both ends wait to read, as a ZDS session does between requests.
  const ra = a.recv();
  const rb = b.recv();
  const windowMs = 1000;
  const before = process.cpuUsage();
  const start = performance.now();
  await new Promise((resolve) => setTimeout(resolve, windowMs)); // a measurement window, not a wait for a condition
  const used = process.cpuUsage(before);
  const wall = performance.now() - start;
  const cpuMs = (used.user + used.system) / 1000;
  t.comment(`idle pair: ${cpuMs.toFixed(1)} ms CPU in ${wall.toFixed(0)} ms`);
  t.ok(
    cpuMs < wall * 0.05,
    `CPU ${cpuMs.toFixed(1)} ms over ${wall.toFixed(0)} ms stays under 5% (a spinning poll would be ~100%)`,
  );
  // Still responsive after the idle window.
  await a.send(new Uint8Array([1]));
  t.same([...((await rb)?.data ?? [])], [1]);
  b.close();
  t.equal(await ra, null);
});
