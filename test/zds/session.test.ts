// ZdsServer and ZdsClient against each other on real sockets: hello, snapshot (Add with a netns fd,
// Keep, SnapshotSent), add/del while serving, nacks, adds to the newest peer and deletes to all,
// 200 pods in a snapshot, reconnects, and what the client does with each verdict.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { fstatSync, statSync } from 'node:fs';
import { closeFd } from '../../src/libbpf/handle.ts';
import {
  ZdsClient,
  ZdsNackError,
  ZdsNoPeerError,
  ZdsProtocolError,
  ZdsServer,
  type SnapshotItem,
  type ZdsPeer,
  type ZdsRequest,
  type ZdsVerdict,
} from '../../src/zds/index.ts';
import { eventually, observeFor } from '../helpers/wait.ts';
import { testPrefix } from '../helpers/prefix.ts';
import { captureLog, ERROR, RawZtunnel, socketPath, type CapturedLog } from './helpers.ts';

const SELF_NS = '/proc/self/ns/net';
const info = (name: string): { name: string; namespace: string; serviceAccount: string } => ({
  name,
  namespace: 'shop',
  serviceAccount: 'web',
});

interface Seen {
  req: ZdsRequest;
  /** For an Add: the inode of the received netns fd (the fd itself is closed by the recorder). */
  ino?: number;
}

/** A ZdsClient that records every request (closing received fds) and answers with `verdict`. */
function recordingClient(
  t: Tap,
  path: string,
  log: CapturedLog,
  verdict: (req: ZdsRequest) => ZdsVerdict = () => ({ ack: '' }),
): { client: ZdsClient; seen: Seen[] } {
  const seen: Seen[] = [];
  const client = ZdsClient.start({
    path,
    log: log.log,
    handle: async (req) => {
      const entry: Seen = { req };
      if (req.kind === 'add' && req.netnsFd !== undefined) {
        entry.ino = fstatSync(req.netnsFd).ino;
        closeFd(req.netnsFd);
      }
      seen.push(entry);
      return verdict(req);
    },
  });
  t.teardown(() => client.stop());
  return { client, seen };
}

type Tap = { teardown(fn: () => unknown): void };

async function server(
  t: Tap,
  path: string,
  log: CapturedLog,
  snapshot: () => readonly SnapshotItem[] = () => [],
  ackTimeoutMs?: number,
): Promise<ZdsServer> {
  const s = await ZdsServer.listen({ path, log: log.log, snapshot, ackTimeoutMs });
  t.teardown(() => s.close());
  return s;
}

const kinds = (seen: Seen[]): string[] => seen.map((s) => ('uid' in s.req ? `${s.req.kind}:${s.req.uid}` : s.req.kind));

t.test('every message kind end to end: hello, snapshot with Add+fd and Keep, SnapshotSent, add, del', async (t) => {
  const path = socketPath(t);
  const log = captureLog();
  const srv = await server(t, path, log, () => [
    { kind: 'add', uid: 'pod-a', info: info('a'), netnsPath: SELF_NS },
    { kind: 'keep', uid: 'pod-k' },
  ]);
  const peers: ZdsPeer[] = [];
  srv.on('peer', (p) => peers.push(p));
  t.equal(srv.ready, false);
  const { client, seen } = recordingClient(t, path, log);
  await eventually(() => srv.ready, 5000, 'the snapshot to be acked');
  t.ok(client.connected);
  t.same(kinds(seen), ['add:pod-a', 'keep:pod-k', 'snapshot-sent']);
  const add = seen[0]?.req;
  t.ok(add?.kind === 'add' && add.fdCount === 1);
  t.match(add, { info: info('a') });
  t.equal(seen[0]?.ino, statSync(SELF_NS).ino, 'the Add carried our netns');
  t.equal(peers.length, 1);
  t.equal(peers[0]?.pid, process.pid, 'SO_PEERCRED names the client process');
  t.equal(peers[0]?.snapshotDone, true);

  await srv.add('pod-b', info('b'), SELF_NS);
  const results = await srv.del('pod-a');
  t.equal(results.length, 1);
  t.equal(results[0]?.error, undefined);
  t.same(kinds(seen).slice(3), ['add:pod-b', 'del:pod-a']);
  t.ok(log.find(/ztunnel said hello/).length === 1, 'the hello is logged');
});

t.test('an Add carries a working fd of another netns', async (t) => {
  const ns = `${testPrefix()}-zds`;
  const made = spawnSync('ip', ['netns', 'add', ns], { encoding: 'utf8' });
  // The suite runs as root (preamble): a failure here is a failure, not a skip.
  if (!t.equal(made.status, 0, `ip netns add ${ns}: ${made.stderr}`)) return;
  t.teardown(() => spawnSync('ip', ['netns', 'del', ns]));
  const nsPath = `/run/netns/${ns}`;
  const path = socketPath(t);
  const log = captureLog();
  const srv = await server(t, path, log);
  const { seen } = recordingClient(t, path, log);
  await eventually(() => srv.ready, 5000, 'ready');
  await srv.add('pod-ns', info('ns'), nsPath);
  const got = seen.find((s) => s.req.kind === 'add');
  t.equal(got?.ino, statSync(nsPath).ino, 'the received fd is that netns');
  t.not(got?.ino, statSync(SELF_NS).ino, 'not ours');
});

