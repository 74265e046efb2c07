// The per-node inpod ztunnel stand-in where ZDS goes wrong or changes hands, on a one-node inpod
// testbed: protocol errors that make ztunnel exit 1 (played by a raw SOCK_SEQPACKET peer), a bind
// failure (nack, retry every 5 s), an agent restart (proxies kept, snapshot reconciles), a rolling
// upgrade (two stand-ins in the pod's reuseport groups) and SIGTERM (listeners closed, an open
// connection finishes), with ENABLE_ORIG_SRC=false (the app sees the pod's own address).
import t from 'tap';
import net from 'node:net';
import { closeSync, openSync } from 'node:fs';
import { join } from 'node:path';
import { waitForPort } from '../../src/testbed/helpers.ts';
import {
  startExtraZtunnel,
  startZtunnels,
  stopZtunnel,
  ztunnelReadiness,
  type ZtunnelHandle,
} from '../../src/testbed/ztunnel/launch.ts';
import { closeFd, listenFd, tcpSocket } from '../../src/testbed/ztunnel/sockopt.ts';
import { withNetns } from '../../src/libbpf/netns.ts';
import {
  ZdsServer,
  ZdsNackError,
  SeqpacketSocket,
  addRequest,
  keepRequest,
  snapshotSentRequest,
  encodeRequest,
  decodeAck,
  decodeHello,
  type SnapshotItem,
} from '../../src/zds/index.ts';
import { logger } from '../../src/log.ts';
import { iptables, oneNodeInpodTestbed, REDIRECT_INBOUND, until } from './ztunnel-fixture.ts';

const tb = await oneNodeInpodTestbed();
t.teardown(() => tb.down());
const servers: ZdsServer[] = [];
t.teardown(async () => {
  for (const s of servers) await s.close();
});
const app = tb.pod('mesh/app');
const client = tb.pod('plain/client');
const info = { name: app.name, namespace: app.namespace, serviceAccount: 'default' };
const log = logger('test-zds');

/** Pids owning a listener on `port` in the app pod. */
async function listenerPids(port: number): Promise<number[]> {
  const r = await tb.exec(app, ['ss', '-Hltnp', `sport = :${port}`]);
  return [...r.stdout.matchAll(/pid=(\d+),/g)].map((m) => Number(m[1])).sort();
}

async function zdsServer(name: string, snapshot: () => readonly SnapshotItem[]): Promise<ZdsServer> {
  const s = await ZdsServer.listen({ path: join(tb.info.runDir, 'zds', name), snapshot, log });
  servers.push(s);
  return s;
}

t.test('protocol errors: nack, then the process exits 1', async (t) => {
  const path = join(tb.info.runDir, 'zds', 'raw.sock');
  const listener = SeqpacketSocket.listen(path);
  t.teardown(() => listener.close());
  /** One stand-in connected to the raw listener: its connection and handle, hello read. */
  const session = async (): Promise<{ conn: SeqpacketSocket; zt: ZtunnelHandle }> => {
    const [zt] = await startZtunnels(tb, { zdsSocket: () => path });
    const conn = await listener.accept();
    const hello = await conn.recv();
    t.equal(hello && decodeHello(hello.data).version, 1, 'hello V1');
    if (!zt) throw new Error('no stand-in');
    return { conn, zt };
  };
  const ask = async (conn: SeqpacketSocket, bytes: Uint8Array, fds: number[] = []): Promise<string | undefined> => {
    await conn.send(bytes, fds);
    const d = await conn.recv();
    return d ? decodeAck(d.data) : undefined;
  };
  const cases: { what: string; steps: (conn: SeqpacketSocket) => Promise<string | undefined>; nack: string }[] = [
    {
      what: 'an Add without workload info',
      nack: 'workload_info is required but not present',
      steps: async (conn) => {
        const fd = openSync(app.netnsPath, 'r');
        try {
          return await ask(conn, encodeRequest(addRequest(app.uid, undefined)), [fd]);
        } finally {
          closeSync(fd);
        }
      },
    },
    {
      what: 'a Keep after SnapshotSent',
      nack: 'pod keep received after snapshot',
      steps: async (conn) => {
        t.equal(await ask(conn, encodeRequest(snapshotSentRequest())), '', 'snapshot acked');
        return ask(conn, encodeRequest(keepRequest(app.uid)));
      },
    },
    {
      what: 'a second SnapshotSent',
      nack: 'pod snapshot received already',
      steps: async (conn) => {
        t.equal(await ask(conn, encodeRequest(snapshotSentRequest())), '', 'snapshot acked');
        return ask(conn, encodeRequest(snapshotSentRequest()));
      },
    },
  ];
  for (const c of cases) {
    const { conn, zt } = await session();
    t.equal(await c.steps(conn), c.nack, `${c.what}: nacked with ztunnel's reason`);
    t.equal(await zt.process.exited, 1, `${c.what}: exit status 1`);
    conn.close();
  }
});

