// Misbehaving peers, played byte by byte with SeqpacketSocket. Against the server (a bad ztunnel): no
// ack, garbage, an oversized answer, a fd with the ack, unsolicited messages, no hello, EOF in the middle
// of the snapshot, a throwing snapshot callback. Against the client (a bad agent): garbage, an oversized
// datagram, a fd on a Del, an Add without fd or with two, no payload, and each handler verdict. Each
// case checks the answer ztunnel/istio-cni give and that the error is logged with the peer and the kind.
import t from 'tap';
import { openSync, readdirSync, readlinkSync } from 'node:fs';
import { closeFd } from '../../src/libbpf/handle.ts';
import {
  SeqpacketSocket,
  ZdsClient,
  ZdsClosedError,
  ZdsError,
  ZdsProtocolError,
  ZdsServer,
  ZdsTimeoutError,
  addRequest,
  delRequest,
  encodeAck,
  encodeRequest,
  type SnapshotItem,
  type ZdsPeer,
  type ZdsRequest,
  type ZdsVerdict,
} from '../../src/zds/index.ts';
import { eventually, observeFor } from '../helpers/wait.ts';
import {
  answerOf,
  captureLog,
  ERROR,
  RawAgent,
  RawZtunnel,
  recvWithin,
  socketPath,
  WARN,
  type CapturedLog,
  type Teardown,
} from './helpers.ts';

const SELF_NS = '/proc/self/ns/net';
const info = { name: 'web-0', namespace: 'shop', serviceAccount: 'web' };

interface Events {
  gone: [ZdsPeer, ZdsError | undefined][];
  snapshotFailed: [ZdsPeer, ZdsError][];
}

async function server(
  t: Teardown,
  log: CapturedLog,
  opts: { snapshot?: () => readonly SnapshotItem[]; ackTimeoutMs?: number } = {},
): Promise<{ srv: ZdsServer; path: string; ev: Events }> {
  const path = socketPath(t);
  const srv = await ZdsServer.listen({
    path,
    log: log.log,
    snapshot: opts.snapshot ?? (() => []),
    ackTimeoutMs: opts.ackTimeoutMs,
  });
  t.teardown(() => srv.close());
  const ev: Events = { gone: [], snapshotFailed: [] };
  srv.on('peer-gone', (p, e) => ev.gone.push([p, e]));
  srv.on('snapshot-failed', (p, e) => ev.snapshotFailed.push([p, e]));
  return { srv, path, ev };
}

/** A raw ztunnel that has taken an empty snapshot (acked SnapshotSent). */
async function servedRaw(t: Teardown, path: string): Promise<RawZtunnel> {
  const z = await RawZtunnel.connect(path);
  t.teardown(() => z.close());
  const { req } = await z.request();
  if (req.payload.case !== 'snapshotSent') throw new Error(`expected SnapshotSent, got ${req.payload.case}`);
  await z.ack();
  return z;
}

/** How many of this process's fds are network namespaces (received netns fds must not leak). */
function netnsFds(): number {
  let n = 0;
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      if (readlinkSync(`/proc/self/fd/${fd}`).startsWith('net:')) n++;
    } catch {
      // closed while listing
    }
  }
  return n;
}

// ---------------------------------------------------------------- server side: a bad ztunnel

