// The node agent's side of the chained CNI plugin (cni/ambpf-cni.c; wire format in docs/cni.md).
// The runtime runs the plugin during sandbox creation, before any container of the pod starts; the
// plugin relays the invocation here, and ADD of an ambient pod answers only once the pod's capture is
// armed and ztunnel acked it over ZDS. Anything else (ztunnel away, timeout) is a CNI error: the
// runtime tears the sandbox down and retries, so no container of the pod ever sends a packet outside
// the mesh (istio-cni's guarantee; shared/reference/ztunnel-today.md §5).
//
// How a pod gets armed before the watch has its IPs: ADD is served from what the runtime hands over
// (CNI_NETNS, the prevResult IPs, K8S_POD_* from CNI_ARGS) and what the pod source already knows.
// This module overlays the runtime's IPs on the pod's object (or, when the source has not shown the
// pod yet but its namespace is ambient, a provisional object of its own: fail closed), and tells
// discovery the netns path, so a reconcile pass arms it and hands it to ztunnel like any other pod;
// no process needs to run in it and nothing waits for the watch. The watch then confirms the pod
// (its own labels, its service account) or releases it; a pod it never shows is released after a
// grace period. What ADD took is persisted (stateFile), so a restarted agent keeps it armed.
import { createServer, type Server, type Socket } from 'node:net';
import {
  chmodSync,
  existsSync,
  lstatSync,
  mkdirSync,
  readFileSync,
  renameSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import { dirname } from 'node:path';
import type { Logger } from 'pino';
import { netnsCookie } from '../libbpf/index.ts';
import { canonicalIp, computeDesiredState } from '../state/desired.ts';
import type { ClusterSnapshot, KubeObjectLike } from '../sources/types.ts';
import { AmbpfError, describeError } from '../errors.ts';

/** 0.3.0 and 1.1.0 read prevResult the same way (ips[].address); the plugin sits in the primary CNI's
 * chain, so refusing its version would fail every pod of the node, mesh or not. */
export const CNI_SUPPORTED_VERSIONS = ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'] as const;
export const DEFAULT_CNI_TIMEOUT_MS = 10_000;
/** How long a pod ADD armed stays armed while the pod source has never shown it (`--cni-grace-ms`). */
export const DEFAULT_CNI_GRACE_MS = 60_000;
/** A request bigger than this is not a CNI invocation (the plugin caps stdin at 1 MiB). */
const MAX_REQUEST = 4 << 20;

/** CNI spec 1.0.0 error codes (SPEC.md "Error"); 100+ would be ours. */
export const CNI_ERR = {
  incompatibleVersion: 1,
  invalidEnv: 4,
  decode: 6,
  invalidConfig: 7,
  tryAgainLater: 11,
} as const;

/** What the agent answers: the plugin prints stdout and exits with exitCode. */
export interface CniReply {
  readonly exitCode: number;
  readonly stdout: string;
}

/** The plugin's request (docs/cni.md): the CNI_* environment and stdin. */
export interface CniRequest {
  readonly env: Readonly<Record<string, string>>;
  readonly stdin: string;
}

/** A failed invocation, answered as the spec's error object. */
export class CniError extends AmbpfError {
  override readonly name = 'CniError';
  readonly code: number;
  readonly details: string | undefined;
  constructor(code: number, msg: string, details?: string) {
    super(msg, { code });
    this.code = code;
    this.details = details;
  }
}

/** Who serves the pods to ztunnel (src/agent/handoff.ts). */
export interface CniHandoff {
  /** A ztunnel is connected and took its snapshot. */
  readonly ready: boolean;
  served(uid: string, netnsCookie: bigint): boolean;
}

export interface CniServerOptions {
  readonly socketPath: string;
  readonly node: string;
  readonly log: Logger;
  readonly handoff: CniHandoff;
  /** Runs a reconcile pass for this (overlaid) snapshot; its errors (one line each, naming the pod). */
  readonly reconcile: (snapshot: ClusterSnapshot) => Promise<{ readonly errors: readonly string[] } | undefined>;
  /** ADD's budget: arming and ztunnel's ack (and, for a pod ADD cannot decide on, the pod source). */
  readonly timeoutMs?: number;
  /** A pod armed by ADD that the pod source never shows is released after this long. */
  readonly graceMs?: number;
  /** Where the pods ADD took are kept across agent restarts (JSON); none if undefined. */
  readonly stateFile?: string;
}

/** What ADD learned of a pod from the runtime: where its netns is and its IPs. */
interface CniPod {
  readonly uid: string;
  readonly namespace: string;
  readonly name: string;
  readonly netnsPath: string;
  /** The netns's cookie at ADD: a persisted path that names another netns after a restart is dropped. */
  readonly netnsCookie: bigint;
  readonly ips: readonly string[];
  readonly containerId: string;
  /** ms since the epoch when ADD took the pod (the grace period runs from here). */
  readonly since: number;
  /** The pod source has shown this uid: its absence from then on means the pod is gone. */
  seen: boolean;
}

/** What the overlay needs of a pod ADD took. */
type Overlaid = Pick<CniPod, 'uid' | 'namespace' | 'name' | 'ips' | 'seen'>;

/** The persisted form of the CNI pods (the cookie as a decimal string: JSON has no bigint). */
interface StateFileV1 {
  readonly version: 1;
  readonly pods: ReadonlyArray<Omit<CniPod, 'netnsCookie'> & { readonly netnsCookie: string }>;
}

interface Parsed {
  readonly command: string;
  readonly cniVersion: string;
  readonly config: Record<string, unknown>;
  readonly pod: { namespace: string; name: string; uid: string | undefined } | undefined;
  /** CNI_CONTAINERID: which sandbox a DEL is about. */
  readonly containerId: string;
}

const record = (v: unknown): Record<string, unknown> | undefined =>
  v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;

/** `K8S_POD_NAMESPACE=a;K8S_POD_NAME=b;...` -> map. */
export function parseCniArgs(text: string | undefined): Map<string, string> {
  const out = new Map<string, string>();
  for (const part of (text ?? '').split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0) out.set(part.slice(0, eq), part.slice(eq + 1));
  }
  return out;
}