t.test('a failed bind is nacked and retried every 5 s until the port is free', async (t) => {
  const server = await zdsServer('bind.sock', () => []);
  const [zt] = await startZtunnels(tb, { zdsSocket: () => server.path });
  if (!zt) throw new Error('no stand-in');
  await zt.waitFor((s) => s.ready, 'ready after an empty snapshot');
  // Something else holds 15001 in the pod, without SO_REUSEPORT.
  const blocker = withNetns(app.netnsPath, () => listenFd(6, '::', 15001, { transparent: false }));
  const err = await server.add(app.uid, info, app.netnsPath).catch((e: unknown) => e);
  t.ok(err instanceof ZdsNackError, 'nacked');
  t.match((err as ZdsNackError).reason, /^failure to start proxy: .*EADDRINUSE/);
  t.same(zt.state()?.pending, [app.uid]);
  t.same(await listenerPids(15006), [], 'nothing half-open: the proxy closed what it had opened');
  closeFd(blocker);
  const freedAt = Date.now();
  await zt.waitFor((s) => s.pending.length === 0 && s.workloads.length === 1, 'the retry to start the proxy', 12_000);
  t.ok(Date.now() - freedAt < 6000 + 2000, 'retried within the 5 s period');
  t.same(await listenerPids(15001), [zt.pid], 'listening now');
  await server.add(app.uid, info, app.netnsPath);
  t.pass('the same Add is acked now');

  t.test('agent restart: proxies survive the disconnect, the new snapshot keeps or drains them', async (t) => {
    await server.close();
    await zt.waitFor((s) => !s.connected, 'disconnected');
    t.equal(await ztunnelReadiness(tb, zt), 500, 'not ready while the agent is away');
    t.same(await listenerPids(15001), [zt.pid], 'the proxy keeps running');
    const again = await zdsServer('bind.sock', () => [{ kind: 'keep', uid: app.uid }]);
    await zt.waitFor((s) => s.connected && s.ready, 'reconnected and ready', 20_000);
    t.same(
      zt.state()?.workloads.map((w) => w.uid),
      [app.uid],
      'kept by the snapshot',
    );
    t.same(await listenerPids(15001), [zt.pid]);
    await again.close();
    await zdsServer('bind.sock', () => []);
    await zt.waitFor((s) => s.connected && s.ready, 'reconnected to a snapshot without the pod', 20_000);
    await until(
      'listeners of the pod gone',
      () => listenerPids(15001),
      (p) => p.length === 0,
    );
    t.same(zt.state()?.workloads, []);
  });
  await t.test('stop', async () => void (await stopZtunnel(tb, 'node1', { handle: zt })));
});

t.test(
  'rolling upgrade: two stand-ins share the reuseport groups; SIGTERM closes one, its open connection finishes',
  async (t) => {
    // The app tells each connection who its peer is, then echoes.
    tb.spawn(app, [
      process.execPath,
      '-e',
      "require('net').createServer((s) => {" +
        "s.write('peer=' + s.remoteAddress.replace('::ffff:', '') + '\\n'); s.pipe(s); }).listen(8080)",
    ]);
    await waitForPort(tb, app, 8080);
    await iptables(tb, app, REDIRECT_INBOUND(8080));
    const server = await zdsServer('upgrade.sock', () => [
      { kind: 'add', uid: app.uid, info, netnsPath: app.netnsPath },
    ]);
    // ENABLE_ORIG_SRC=false: no return path for spoofed replies is needed, and the app sees the pod's IP.
    const opts = { zdsSocket: () => server.path, origSrc: false, drainDeadlineMs: 30_000 };
    const [old] = await startZtunnels(tb, opts);
    if (!old) throw new Error('no stand-in');
    await old.waitFor((s) => s.ready && s.workloads.length === 1, 'serving the pod');
    const next = await startExtraZtunnel(tb, 'node1');
    await next.waitFor((s) => s.ready && s.workloads.length === 1, 'the second one serving the pod too');
    for (const port of [15001, 15006, 15008])
      t.same(await listenerPids(port), [old.pid, next.pid].sort(), `both listen on ${port}`);

    // Connections from the client until one is served by the old stand-in (reuseport spreads them).
    const connect = async (): Promise<net.Socket> => {
      const fd = withNetns(client.netnsPath, () => tcpSocket(4));
      const s = new net.Socket({ fd, readable: true, writable: true });
      await new Promise<void>((resolve, reject) => s.once('error', reject).connect(8080, app.ip, resolve));
      return s;
    };
    const lineOf = (s: net.Socket): Promise<string> =>
      new Promise((resolve) => s.once('data', (b: Buffer) => resolve(b.toString())));
    const ownerOf = async (s: net.Socket): Promise<number | undefined> => {
      const r = await tb.exec(app, [
        'ss',
        '-Htnp',
        'state',
        'established',
        `( sport = :15006 and dport = :${s.localPort} )`,
      ]);
      const m = /pid=(\d+),/.exec(r.stdout);
      return m ? Number(m[1]) : undefined;
    };
    let held: net.Socket | undefined;
    for (let i = 0; i < 40 && !held; i++) {
      const s = await connect();
      t.equal(await lineOf(s), `peer=${app.ip}\n`, 'origSrc off: the app sees the pod itself');
      if ((await ownerOf(s)) === old.pid) held = s;
      else s.destroy();
    }
    if (!held) throw new Error('no connection landed on the old stand-in in 40 tries');
    const exited = stopZtunnel(tb, 'node1', { handle: old });
    await until(
      'the old listeners closed',
      () => listenerPids(15006),
      (p) => p.length === 1,
    );
    for (const port of [15001, 15006, 15008])
      t.same(await listenerPids(port), [next.pid], `only the new one listens on ${port}`);
    const fresh = await connect();
    t.equal(await lineOf(fresh), `peer=${app.ip}\n`, 'new connections are served by the new stand-in');
    fresh.destroy();
    held.write('still here');
    t.equal(await lineOf(held), 'still here', 'the open connection through the old stand-in still works');
    t.equal(old.state()?.exiting, 'sigterm');
    held.end();
    t.equal(await exited, 0, 'the old stand-in exits 0 once its connection finished');
    await stopZtunnel(tb, 'node1', { handle: next });
  },
);
