// Starts the ztunnel stand-in where each topology puts ztunnel.
// - startZtunnels: today's ztunnel (>= 1.23): ONE process per node in the ztunnel pod (its netns and
//   cgroup), a ZDS client of the node agent's socket; it opens listeners in the pods it is handed.
// - startStandIns (legacy, until every agent speaks ZDS): node topology = one process in the ztunnel
//   pod (transparent listeners); inpod = one process per mesh pod, in that pod's netns but ztunnel's
//   cgroup, listening from the start with no ZDS.
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Testbed } from '../testbed.ts';
import type { TestbedProcess } from '../exec.ts';
import { TestbedLookupError, TestbedTimeoutError } from '../errors.ts';
import { makePki, pkiPaths } from './pki.ts';
import { PORT_READINESS, type InpodStandInConfig, type InpodStandInState, type StandInConfig } from './config.ts';

const STANDIN = fileURLToPath(new URL('./standin.ts', import.meta.url));
const INPOD = fileURLToPath(new URL('./inpod.ts', import.meta.url));
const running = new WeakMap<Testbed, TestbedProcess[]>();

async function waitReady(file: string, proc: TestbedProcess, what: string, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let exited = false;
  void proc.exited.then(() => (exited = true));
  while (!existsSync(file)) {
    if (exited) throw new TestbedTimeoutError(`${what} (it exited; see its .out file in the run dir)`, 0);
    if (Date.now() > deadline) throw new TestbedTimeoutError(what, timeoutMs);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The legacy stand-ins; `origSrc` (default false: unchanged behaviour) turns on the inbound spoofing. */
export async function startStandIns(tb: Testbed, opts: { origSrc?: boolean } = {}): Promise<void> {
  const { info } = tb;
  if (!existsSync(pkiPaths(info.pkiDir).cert)) await makePki(info.pkiDir);
  const dir = join(info.runDir, 'standin');
  mkdirSync(dir, { recursive: true });
  const meshIps = info.pods.filter((p) => p.mesh).flatMap((p) => p.ips);
  const procs: { proc: TestbedProcess; ready: string; where: string }[] = [];
  for (const z of info.ztunnels) {
    const zpod = tb.pod(`istio-system/${z.pod}`);
    const targets = info.topology === 'node' ? [zpod] : info.pods.filter((p) => p.mesh && p.node === z.node);
    for (const target of targets) {
      const where = info.topology === 'node' ? z.pod : `${target.namespace}/${target.name}`;
      const id = where.replace('/', '.');
      const ready = join(dir, `${id}.ready`);
      rmSync(ready, { force: true });
      const cfg: StandInConfig = {
        node: z.node,
        where,
        logPath: z.logPath,
        pkiDir: info.pkiDir,
        transparent: info.topology === 'node',
        meshIps,
        // Every address of a dual-stack pod: HBONE to a same-node pod's IPv6 address takes the shortcut too.
        localMeshIps:
          info.topology === 'node' ? info.pods.filter((p) => p.mesh && p.node === z.node).flatMap((p) => p.ips) : [],
        readyFile: ready,
        origSrc: opts.origSrc ?? false,
      };
      const argv = [process.execPath, STANDIN, JSON.stringify(cfg)];
      const proc = tb.spawnAt(target.netnsPath, zpod.containerCgroupPath, argv, { logFile: join(dir, `${id}.out`) });
      procs.push({ proc, ready, where });
    }
  }
  await Promise.all(procs.map((p) => waitReady(p.ready, p.proc, `the ztunnel stand-in for ${p.where}`)));
  running.set(tb, [...(running.get(tb) ?? []), ...procs.map((p) => p.proc)]);
}

/** Stops the stand-ins this process started (down() kills them anyway). */
export async function stopStandIns(tb: Testbed): Promise<void> {
  const procs = running.get(tb) ?? [];
  running.delete(tb);
  for (const p of procs) p.kill('SIGTERM');
  await Promise.all(procs.map((p) => p.exited));
}

// ---- the per-node inpod stand-in (ztunnel >= 1.23) ----

export interface ZtunnelsOptions {
  /** The node agent's ZDS socket for a node (ztunnel's INPOD_UDS). */
  readonly zdsSocket: (node: string) => string;
  /** Spoof the client's address on inbound legs (default true, ztunnel's default; false = ENABLE_ORIG_SRC=false). */
  readonly origSrc?: boolean;
  /** "ip:port" of the resolver the DNS proxy forwards names outside the testbed zone to. */
  readonly dnsUpstream?: string;
  /** Wait until each stand-in is connected to its ZDS server (default true; ready needs a snapshot too). */
  readonly waitConnected?: boolean;
  /** SIGTERM drain deadline for open connections (default 5000 ms, ztunnel's). */
  readonly drainDeadlineMs?: number;
}

export interface ZtunnelHandle {
  readonly node: string;
  /** The stand-in's own pid (nsenter execs it in place). */
  readonly pid: number;
  readonly process: TestbedProcess;
  readonly statePath: string;
  /** Its stdout+stderr (pino JSON lines). */
  readonly outPath: string;
  /** Its readiness port in the ztunnel pod: 15021, or another one for a stand-in started beside a running one. */
  readonly readinessPort: number;
  /** The last state it wrote (undefined before the first). */
  state(): InpodStandInState | undefined;
  /** Resolves with the state once `pred` holds; rejects on timeout or when the process exited first. */
  waitFor(pred: (s: InpodStandInState) => boolean, what: string, timeoutMs?: number): Promise<InpodStandInState>;
}

interface ZtunnelFleet {
  readonly opts: ZtunnelsOptions;
  readonly running: Map<string, ZtunnelHandle[]>;
  seq: number;
}

const fleets = new WeakMap<Testbed, ZtunnelFleet>();

/** The testbed zone of the DNS proxy: <pod>.<ns>.svc.cluster.local -> pod IP, for pods with their own IP. */
export function testbedDnsRecords(tb: Testbed): Record<string, string[]> {
  return Object.fromEntries(
    tb.pods.filter((p) => !p.hostNetwork).map((p) => [`${p.name}.${p.namespace}.svc.cluster.local`, [p.ip]]),
  );
}

function readState(path: string): InpodStandInState | undefined {
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as InpodStandInState;
  } catch {
    return undefined;
  }
}

function outTail(path: string): string {
  try {
    return readFileSync(path, 'utf8').trim().split('\n').slice(-5).join(' | ');
  } catch {
    return '';
  }
}

function spawnZtunnel(tb: Testbed, fleet: ZtunnelFleet, node: string): ZtunnelHandle {
  const z = tb.ztunnel(node);
  const zpod = tb.pod(`istio-system/${z.pod}`);
  const dir = join(tb.info.runDir, 'ztunnel');
  mkdirSync(dir, { recursive: true });
  const id = `${node}-${++fleet.seq}`;
  const statePath = join(dir, `${id}.state.json`);
  const outPath = join(dir, `${id}.out`);
  rmSync(statePath, { force: true });
  const others = fleet.running.get(node) ?? [];
  const readinessPort = others.some((h) => h.readinessPort === PORT_READINESS)
    ? PORT_READINESS + 100 + fleet.seq
    : PORT_READINESS;
  const cfg: InpodStandInConfig = {
    node,
    logPath: z.logPath,
    pkiDir: tb.info.pkiDir,
    meshIps: tb.pods.filter((p) => p.mesh).flatMap((p) => p.ips),
    zdsSocket: fleet.opts.zdsSocket(node),
    origSrc: fleet.opts.origSrc ?? true,
    dnsRecords: testbedDnsRecords(tb),
    ...(fleet.opts.dnsUpstream === undefined ? {} : { dnsUpstream: fleet.opts.dnsUpstream }),
    ...(fleet.opts.drainDeadlineMs === undefined ? {} : { drainDeadlineMs: fleet.opts.drainDeadlineMs }),
    statePath,
    readinessPort,
  };
  const proc = tb.spawnAt(zpod.netnsPath, zpod.containerCgroupPath, [process.execPath, INPOD, JSON.stringify(cfg)], {
    logFile: outPath,
  });
  let exited: number | null | undefined;
  void proc.exited.then((code) => {
    exited = code;
    const list = fleet.running.get(node) ?? [];
    fleet.running.set(
      node,
      list.filter((h) => h.process !== proc),
    );
  });
  const handle: ZtunnelHandle = {
    node,
    pid: proc.pid,
    process: proc,
    statePath,
    outPath,
    readinessPort,
    state: () => readState(statePath),
    async waitFor(pred, what, timeoutMs = 15_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const s = readState(statePath);
        if (s && pred(s)) return s;
        if (exited !== undefined) {
          throw new TestbedTimeoutError(
            `ztunnel stand-in ${id}: ${what} (it exited with ${exited}: ${outTail(outPath)})`,
            0,
          );
        }
        if (Date.now() > deadline) throw new TestbedTimeoutError(`ztunnel stand-in ${id}: ${what}`, timeoutMs);
        await new Promise((r) => setTimeout(r, 20));
      }
    },
  };
  fleet.running.set(node, [...(fleet.running.get(node) ?? []), handle]);
  return handle;
}