/** The IPs of a prevResult (0.3.1, 0.4.0 and 1.0.0 share `ips[].address` as CIDR), canonical, v4 first. */
export function prevResultIps(prevResult: unknown): string[] {
  const ips = record(prevResult)?.['ips'];
  if (!Array.isArray(ips)) return [];
  const out: string[] = [];
  for (const entry of ips) {
    const addr = record(entry)?.['address'];
    if (typeof addr !== 'string') continue;
    const ip = canonicalIp(addr.split('/')[0] ?? '');
    if (ip && !out.includes(ip)) out.push(ip);
  }
  return out.sort((a, b) => Number(a.includes(':')) - Number(b.includes(':')));
}

function parse(req: CniRequest): Parsed {
  const command = req.env['CNI_COMMAND'] ?? '';
  if (!command) throw new CniError(CNI_ERR.invalidEnv, 'CNI_COMMAND is not set');
  let config: Record<string, unknown> | undefined;
  try {
    config = record(JSON.parse(req.stdin));
  } catch (err) {
    throw new CniError(CNI_ERR.decode, 'the network configuration on stdin is not JSON', describeError(err));
  }
  if (!config) throw new CniError(CNI_ERR.decode, 'the network configuration on stdin is not a JSON object');
  const cniVersion = config['cniVersion'];
  if (typeof cniVersion !== 'string' || !(CNI_SUPPORTED_VERSIONS as readonly string[]).includes(cniVersion)) {
    throw new CniError(
      CNI_ERR.incompatibleVersion,
      `ambpf-cni does not support cniVersion ${JSON.stringify(cniVersion)}`,
      `supported: ${CNI_SUPPORTED_VERSIONS.join(', ')}`,
    );
  }
  const args = parseCniArgs(req.env['CNI_ARGS']);
  const namespace = args.get('K8S_POD_NAMESPACE');
  const name = args.get('K8S_POD_NAME');
  const pod = namespace && name ? { namespace, name, uid: args.get('K8S_POD_UID') || undefined } : undefined;
  return { command, cniVersion, config, pod, containerId: req.env['CNI_CONTAINERID'] ?? '' };
}

/** The result ADD hands on: prevResult unchanged, or an empty result of the config's version. */
function passThrough(p: Parsed): CniReply {
  return success(record(p.config['prevResult']) ?? { cniVersion: p.cniVersion });
}

