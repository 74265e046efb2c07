// The single-workload ztunnel stand-in process: node topology = the ztunnel pod's own proxy; the
// legacy inpod mode = one process per mesh pod, started in that pod's netns (startStandIns). The
// per-node inpod stand-in that takes its pods over ZDS is inpod.ts. The proxy itself is proxy.ts.
// Run: node standin.ts '<StandInConfig JSON>'
import { writeFileSync } from 'node:fs';
import { loadTls, WorkloadProxy } from './proxy.ts';
import { PORT_HBONE, PORT_INBOUND_PLAINTEXT, PORT_OUTBOUND, type StandInConfig } from './config.ts';

const cfg = JSON.parse(process.argv[2] ?? '{}') as StandInConfig;
const warn = (msg: string): void => void process.stderr.write(`stand-in ${cfg.where}: ${msg}\n`);

await WorkloadProxy.start({
  node: cfg.node,
  where: cfg.where,
  logPath: cfg.logPath,
  tls: loadTls(cfg.pkiDir),
  mesh: new Set(cfg.meshIps),
  localMesh: new Set(cfg.localMeshIps),
  netnsFd: undefined,
  transparent: cfg.transparent,
  origSrc: cfg.origSrc ?? false,
  reusePort: false,
  warn,
});
writeFileSync(cfg.readyFile, `${process.pid}\n`);
process.stdout.write(
  `ztunnel stand-in ${cfg.where} ready on ${PORT_OUTBOUND}/${PORT_INBOUND_PLAINTEXT}/${PORT_HBONE}\n`,
);
process.on('SIGTERM', () => process.exit(0));
// One broken connection (a peer resetting mid-handshake, an h2 protocol error) must not take the whole
// node's ztunnel down in the middle of a benchmark: say it in the .out file and keep serving.
process.on('uncaughtException', (e) => warn(`uncaught ${e.stack ?? String(e)}`));