t.test(
  'a peer that never acks: ZdsTimeoutError within the deadline, dropped; the other peer is not stalled',
  async (t) => {
    const log = captureLog();
    const ackTimeoutMs = 400;
    const { srv, path, ev } = await server(t, log, { ackTimeoutMs });
    const seenByGood: { kind: string; at: number }[] = [];
    const good = ZdsClient.start({
      path,
      log: log.log,
      handle: async (req) => {
        seenByGood.push({ kind: req.kind, at: performance.now() });
        if (req.kind === 'add' && req.netnsFd !== undefined) closeFd(req.netnsFd);
        return { ack: '' };
      },
    });
    t.teardown(() => good.stop());
    await eventually(() => srv.ready, 5000, 'the good peer');
    const silent = await servedRaw(t, path); // newest: adds go to it
    await eventually(() => srv.peers().length === 2 && srv.peers()[1]?.snapshotDone, 5000, 'the silent peer');

    const start = performance.now();
    const added = srv.add('pod-x', info, SELF_NS).then(
      () => undefined,
      (e: unknown) => ({ e, at: performance.now() }),
    );
    const deleted = srv.del('pod-y');
    const { req } = await silent.request(); // it gets the Add ... and never answers
    t.equal(req.payload.case, 'add');
    const failure = await added;
    t.ok(failure?.e instanceof ZdsTimeoutError, 'ZdsTimeoutError');
    const elapsed = (failure?.at ?? 0) - start;
    t.ok(elapsed >= ackTimeoutMs - 50 && elapsed < ackTimeoutMs + 3000, `rejected after ${elapsed.toFixed(0)} ms`);
    t.match(
      String(failure?.e),
      new RegExp(`add \\(uid pod-x\\), peer pid ${process.pid} on .* \\(conn 2\\): no ack within 400 ms`),
    );

    const delAtGood = seenByGood.find((s) => s.kind === 'del')?.at ?? Infinity;
    t.ok(delAtGood < (failure?.at ?? 0) - 100, 'the good peer had the Del long before the silent one timed out');
    const results = await deleted;
    t.equal(results.length, 2);
    t.equal(results.find((r) => r.peer.id === 1)?.error, undefined, 'the good peer acked the Del');
    t.ok(
      results.find((r) => r.peer.id === 2)?.error instanceof ZdsClosedError,
      'the Del queued behind the stalled Add fails',
    );

    t.equal(srv.peers().length, 1, 'the silent peer was dropped');
    t.ok(ev.gone.some(([p, e]) => p.id === 2 && e instanceof ZdsTimeoutError));
    t.equal(await recvWithin(silent.sock, 5000, 'EOF'), null, 'its connection was closed');
    t.ok(log.find(/no ack within 400 ms/, ERROR).length >= 1, 'logged as an error');
    await srv.add('pod-z', info, SELF_NS); // now the good peer is the newest
    t.ok(seenByGood.some((s) => s.kind === 'add'));
  },
);

const badAnswers: [string, (z: RawZtunnel) => Promise<void>, RegExp][] = [
  ['garbage', (z) => z.sock.send(new Uint8Array([0xff, 0xff, 0xff, 0x07])), /the answer is not a WorkloadResponse/],
  [
    'an oversized datagram',
    (z) => z.sock.sendUnchecked(new Uint8Array(1500).fill(0x0a)),
    /truncated message: the answer is 1500 bytes, the limit 1024/,
  ],
  ['a fd with the ack', (z) => z.sock.send(encodeAck(''), [0]), /unexpected 1 fd\(s\) with the answer/],
  ['a response without an Ack', (z) => z.sock.send(new Uint8Array([0x10, 0x01])), /the answer carries no Ack/],
];

for (const [what, answer, reason] of badAnswers) {
  t.test(`a peer answering with ${what}: ZdsProtocolError, dropped, logged`, async (t) => {
    const log = captureLog();
    const { srv, path, ev } = await server(t, log);
    const z = await servedRaw(t, path);
    await eventually(() => srv.ready, 5000, 'ready');
    const del = srv.del('pod-1');
    await z.request();
    await answer(z);
    const [result] = await del;
    t.ok(result?.error instanceof ZdsProtocolError, 'ZdsProtocolError');
    t.match(result?.error?.message ?? '', reason);
    t.match(result?.error?.message ?? '', /^ZDS del \(uid pod-1\), peer pid \d+ on /);
    t.equal(srv.peers().length, 0);
    t.ok(ev.gone[0]?.[1] instanceof ZdsProtocolError);
    t.ok(log.find(reason, ERROR).length >= 1, 'logged as an error');
  });
}