async function started(h: ZtunnelHandle, waitConnected: boolean): Promise<ZtunnelHandle> {
  await h.waitFor((s) => !waitConnected || s.connected, waitConnected ? 'connected to its ZDS server' : 'started');
  return h;
}

/**
 * One inpod stand-in per node that has a ztunnel pod, each a ZDS client of `zdsSocket(node)`; resolves
 * once each is connected (start the ZDS server first, or pass waitConnected: false).
 */
export async function startZtunnels(tb: Testbed, opts: ZtunnelsOptions): Promise<ZtunnelHandle[]> {
  if (!existsSync(pkiPaths(tb.info.pkiDir).cert)) await makePki(tb.info.pkiDir);
  const fleet: ZtunnelFleet = fleets.get(tb) ?? { opts, running: new Map(), seq: 0 };
  fleets.set(tb, { ...fleet, opts });
  const f = fleets.get(tb) as ZtunnelFleet;
  const handles = tb.ztunnels.map((z) => spawnZtunnel(tb, f, z.node));
  return Promise.all(handles.map((h) => started(h, opts.waitConnected ?? true)));
}

/** Another stand-in on the node, beside the running one (a rolling upgrade) or after it stopped (a restart). */
export async function startExtraZtunnel(tb: Testbed, node: string): Promise<ZtunnelHandle> {
  const fleet = fleets.get(tb);
  if (!fleet) throw new TestbedLookupError(node, 'stand-in fleet started by startZtunnels for the testbed of node');
  return started(spawnZtunnel(tb, fleet, node), fleet.opts.waitConnected ?? true);
}