function success(result: object): CniReply {
  return { exitCode: 0, stdout: `${JSON.stringify(result)}\n` };
}

function errorReply(cniVersion: string, err: CniError): CniReply {
  const body = { cniVersion, code: err.code, msg: err.message, ...(err.details ? { details: err.details } : {}) };
  return { exitCode: 1, stdout: JSON.stringify(body) + '\n' };
}

const podKey = (ns: string, name: string): string => `${ns}/${name}`;

function metaOf(obj: KubeObjectLike): { namespace?: unknown; name?: unknown; uid?: unknown } {
  return obj.metadata ?? {};
}

/**
 * The object a pod ADD took stands for until the source shows the real one: on this node, Pending,
 * with the runtime's IPs, no label of its own (its namespace decides) and the default service account
 * (ztunnel's WorkloadInfo; corrected by a Del and Add when the real pod names another).
 */
function provisionalPod(p: Pick<CniPod, 'uid' | 'namespace' | 'name' | 'ips'>, node: string): KubeObjectLike {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name: p.name, namespace: p.namespace, uid: p.uid, labels: {}, annotations: {} },
    spec: { nodeName: node, containers: [] },
    status: { phase: 'Pending', podIP: p.ips[0], podIPs: p.ips.map((ip) => ({ ip })) },
  };
}

/** The pods of a state file that still stand for a live netns (same path, same cookie). */
function loadState(path: string, log: Logger): CniPod[] {
  let parsed: StateFileV1;
  try {
    parsed = JSON.parse(readFileSync(path, 'utf8')) as StateFileV1;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      log.warn({ path, err: describeError(err) }, 'CNI state unreadable; starting empty');
    }
    return [];
  }
  const out: CniPod[] = [];
  for (const p of Array.isArray(parsed.pods) ? parsed.pods : []) {
    try {
      const cookie = BigInt(p.netnsCookie);
      // A sandbox torn down while the agent was away (its netns gone, or the path reused) is not kept.
      if (netnsCookie(p.netnsPath) !== cookie) continue;
      out.push({ ...p, ips: [...p.ips], netnsCookie: cookie });
    } catch {
      continue;
    }
  }
  return out;
}

export class CniServer {
  readonly #o: CniServerOptions;
  readonly #server: Server;
  readonly #timeoutMs: number;
  readonly #graceMs: number;
  /** uid -> what ADD learned; removed by DEL, when the pod leaves the pod source, or when the source
   * never showed it within the grace period. Persisted in stateFile on every change. */
  readonly #pods = new Map<string, CniPod>();
  #latest: ClusterSnapshot | undefined;
  /** Woken on each snapshot and each ZDS state change: ADDs re-check what they wait for. */
  readonly #waiters = new Set<() => void>();
  readonly #inode: number;
  readonly #sockets = new Set<Socket>();
  readonly #graceTimer: NodeJS.Timeout;

