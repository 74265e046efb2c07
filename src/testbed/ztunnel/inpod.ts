// The per-node inpod ztunnel stand-in (ztunnel >= 1.23, PROXY_MODE=shared): one process in the ztunnel
// pod's netns and cgroup, a ZDS client of the node agent (src/inpod/workloadmanager.rs in
// istio/ztunnel). For each pod it is handed it opens, inside the pod's netns, the DNS proxy (dns.ts)
// and the three listeners (proxy.ts); which request does what is workloads.ts. Readiness on
// [::]:15021/healthz/ready (src/readiness/server.rs; cfg.readinessPort). SIGTERM: stop taking requests, close every
// listener, let open connections finish within the deadline, exit 0 (src/app.rs, src/drain.rs).
// Run: node inpod.ts '<InpodStandInConfig JSON>'
import http from 'node:http';
import { closeSync, fstatSync, renameSync, writeFileSync } from 'node:fs';
import { ZdsClient } from '../../zds/index.ts';
import { logger } from '../../log.ts';
import { DnsProxy, normalizeName } from './dns.ts';
import { loadTls, WorkloadProxy } from './proxy.ts';
import { WorkloadManager, type ManagerState, type RunningProxy } from './workloads.ts';
import type { SockAddr } from './sockopt.ts';
import { type InpodStandInConfig, type InpodStandInState } from './config.ts';
import type { WorkloadInfo } from './zds-types.ts';

const cfg = JSON.parse(process.argv[2] ?? '{}') as InpodStandInConfig;
const log = logger('ztunnel-standin').child({ node: cfg.node });
const tls = loadTls(cfg.pkiDir);
const mesh = new Set(cfg.meshIps);
const records = new Map(Object.entries(cfg.dnsRecords).map(([name, ips]) => [normalizeName(name), ips]));
const drainDeadlineMs = cfg.drainDeadlineMs ?? 5000;

function parseHostPort(s: string | undefined): SockAddr | undefined {
  const m = s === undefined ? null : /^\[?([0-9a-fA-F:.]+?)\]?:(\d+)$/.exec(s);
  return m?.[1] && m[2] ? { ip: m[1], port: Number(m[2]) } : undefined;
}
const dnsUpstream = parseHostPort(cfg.dnsUpstream);

let exiting: string | undefined;
function writeState(s: ManagerState): void {
  const state: InpodStandInState = { pid: process.pid, ...s, ...(exiting === undefined ? {} : { exiting }) };
  const tmp = `${cfg.statePath}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify(state) + '\n');
  renameSync(tmp, cfg.statePath);
}

/** One pod's proxies, in ztunnel's order (src/proxyfactory.rs): DNS first, then the L4 listeners. */
async function startProxies(uid: string, info: WorkloadInfo, netnsFd: number): Promise<RunningProxy> {
  const where = `${info.namespace}/${info.name}`;
  const warn = (msg: string): void => log.warn({ uid, workload: where }, msg);
  const dns = await DnsProxy.start({ netnsFd, where, records, namespace: info.namespace, upstream: dnsUpstream, warn });
  let proxy: WorkloadProxy;
  try {
    proxy = await WorkloadProxy.start({
      node: cfg.node,
      where,
      logPath: cfg.logPath,
      tls,
      mesh,
      localMesh: new Set(),
      netnsFd,
      transparent: false,
      origSrc: cfg.origSrc,
      reusePort: true,
      warn,
    });
  } catch (e) {
    dns.close();
    throw e;
  }
  log.info({ uid, workload: where, dns: dns.addresses }, 'proxy started');
  return {
    async drain(mode) {
      dns.close();
      await proxy.drain(mode, drainDeadlineMs);
      log.info({ uid, workload: where, mode }, 'proxy drained');
    },
  };
}

const manager = new WorkloadManager({
  factory: { start: startProxies },
  netns: {
    id: (fd) => {
      const st = fstatSync(fd);
      return `${st.dev}:${st.ino}`;
    },
    close: (fd) => closeSync(fd),
  },
  log: (msg, fields) => log.info(fields ?? {}, msg),
  onChange: writeState,
});
writeState(manager.state());

// Readiness as ztunnel serves it: 200 "ready" once nothing blocks it, else 500 with what is pending.
const readiness = http.createServer((req, res) => {
  if (req.url !== '/healthz/ready') {
    res.writeHead(404).end();
  } else if (req.method !== 'GET') {
    res.writeHead(405).end();
  } else if (manager.ready && exiting === undefined) {
    res.writeHead(200, { 'content-type': 'text/plain' }).end('ready\n');
  } else {
    res.writeHead(500, { 'content-type': 'text/plain' }).end('not ready, pending: workload proxy manager\n');
  }
});
await new Promise<void>((resolve) =>
  readiness.listen({ host: '::', port: cfg.readinessPort, ipv6Only: false }, resolve),
);

const client = ZdsClient.start({
  path: cfg.zdsSocket,
  log,
  handle: async (req) => {
    const v = await manager.handle(req);
    if ('exit' in v) {
      exiting = v.exit;
      writeState(manager.state());
    }
    return v;
  },
  onConnected: () => manager.connected(),
  onDisconnected: () => manager.disconnected(),
  // src/app.rs: a WorkloadProxyManager protocol error ends the process with status 1 (after the nack).
  onExit: (reason) => {
    log.error({ reason }, 'ZDS protocol error: exiting 1');
    process.exit(1);
  },
});
log.info({ zds: cfg.zdsSocket, origSrc: cfg.origSrc }, 'ztunnel stand-in started');

process.once('SIGTERM', () => {
  exiting = 'sigterm';
  log.info('SIGTERM: draining');
  void (async () => {
    await client.stop();
    readiness.close();
    await manager.drainAll();
    log.info('drained, exiting');
    process.exit(0);
  })();
});
// One broken connection must not take the node's ztunnel down: log it and keep serving.
process.on('uncaughtException', (e) => log.error({ err: e }, 'uncaught exception'));