/** The node's running stand-ins, oldest first. */
export function ztunnelsOn(tb: Testbed, node: string): readonly ZtunnelHandle[] {
  return fleets.get(tb)?.running.get(node) ?? [];
}

/**
 * Stops a stand-in of the node (default: the oldest) with `signal` (SIGTERM = ztunnel's graceful
 * shutdown) and resolves with its exit code once it is gone.
 */
export async function stopZtunnel(
  tb: Testbed,
  node: string,
  opts: { handle?: ZtunnelHandle; signal?: NodeJS.Signals } = {},
): Promise<number | null> {
  const h = opts.handle ?? ztunnelsOn(tb, node)[0];
  if (!h) throw new TestbedLookupError(node, 'running ztunnel stand-in on node');
  h.process.kill(opts.signal ?? 'SIGTERM');
  return h.process.exited;
}

/** GET /healthz/ready of a stand-in, from inside the ztunnel pod: the HTTP status (0 when nothing answered). */
export async function ztunnelReadiness(tb: Testbed, h: ZtunnelHandle): Promise<number> {
  const zpod = tb.pod(`istio-system/${tb.ztunnel(h.node).pod}`);
  const url = `http://127.0.0.1:${h.readinessPort}/healthz/ready`;
  const r = await tb.exec(zpod, ['curl', '-s', '-o', '/dev/null', '-w', '%{http_code}', '--max-time', '2', url], {
    check: false,
  });
  return Number(r.stdout) || 0;
}