t.test('an unsolicited message from an idle peer drops it (istio-cni CheckAlive)', async (t) => {
  const log = captureLog();
  const { srv, path, ev } = await server(t, log);
  const z = await servedRaw(t, path);
  await eventually(() => srv.ready, 5000, 'ready');
  await z.ack(); // an ack nobody asked for
  await eventually(() => ev.gone.length === 1, 5000, 'the drop');
  t.match(String(ev.gone[0]?.[1]), /unexpected 2-byte message while no request was outstanding/);
  t.equal(srv.ready, false);
});

t.test('no hello within the deadline: dropped with ZdsTimeoutError (hello)', async (t) => {
  const log = captureLog();
  const { srv, path, ev } = await server(t, log, { ackTimeoutMs: 300 });
  const z = await RawZtunnel.connect(path, false);
  t.teardown(() => z.close());
  await eventually(() => ev.gone.length === 1, 5000, 'the drop');
  t.ok(ev.gone[0]?.[1] instanceof ZdsTimeoutError);
  t.match(String(ev.gone[0]?.[1]), /ZDS hello, peer .*: no hello within 300 ms/);
  t.equal(ev.snapshotFailed.length, 0, 'no snapshot was started');
  t.equal(srv.peers().length, 0);
});

t.test('a peer that leaves mid-snapshot: snapshot-failed then peer-gone; the next peer gets it all', async (t) => {
  const log = captureLog();
  const items: SnapshotItem[] = Array.from({ length: 5 }, (_, i) => ({ kind: 'keep', uid: `k${i}` }));
  const { srv, path, ev } = await server(t, log, { snapshot: () => items });
  const order: string[] = [];
  srv.on('snapshot-failed', () => order.push('snapshot-failed'));
  srv.on('peer-gone', () => order.push('peer-gone'));
  const z = await RawZtunnel.connect(path);
  for (let i = 0; i < 2; i++) {
    await z.request();
    await z.ack();
  }
  await z.request(); // the third Keep: no answer, the peer goes away
  z.close();
  await eventually(() => ev.gone.length === 1, 5000, 'the drop');
  t.same(order, ['snapshot-failed', 'peer-gone']);
  const err = ev.snapshotFailed[0]?.[1];
  t.ok(err instanceof ZdsClosedError);
  t.match(String(err), /keep \(uid k2\).*closed the connection before answering/);
  t.equal(srv.ready, false);

  const seen: string[] = [];
  const c = ZdsClient.start({
    path,
    log: log.log,
    handle: async (req) => {
      seen.push('uid' in req ? req.uid : req.kind);
      return { ack: '' };
    },
  });
  t.teardown(() => c.stop());
  await eventually(() => srv.ready, 5000, 'the next peer');
  t.same(seen, ['k0', 'k1', 'k2', 'k3', 'k4', 'snapshot-sent']);
});

t.test('a snapshot callback that throws: snapshot-failed naming it, the peer dropped', async (t) => {
  const log = captureLog();
  const { srv, path, ev } = await server(t, log, {
    snapshot: () => {
      throw new Error('pod cache not synced');
    },
  });
  const z = await RawZtunnel.connect(path);
  t.teardown(() => z.close());
  await eventually(() => ev.gone.length === 1, 5000, 'the drop');
  t.match(
    String(ev.snapshotFailed[0]?.[1]),
    /ZDS snapshot, peer .*: the snapshot callback failed: pod cache not synced/,
  );
  t.equal(await recvWithin(z.sock, 5000, 'EOF'), null);
  t.equal(srv.ready, false);
});

t.test('a snapshot netns path that cannot be opened is sent as Keep (istio-cni)', async (t) => {
  const log = captureLog();
  const { srv, path } = await server(t, log, {
    snapshot: () => [{ kind: 'add', uid: 'gone-pod', info, netnsPath: '/proc/999999999/ns/net' }],
  });
  const z = await RawZtunnel.connect(path);
  t.teardown(() => z.close());
  const { d, req } = await z.request();
  t.ok(req.payload.case === 'keep' && req.payload.value.uid === 'gone-pod');
  t.equal(d.fds.length, 0);
  await z.ack();
  await z.request();
  await z.ack();
  await eventually(() => srv.ready, 5000, 'ready');
  t.ok(log.find(/cannot open the netns; sending Keep instead/, WARN).length === 1);
});