  private constructor(o: CniServerOptions, server: Server, restored: readonly CniPod[]) {
    this.#o = o;
    this.#server = server;
    this.#timeoutMs = o.timeoutMs ?? DEFAULT_CNI_TIMEOUT_MS;
    this.#graceMs = o.graceMs ?? DEFAULT_CNI_GRACE_MS;
    this.#inode = lstatSync(o.socketPath).ino;
    for (const p of restored) this.#pods.set(p.uid, p);
    // Snapshots check the grace period too; this covers a quiet source (no snapshot for a while).
    this.#graceTimer = setInterval(
      () => {
        if (this.#expire()) void this.#pass().catch(() => undefined);
      },
      Math.max(100, Math.min(this.#graceMs / 4, 5000)),
    );
    this.#graceTimer.unref();
  }

  static async start(o: CniServerOptions): Promise<CniServer> {
    mkdirSync(dirname(o.socketPath), { recursive: true });
    // What a previous agent's ADDs armed: kept armed by the first pass (whose release would otherwise
    // drop every pod the source does not show with IPs yet), confirmed or released as any other.
    const restored = o.stateFile ? loadState(o.stateFile, o.log) : [];
    // A socket file left by a previous agent (killed) would make listen fail with EADDRINUSE.
    if (existsSync(o.socketPath) && lstatSync(o.socketPath).isSocket()) unlinkSync(o.socketPath);
    let self: CniServer | undefined;
    // Half-open: the plugin shuts down its write side to mark the end of its request, and the
    // answer goes back on the same connection.
    const server = createServer({ allowHalfOpen: true }, (sock) => {
      if (self) self.#serve(sock);
      else sock.destroy(); // not listening yet: cannot happen before listen() returned
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(o.socketPath, () => {
        server.off('error', reject);
        resolve();
      });
    });
    chmodSync(o.socketPath, 0o600); // the runtime runs the plugin as root; nobody else may add pods
    self = new CniServer(o, server, restored);
    self.#persist();
    o.log.info(
      { socket: o.socketPath, timeoutMs: self.#timeoutMs, graceMs: self.#graceMs, restored: restored.length },
      'serving the CNI plugin',
    );
    return self;
  }

  /** netns paths of the pods ADD took (uid -> CNI_NETNS), for discovery. */
  netnsHints(): ReadonlyMap<string, string> {
    return new Map([...this.#pods].map(([uid, p]) => [uid, p.netnsPath]));
  }

  /**
   * A snapshot from the pod source: remembered (an ADD that cannot decide waits for its pod in it)
   * and returned with the pods ADD took filled in: the runtime's IPs where the source has none yet,
   * a provisional object for a pod the source has not shown.
   */
  observe(snapshot: ClusterSnapshot): ClusterSnapshot {
    this.#latest = snapshot;
    const uids = new Set(snapshot.pods.map((p) => metaOf(p).uid));
    let changed = false;
    for (const [uid, p] of this.#pods) {
      if (uids.has(uid)) {
        changed ||= !p.seen;
        p.seen = true;
      } else if (p.seen) {
        this.#pods.delete(uid); // the source showed it and it is gone now
        changed = true;
      }
    }
    if (this.#expire(false) || changed) this.#persist();
    this.wake();
    return this.#overlay(snapshot);
  }

  /** Something an ADD may wait for changed (a ZDS ack, a ztunnel connecting). */
  wake(): void {
    for (const w of [...this.#waiters]) w();
  }

  async close(): Promise<void> {
    clearInterval(this.#graceTimer);
    for (const s of this.#sockets) s.destroy();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
    try {
      if (lstatSync(this.#o.socketPath).ino === this.#inode) unlinkSync(this.#o.socketPath);
    } catch {
      // already gone
    }
  }

  /** Drops the pods the source never showed within the grace period; true if any went. */
  #expire(persist = true): boolean {
    const now = Date.now();
    let dropped = false;
    for (const [uid, p] of this.#pods) {
      if (p.seen || now - p.since < this.#graceMs) continue;
      this.#pods.delete(uid);
      dropped = true;
      this.#o.log.warn(
        { pod: podKey(p.namespace, p.name), uid, graceMs: this.#graceMs },
        'released a pod CNI ADD armed: the pod source never showed it',
      );
    }
    if (dropped && persist) this.#persist();
    return dropped;
  }

  /** Writes the pods ADD took (atomically: a crash leaves the old file or the new one). */
  #persist(): void {
    const path = this.#o.stateFile;
    if (!path) return;
    const state: StateFileV1 = {
      version: 1,
      pods: [...this.#pods.values()].map((p) => ({ ...p, netnsCookie: String(p.netnsCookie) })),
    };
    try {
      mkdirSync(dirname(path), { recursive: true });
      const tmp = `${path}.${process.pid}.tmp`;
      writeFileSync(tmp, JSON.stringify(state) + '\n');
      renameSync(tmp, path);
    } catch (err) {
      // Kept in memory all the same; a restart would then lose (and the first pass release) them.
      this.#o.log.error({ path, err: describeError(err) }, 'cannot persist the CNI pods');
    }
  }

  #overlay(snapshot: ClusterSnapshot, taken: ReadonlyMap<string, Overlaid> = this.#pods): ClusterSnapshot {
    if (taken.size === 0) return snapshot;
    const shownUids = new Set<unknown>();
    const pods = snapshot.pods.map((obj) => {
      const uid = metaOf(obj).uid;
      shownUids.add(uid);
      const cni = typeof uid === 'string' ? taken.get(uid) : undefined;
      const status = record(obj.status) ?? {};
      if (!cni) return obj;
      // The source may still show the IPs of a sandbox that was re-created (a pause crash, a reboot):
      // the netns ADD gave carries the IPs of prevResult, and those are what its capture must use.
      const shown = Array.isArray(status['podIPs'])
        ? status['podIPs'].map((x) => record(x)?.['ip']).filter((ip): ip is string => typeof ip === 'string')
        : typeof status['podIP'] === 'string'
          ? [status['podIP']]
          : [];
      if (shown.length > 0 && shown.every((ip) => cni.ips.includes(ip))) return obj;
      const ips = { podIP: cni.ips[0], podIPs: cni.ips.map((ip) => ({ ip })) };
      return { ...obj, status: { ...status, phase: status['phase'] ?? 'Pending', ...ips } };
    });
    // Not shown yet: provisional, decided by its namespace (a pod the source showed and lost is gone).
    for (const p of taken.values()) if (!p.seen && !shownUids.has(p.uid)) pods.push(provisionalPod(p, this.#o.node));
    return { ...snapshot, pods };
  }

  #serve(sock: Socket): void {
    this.#sockets.add(sock);
    const chunks: Buffer[] = [];
    let size = 0;
    sock.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_REQUEST) {
        sock.destroy();
        return;
      }
      chunks.push(c);
    });
    sock.on('error', () => undefined); // the plugin went away; nothing to answer
    sock.on('close', () => this.#sockets.delete(sock));
    sock.on('end', () => {
      void this.handle(Buffer.concat(chunks).toString('utf8')).then((reply) => {
        sock.end(`${reply.exitCode}\n${reply.stdout}`);
      });
    });
  }

  /** One invocation, from the request's text to the reply. Never throws. */
  async handle(text: string): Promise<CniReply> {
    const started = performance.now();
    let cniVersion = '1.0.0';
    let req: CniRequest;
    try {
      const raw = record(JSON.parse(text));
      const env = record(raw?.['env']);
      if (!raw || !env || typeof raw['stdin'] !== 'string') throw new Error('expected {"env": {...}, "stdin": "..."}');
      const strings = Object.entries(env).filter((e): e is [string, string] => typeof e[1] === 'string');
      req = { env: Object.fromEntries(strings), stdin: raw['stdin'] };
    } catch (err) {
      return errorReply(
        cniVersion,
        new CniError(
          CNI_ERR.decode,
          "the plugin's request is malformed (plugin and agent versions differ?)",
          describeError(err),
        ),
      );
    }
    try {
      const p = parse(req);
      cniVersion = p.cniVersion;
      const reply = await this.#dispatch(p, req.env);
      this.#o.log.info(
        {
          command: p.command,
          pod: p.pod ? podKey(p.pod.namespace, p.pod.name) : undefined,
          ms: Math.round(performance.now() - started),
        },
        'CNI request served',
      );
      return reply;
    } catch (err) {
      const e =
        err instanceof CniError ? err : new CniError(CNI_ERR.tryAgainLater, 'ambpf agent error', describeError(err));
      this.#o.log.warn(
        {
          command: req.env['CNI_COMMAND'],
          args: req.env['CNI_ARGS'],
          code: e.code,
          err: e.message,
          details: e.details,
          ms: Math.round(performance.now() - started),
        },
        'CNI request failed',
      );
      return errorReply(cniVersion, e);
    }
  }

  async #dispatch(p: Parsed, env: Readonly<Record<string, string>>): Promise<CniReply> {
    switch (p.command) {
      case 'ADD':
        return this.#add(p, env);
      case 'DEL':
        this.#del(p);
        return { exitCode: 0, stdout: '' };
      case 'CHECK':
      case 'GC':
      case 'STATUS':
        return { exitCode: 0, stdout: '' };
      case 'VERSION':
        return success({ cniVersion: '1.0.0', supportedVersions: CNI_SUPPORTED_VERSIONS });
      default:
        throw new CniError(CNI_ERR.invalidEnv, `unknown CNI_COMMAND ${JSON.stringify(p.command)}`);
    }
  }

  async #add(p: Parsed, env: Readonly<Record<string, string>>): Promise<CniReply> {
    // Not a Kubernetes pod (no K8S_POD_*): nothing ambpf could decide about.
    if (!p.pod) return passThrough(p);
    const started = performance.now();
    const what = `pod ${podKey(p.pod.namespace, p.pod.name)}`;
    const netnsPath = env['CNI_NETNS'];
    if (!netnsPath) throw new CniError(CNI_ERR.invalidEnv, 'CNI_NETNS is not set', what);
    const deadline = Date.now() + this.#timeoutMs;
    const pod = p.pod;
    const { namespace, name } = pod;
    const ips = prevResultIps(p.config['prevResult']);
    // Membership by the same rules as every pass, with the runtime's IPs. (A pod without IPs is no
    // member of anything: an unroutable stand-in lets the rules decide; an ambient pod without IPs is
    // refused below.)
    const judged = ips.length > 0 ? ips : ['0.0.0.0'];
    const decide = (): { uid: string; provisional: boolean } | undefined => {
      const known = this.#uidOf(namespace, name, pod.uid);
      if (known !== undefined) return { uid: known, provisional: false };
      // The source has not shown the pod yet (the watch lags, or the agent just restarted): its
      // namespace decides, its own labels are unknown. Ambient: captured now, provisionally, and
      // confirmed or released by the source later. Anything else is decided once the source shows
      // it. (Before the source's first snapshot, not even the namespace is known.)
      if (pod.uid === undefined || !this.#latest) return undefined;
      const candidate = { uid: pod.uid, namespace, name, ips: judged, seen: false };
      const overlaid = this.#overlay(this.#latest, new Map([[candidate.uid, candidate]]));
      return this.#isAmbient(candidate.uid, what, overlaid) ? { uid: candidate.uid, provisional: true } : undefined;
    };
    let decision = decide();
    if (decision === undefined) {
      this.#o.log.debug({ pod: podKey(namespace, name) }, 'CNI ADD waits for the pod to appear in the pod source');
      decision = await this.#waitFor(
        deadline,
        decide,
        () =>
          `${what} is not known to the agent's pod source after ${this.#timeoutMs} ms, and its namespace is not ` +
          'ambient (watch behind, or a pods file without it)',
      );
    }
    const { uid, provisional } = decision;
    if (!provisional && !this.#isAmbient(uid, what, this.#overlayOne(uid, judged))) return passThrough(p);
    if (ips.length === 0) {
      throw new CniError(
        CNI_ERR.invalidConfig,
        `${what} is ambient but prevResult names no IP`,
        "ambpf-cni must come after the plugin that assigns the pod's IPs",
      );
    }
    let cookie: bigint;
    try {
      cookie = netnsCookie(netnsPath);
    } catch (err) {
      throw new CniError(
        CNI_ERR.invalidEnv,
        `cannot open the network namespace CNI_NETNS=${netnsPath}`,
        describeError(err),
      );
    }
    if (!this.#o.handoff.ready) {
      throw new CniError(
        CNI_ERR.tryAgainLater,
        `no ztunnel is connected to the agent on this node; ${what} would start outside the mesh`,
        'the runtime retries the sandbox; check the ztunnel pod of this node',
      );
    }
    const decided = performance.now();
    // Persisted before anything is armed: an agent that dies from here on finds the pod at restart.
    this.#pods.set(uid, {
      uid,
      namespace,
      name,
      netnsPath,
      netnsCookie: cookie,
      ips,
      containerId: env['CNI_CONTAINERID'] ?? '',
      since: Date.now(),
      seen: !provisional,
    });
    this.#persist();
    let armed = decided;
    try {
      // A pod the pass could not arm (its netns not usable) would only time out below: say why now.
      const armError = (await this.#pass())?.errors.find((e) => e.includes(`${what}:`));
      if (armError) throw new CniError(CNI_ERR.tryAgainLater, `${what}: the agent could not capture it`, armError);
      armed = performance.now();
      await this.#waitFor(
        deadline,
        () => (this.#o.handoff.served(uid, cookie) ? true : undefined),
        () => {
          const why = this.#o.handoff.ready ? 'ztunnel did not ack it' : 'ztunnel disconnected';
          return `${what}: ${why} within ${this.#timeoutMs} ms; the runtime retries the sandbox`;
        },
      );
    } catch (err) {
      // Nothing is left half-added: the pod's capture goes with the next pass.
      this.#pods.delete(uid);
      this.#persist();
      void this.#pass().catch(() => undefined);
      throw err;
    }
    const ms = (t: number): number => Math.round(t * 10) / 10;
    this.#o.log.info(
      {
        pod: podKey(namespace, name),
        uid,
        provisional,
        phases: { decide: ms(decided - started), arm: ms(armed - decided), ack: ms(performance.now() - armed) },
      },
      provisional
        ? 'CNI ADD: captured provisionally (not in the pod source yet) and acked by ztunnel'
        : 'CNI ADD: captured and acked by ztunnel',
    );
    return passThrough(p);
  }

  /** Whether the pod is a mesh pod in this snapshot; a problem with it (an IP clash) is an error 7. */
  #isAmbient(uid: string, what: string, snapshot: ClusterSnapshot): boolean {
    const desired = computeDesiredState(snapshot, this.#o.node);
    const problem = desired.problems.find((pr) => pr.object === what);
    if (problem) throw new CniError(CNI_ERR.invalidConfig, `${what}: ${problem.reason}`);
    return desired.ambientPods.some((d) => d.uid === uid);
  }

  #del(p: Parsed): void {
    // The sandbox's entry: by the pod's uid, else (no K8S_POD_UID) by its container id or its name.
    const entries = [...this.#pods.values()];
    const held =
      p.pod?.uid !== undefined
        ? this.#pods.get(p.pod.uid)
        : (entries.find((e) => p.containerId !== '' && e.containerId === p.containerId) ??
          entries.find((e) => p.pod !== undefined && e.namespace === p.pod.namespace && e.name === p.pod.name));
    // A late or repeated DEL of an older sandbox must not drop the current one's entry.
    if (!held || (p.containerId !== '' && held.containerId !== '' && held.containerId !== p.containerId)) return;
    this.#pods.delete(held.uid);
    this.#persist();
    // Released by the next pass (the pod has no IPs of its own in the source yet, or its netns is
    // gone); DEL does not wait for it: the runtime removes the netns next.
    void this.#pass().catch((err: unknown) =>
      this.#o.log.warn({ err: describeError(err) }, 'pass after CNI DEL failed'),
    );
  }

  #pass(): Promise<{ readonly errors: readonly string[] } | undefined> {
    return this.#latest ? this.#o.reconcile(this.#overlay(this.#latest)) : Promise.resolve(undefined);
  }

  /** The latest snapshot with only this pod's IPs filled in (ADD has not committed to it yet). */
  #overlayOne(uid: string, ips: readonly string[]): ClusterSnapshot {
    const one = { uid, namespace: '', name: '', ips, seen: true };
    return this.#overlay(this.#latest ?? { pods: [], namespaces: [] }, new Map([[uid, one]]));
  }

  /** The uid of the pod the source knows under this name (and uid, if the runtime gave one). */
  #uidOf(namespace: string, name: string, uid: string | undefined): string | undefined {
    for (const obj of this.#latest?.pods ?? []) {
      const m = metaOf(obj);
      if (m.namespace !== namespace || m.name !== name || typeof m.uid !== 'string') continue;
      if (uid === undefined || m.uid === uid) return m.uid;
    }
    return undefined;
  }

  /** Resolves with check()'s value once defined; rejects with a try-again CniError at the deadline. */
  #waitFor<T>(deadline: number, check: () => T | undefined, why: () => string): Promise<T> {
    const first = check();
    if (first !== undefined) return Promise.resolve(first);
    return new Promise<T>((resolve, reject) => {
      const done = (): void => {
        this.#waiters.delete(retry);
        clearTimeout(timer);
        clearInterval(poll);
      };
      const retry = (): void => {
        let v: T | undefined;
        try {
          v = check();
        } catch (err) {
          done();
          reject(err);
          return;
        }
        if (v === undefined) return;
        done();
        resolve(v);
      };
      this.#waiters.add(retry);
      // Wakes come with every snapshot and ZDS change; the poll only covers a missed one.
      const poll = setInterval(retry, 200);
      const timer = setTimeout(
        () => {
          done();
          reject(new CniError(CNI_ERR.tryAgainLater, why()));
        },
        Math.max(0, deadline - Date.now()),
      );
    });
  }
}