t.test('a 200-pod snapshot arrives whole; an oversized add is refused before it is sent', async (t) => {
  const path = socketPath(t);
  const log = captureLog();
  // Kubernetes' longest names: pod 253, namespace 63, service account 253; uid 36.
  const long = (c: string, n: number): string => c.repeat(n);
  const items: SnapshotItem[] = Array.from({ length: 200 }, (_, i) =>
    i % 10 === 9
      ? { kind: 'keep', uid: `${String(i).padStart(4, '0')}${long('k', 32)}` }
      : {
          kind: 'add',
          uid: `${String(i).padStart(4, '0')}${long('u', 32)}`,
          info: { name: long('p', 253), namespace: long('n', 63), serviceAccount: long('s', 253) },
          netnsPath: SELF_NS,
        },
  );
  const srv = await server(t, path, log, () => items);
  const { seen } = recordingClient(t, path, log);
  await eventually(() => srv.ready, 20_000, 'the 200-pod snapshot to be acked');
  t.equal(seen.length, 201);
  t.equal(seen.filter((s) => s.req.kind === 'add').length, 180);
  t.equal(seen.filter((s) => s.req.kind === 'keep').length, 20);
  t.equal(seen.at(-1)?.req.kind, 'snapshot-sent');
  t.ok(
    seen.filter((s) => s.req.kind === 'add').every((s) => s.ino === statSync(SELF_NS).ino),
    'every Add had its fd',
  );

  const before = seen.length;
  const err = await srv
    .add('big', { name: long('x', 1100), namespace: 'n', serviceAccount: 's' }, SELF_NS)
    .catch((e: unknown) => e);
  t.ok(err instanceof ZdsProtocolError, 'ZdsProtocolError');
  t.match(String(err), /would be \d+ bytes; the limit is 1024/);
  t.match(String(err), /add \(uid big\)/);
  await srv.add('small', info('small'), SELF_NS);
  t.equal(seen.length, before + 1, 'the refused add never reached the client; the next one did');
});

t.test('every datagram of a 200-pod snapshot is at most 1024 bytes (read raw)', async (t) => {
  const path = socketPath(t);
  const log = captureLog();
  const items: SnapshotItem[] = Array.from({ length: 200 }, (_, i) => ({
    kind: 'add',
    uid: `00000000-0000-0000-0000-${String(i).padStart(12, '0')}`,
    info: { name: 'p'.repeat(253), namespace: 'n'.repeat(63), serviceAccount: 's'.repeat(253) },
    netnsPath: SELF_NS,
  }));
  const srv = await server(t, path, log, () => items);
  const z = await RawZtunnel.connect(path);
  t.teardown(() => z.close());
  const sizes: number[] = [];
  for (;;) {
    const { d, req } = await z.request();
    t.equal(d.truncated, false);
    t.equal(d.fds.length, req.payload.case === 'add' ? 1 : 0);
    sizes.push(d.size);
    await z.ack();
    if (req.payload.case === 'snapshotSent') break;
  }
  t.equal(sizes.length, 201);
  t.ok(Math.max(...sizes) <= 1024, `largest datagram ${Math.max(...sizes)} bytes`);
  await eventually(() => srv.ready, 5000, 'ready');
});

t.test('a nack rejects with ZdsNackError carrying the reason; the connection stays', async (t) => {
  const path = socketPath(t);
  const log = captureLog();
  const srv = await server(t, path, log);
  const reason = 'failure to start proxy : bind [::]:15001: EADDRINUSE';
  const { seen } = recordingClient(t, path, log, (req) =>
    req.kind === 'add' && req.uid === 'bad' ? { ack: reason } : { ack: '' },
  );
  await eventually(() => srv.ready, 5000, 'ready');
  const err = await srv.add('bad', info('bad'), SELF_NS).catch((e: unknown) => e);
  t.ok(err instanceof ZdsNackError);
  t.equal((err as ZdsNackError).reason, reason);
  t.equal((err as ZdsNackError).message_kind, 'add');
  t.match((err as ZdsNackError).peer, new RegExp(`pid ${process.pid} on ${path}`));
  t.ok(log.find(/nacked the add/, ERROR).length >= 1, 'the nack is logged as an error');
  await srv.add('good', info('good'), SELF_NS);
  t.same(kinds(seen).slice(-2), ['add:bad', 'add:good']);
  t.equal(srv.peers().length, 1);
});