t.test('listen removes a stale socket, refuses a non-socket, close unlinks only its own file', async (t) => {
  const log = captureLog();
  const path = socketPath(t);
  const stale = SeqpacketSocket.listen(path);
  stale.close(); // the file stays, like after a crash
  const first = await ZdsServer.listen({ path, log: log.log, snapshot: () => [] });
  const second = await ZdsServer.listen({ path, log: log.log, snapshot: () => [] }); // a restarted agent takes over
  await first.close();
  const z = await RawZtunnel.connect(path); // still there: first did not unlink second's file
  z.close();
  await second.close();
  t.throws(() => SeqpacketSocket.connect(path), /ENOENT/, 'the last one unlinks it');
  const file = socketPath(t, 'not-a-socket');
  closeFd(openSync(file, 'w'));
  await t.rejects(ZdsServer.listen({ path: file, log: log.log, snapshot: () => [] }), /exists and is not a socket/);
});

// ---------------------------------------------------------------- client side: a bad agent

interface ClientRig {
  agent: RawAgent;
  client: ZdsClient;
  seen: ZdsRequest[];
  exits: string[];
  disconnects: (ZdsError | undefined)[];
  log: CapturedLog;
}

function clientRig(
  t: Teardown,
  verdict: (req: ZdsRequest) => ZdsVerdict | Promise<ZdsVerdict> = () => ({ ack: '' }),
): ClientRig {
  const log = captureLog();
  const path = socketPath(t);
  const agent = RawAgent.listen(path);
  t.teardown(() => agent.close());
  const seen: ZdsRequest[] = [];
  const exits: string[] = [];
  const disconnects: (ZdsError | undefined)[] = [];
  const client = ZdsClient.start({
    path,
    log: log.log,
    handle: async (req) => {
      seen.push(req);
      if (req.kind === 'add' && req.netnsFd !== undefined) closeFd(req.netnsFd);
      return verdict(req);
    },
    onExit: (reason) => exits.push(reason),
    onDisconnected: (err) => disconnects.push(err),
  });
  t.teardown(() => client.stop());
  return { agent, client, seen, exits, disconnects, log };
}

const badRequests: [string, (conn: SeqpacketSocket, nsFd: number) => Promise<void>, RegExp][] = [
  [
    'garbage',
    (c) => c.send(new Uint8Array([0xff, 0xff, 0xff, 0x07])),
    /^failure to read message : not a WorkloadRequest/,
  ],
  [
    'an oversized datagram',
    (c) => c.sendUnchecked(new Uint8Array(1500).fill(0x0a)),
    /^failure to read message : received truncated message \(1500 bytes; the limit is 1024\)/,
  ],
  [
    'a fd on a Del',
    (c, ns) => c.send(encodeRequest(delRequest('pod-d')), [ns]),
    /^failure to read message : Unexpected control message/,
  ],
  [
    'an Add without fd',
    (c) => c.send(encodeRequest(addRequest('pod-a', info))),
    /^failure to read message : No control message/,
  ],
  [
    'an Add with two fds',
    (c, ns) => c.send(encodeRequest(addRequest('pod-a', info)), [ns, ns]),
    /^failure to read message : Expected 1 FD, got 2/,
  ],
  ['a request without payload', (c) => c.send(new Uint8Array([0x20, 0x01])), /^failure to read message : no payload/],
];

for (const [what, send, nack] of badRequests) {
  t.test(`the client given ${what}: nack "${nack.source.slice(1, 40)}...", reconnect, logged`, async (t) => {
    const ns = openSync(SELF_NS, 'r');
    t.teardown(() => closeFd(ns));
    const baseline = netnsFds();
    const rig = clientRig(t);
    const conn = await rig.agent.accept();
    t.teardown(() => conn.close());
    await send(conn, ns);
    t.match(await answerOf(conn), nack);
    t.equal(await answerOf(conn), 'EOF', 'then the connection is dropped');
    const again = await rig.agent.accept(); // ... and ztunnel connects again with a hello
    t.teardown(() => again.close());
    t.equal(rig.seen.length, 0, 'the handler never saw it');
    t.ok(rig.disconnects[0] instanceof ZdsProtocolError, 'onDisconnected got a ZdsProtocolError');
    t.ok(rig.log.find(/failed to read message/, ERROR).length >= 1, 'logged as an error');
    t.equal(netnsFds(), baseline, 'no received fd leaked');
  });
}

t.test('verdict exit (an Add without workload_info): nack, then the client stops for good', async (t) => {
  const rig = clientRig(t, (req) =>
    req.kind === 'add' && req.info === undefined ? { exit: 'workload_info is required but not present' } : { ack: '' },
  );
  const conn = await rig.agent.accept();
  t.teardown(() => conn.close());
  const ns = openSync(SELF_NS, 'r');
  t.teardown(() => closeFd(ns));
  await conn.send(encodeRequest(addRequest('pod-x', undefined)), [ns]);
  t.equal(await answerOf(conn), 'workload_info is required but not present');
  t.equal(await answerOf(conn), 'EOF');
  await eventually(() => rig.exits.length === 1, 5000, 'onExit');
  t.same(rig.exits, ['workload_info is required but not present']);
  t.equal(rig.client.connected, false);
  t.ok(rig.log.find(/protocol error from the node agent, stopping/, ERROR).length === 1);
  const late = rig.agent.listener.accept();
  const reconnected = await Promise.race([late.then(() => true), observeFor(300).then(() => false)]);
  t.equal(reconnected, false, 'no reconnect after exit');
  late.catch(() => undefined);
});

t.test('verdict reconnect: nack with the reason, then a new connection', async (t) => {
  const rig = clientRig(t, (req) =>
    req.kind === 'del' ? { reconnect: 'failure to process message : boom' } : { ack: '' },
  );
  const conn = await rig.agent.accept();
  t.teardown(() => conn.close());
  await conn.send(encodeRequest(delRequest('pod-d')));
  t.equal(await answerOf(conn), 'failure to process message : boom');
  t.equal(await answerOf(conn), 'EOF');
  const again = await rig.agent.accept();
  t.teardown(() => again.close());
  t.ok(rig.disconnects[0] instanceof ZdsProtocolError);
});

t.test('a handler that throws: nack "failure to process message", reconnect', async (t) => {
  const rig = clientRig(t, () => {
    throw new Error('state manager bug');
  });
  const conn = await rig.agent.accept();
  t.teardown(() => conn.close());
  await conn.send(encodeRequest(delRequest('pod-d')));
  t.equal(await answerOf(conn), 'failure to process message : state manager bug');
  t.equal(await answerOf(conn), 'EOF');
  const again = await rig.agent.accept();
  t.teardown(() => again.close());
  t.ok(rig.log.find(/the ZDS handler threw/, ERROR).length === 1);
});

t.test('a nack verdict keeps the connection; a long reason is cut to fit one datagram', async (t) => {
  const rig = clientRig(t, (req) => ({ ack: req.kind === 'del' ? 'x'.repeat(3000) : '' }));
  const conn = await rig.agent.accept();
  t.teardown(() => conn.close());
  await conn.send(encodeRequest(delRequest('pod-d')));
  const answer = await answerOf(conn);
  t.ok(answer.length < 1024 && answer.endsWith('...'), `cut to ${answer.length} chars`);
  await conn.send(encodeRequest(delRequest('pod-e')));
  t.equal(await answerOf(conn), 'xxx'.repeat(1000).slice(0, answer.length - 3) + '...', 'still connected');
  t.equal(rig.client.connected, true);
});