t.test('adds go to the newest peer, deletes to every peer', async (t) => {
  const path = socketPath(t);
  const log = captureLog();
  const srv = await server(t, path, log);
  const older = recordingClient(t, path, log);
  await eventually(() => srv.peers()[0]?.snapshotDone, 5000, 'the first peer');
  const newer = recordingClient(t, path, log);
  await eventually(() => srv.peers().length === 2 && srv.peers()[1]?.snapshotDone, 5000, 'the second peer');
  await srv.add('pod-n', info('n'), SELF_NS);
  t.same(kinds(newer.seen), ['snapshot-sent', 'add:pod-n'], 'the newest got the add');
  t.same(kinds(older.seen), ['snapshot-sent'], 'the older did not');
  const results = await srv.del('pod-n');
  t.equal(results.length, 2);
  t.ok(results.every((r) => r.error === undefined));
  t.same(kinds(older.seen).at(-1), 'del:pod-n');
  t.same(kinds(newer.seen).at(-1), 'del:pod-n');
  // The newest leaves: adds fall back to the older one.
  await newer.client.stop();
  await eventually(() => srv.peers().length === 1, 5000, 'the newest to be gone');
  await srv.add('pod-o', info('o'), SELF_NS);
  t.same(kinds(older.seen).at(-1), 'add:pod-o');
});

t.test('no peer: add rejects with ZdsNoPeerError; the client connects once the server appears (backoff)', async (t) => {
  const path = socketPath(t);
  const log = captureLog();
  const { client, seen } = recordingClient(t, path, log);
  // Nothing listens yet: the client retries with backoff, not in a loop.
  await observeFor(600);
  const attempts = log.find(/failed to connect to the node agent/).length;
  t.ok(attempts >= 2 && attempts <= 8, `${attempts} connect attempts in 600 ms (10 ms doubling: 20+40+80+160+320)`);
  const srv = await server(t, path, log);
  await t.rejects(srv.add('early', info('e'), SELF_NS), ZdsNoPeerError);
  await eventually(() => srv.ready, 10_000, 'the client to connect after its backoff');
  t.ok(client.connected);
  t.same(kinds(seen), ['snapshot-sent']);
});

t.test("an add during the newest peer's snapshot waits behind it, then is delivered", async (t) => {
  const path = socketPath(t);
  const log = captureLog();
  let release: () => void = () => undefined;
  const gate = new Promise<void>((resolve) => {
    release = resolve;
  });
  const srv = await ZdsServer.listen({
    path,
    log: log.log,
    snapshot: async () => {
      await gate;
      return [{ kind: 'keep', uid: 'old' }];
    },
  });
  t.teardown(() => srv.close());
  const { seen } = recordingClient(t, path, log);
  await eventually(() => srv.peers().length === 1, 5000, 'the connection');
  const added = srv.add('mid', info('mid'), SELF_NS);
  await observeFor(100);
  t.same(seen, [], 'nothing sent before the snapshot');
  release();
  await added;
  t.same(kinds(seen), ['keep:old', 'snapshot-sent', 'add:mid']);
});

t.test('server restart: the client reconnects and gets a new snapshot', async (t) => {
  const path = socketPath(t);
  const log = captureLog();
  const first = await ZdsServer.listen({ path, log: log.log, snapshot: () => [{ kind: 'keep', uid: 'one' }] });
  const disconnects: unknown[] = [];
  const seen: string[] = [];
  const client = ZdsClient.start({
    path,
    log: log.log,
    handle: async (req) => {
      seen.push(req.kind);
      return { ack: '' };
    },
    onDisconnected: (err) => disconnects.push(err),
  });
  t.teardown(() => client.stop());
  await eventually(() => first.ready, 5000, 'first snapshot');
  await first.close();
  await eventually(() => disconnects.length === 1, 5000, 'the client to see EOF');
  t.equal(disconnects[0], undefined, 'EOF is a clean disconnect');
  const second = await server(t, path, log, () => [{ kind: 'keep', uid: 'two' }]);
  await eventually(() => second.ready, 10_000, 'the reconnect and second snapshot');
  t.same(seen, ['keep', 'snapshot-sent', 'keep', 'snapshot-sent']);
});

t.test('client stop(): the server sees the peer gone, cleanly', async (t) => {
  const path = socketPath(t);
  const log = captureLog();
  const srv = await server(t, path, log);
  const gone: [ZdsPeer, unknown][] = [];
  srv.on('peer-gone', (p, e) => gone.push([p, e]));
  const { client } = recordingClient(t, path, log);
  await eventually(() => srv.ready, 5000, 'ready');
  await client.stop();
  t.equal(client.connected, false);
  await eventually(() => gone.length === 1, 5000, 'peer-gone');
  t.equal(gone[0]?.[1], undefined);
  t.equal(srv.ready, false);
});
