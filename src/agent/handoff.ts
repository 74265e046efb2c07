// The node agent's half of ZDS: hands every armed pod to ztunnel and takes back the ones that leave.
// The reconciler arms a pod (eBPF capture in place, traffic refused until ztunnel listens) and calls
// sync() after each pass; this module then:
//  - on each ztunnel connection, sends the snapshot of armed pods (Add with the pod's netns, or Keep
//    for a pod whose netns cannot be opened now), then SnapshotSent (src/zds/server.ts does the
//    exchange; istio-cni's order: cni/pkg/nodeagent/ztunnelserver.go);
//  - Adds a newly armed pod to the newest connection, Dels a released one to all of them;
//  - keeps each pod's state (pending, acked, nacked with ztunnel's error, no ztunnel) for status, and
//    retries a nacked or timed-out Add with backoff (1 s doubling to 30 s) without holding up others;
//  - tells the reconciler when a pod was acked, so the next pass registers its listeners.
// Nothing here touches the kernel: the capture stays armed whatever ztunnel does (fail closed).
import { existsSync } from 'node:fs';
import type { Logger } from 'pino';
import type { ResolvedPod } from '../node/discovery.ts';
import type { ZtunnelHandoff } from '../reconcile/topology-inpod.ts';
import {
  ZdsError,
  ZdsNoPeerError,
  ZdsServer,
  type SnapshotItem,
  type WorkloadInfo,
  type ZdsPeer,
} from '../zds/index.ts';
import { describeError } from '../errors.ts';
import type { PodAnnotator } from './annotate.ts';
import { ZtunnelCgroupWatch, type ZtunnelCgroupCheck, type ZtunnelCgroupWatchOptions } from './ztunnel-cgroup.ts';

export type HandoffState = 'pending' | 'acked' | 'nacked' | 'no-ztunnel';

/** One pod's ZDS state, as `ambpf pods` and `ambpf status` show it. */
export interface PodHandoffStatus {
  readonly uid: string;
  readonly namespace: string;
  readonly name: string;
  readonly state: HandoffState;
  /** ztunnel's nack text, or why the last Add failed. */
  readonly error: string | undefined;
  readonly attempts: number;
  /** ms since the epoch of the last state change. */
  readonly since: number;
}

/** A desired pod as discovery resolved it, with the service account ztunnel's WorkloadInfo carries. */
type HandoffPod = ResolvedPod & { readonly serviceAccount?: string };

interface Entry {
  pod: HandoffPod;
  state: HandoffState;
  error: string | undefined;
  attempts: number;
  since: number;
  /** The netns cookie ztunnel acked; a re-created sandbox (new cookie) is added again. */
  servedCookie: bigint | undefined;
  inflight: boolean;
  /** ztunnel acked this pod at least once (its annotation stays `enabled` through ztunnel restarts). */
  everAcked: boolean;
  retryAt: number;
  backoffMs: number;
}

export const RETRY_MIN_MS = 1000;
export const RETRY_MAX_MS = 30_000;

export interface HandoffOptions {
  readonly socketPath: string;
  readonly log: Logger;
  /** A pod became served (or stopped being served): time for a reconcile pass (of that pod). */
  readonly onChange: (uid: string) => void;
  /** A ztunnel took its snapshot: its listeners may be new in every pod (a restart, a rolling upgrade),
   * so the pass re-reads them all. */
  readonly onPeer?: () => void;
  /** A ztunnel left while another stays (a rolling upgrade): the old one's listeners close in every
   * pod, so a full pass looks for them (its pods' state did not change: no onChange). */
  readonly onPeerGone?: () => void;
  readonly ackTimeoutMs?: number;
  /** With an API server: `ambient.istio.io/redirection` on each pod (istiod sends HBONE only to
   * pods marked `enabled`). */
  readonly annotator?: PodAnnotator;
  /** The cgroup the programs are attached to: each connected ztunnel must run inside it
   * (src/agent/ztunnel-cgroup.ts); its report file, beside the state file. */
  readonly cgroup?: Omit<ZtunnelCgroupWatchOptions, 'log'>;
}

/**
 * How long after start a pod not yet served is left as the API server shows it: a restarted agent
 * finds pods ztunnel still serves (its proxies survive) marked `enabled`, and flipping them to
 * `pending` until the new snapshot would make istiod tell their peers to send plaintext meanwhile.
 */
export const ANNOTATION_GRACE_MS = 30_000;

const infoOf = (p: HandoffPod): WorkloadInfo => ({
  name: p.name,
  namespace: p.namespace,
  // Kubernetes' own default when spec.serviceAccountName is empty.
  serviceAccount: p.serviceAccount ?? 'default',
});

export class ZdsHandoff implements ZtunnelHandoff {
  readonly #server: ZdsServer;
  readonly #o: HandoffOptions;
  readonly #pods = new Map<string, Entry>();
  #timer: NodeJS.Timeout | undefined;
  #closed = false;
  readonly #startedAt = Date.now();
  /** Resolved by the first sync(): a snapshot before it would be empty, and ztunnel drains every pod a
   * snapshot does not name (an agent restart would drop all of them). istio-cni likewise loads its
   * pods before it starts serving. */
  readonly #firstSync = Promise.withResolvers<void>();
  /** uid -> netns cookie of each Add in the snapshot being sent (what #onPeer may mark served). */
  #inSnapshot = new Map<string, bigint>();
  /** A ztunnel took a snapshot from this agent at least once. */
  #sawPeer = false;
  /** When a ztunnel last connected or left (ms since the epoch). */
  #peersChangedAt: number | undefined;
  readonly #cgroups: ZtunnelCgroupWatch | undefined;

  private constructor(server: ZdsServer, o: HandoffOptions) {
    this.#server = server;
    this.#o = o;
    this.#cgroups = o.cgroup ? new ZtunnelCgroupWatch({ ...o.cgroup, log: o.log }) : undefined;
  }

  static async start(o: HandoffOptions): Promise<ZdsHandoff> {
    let self: ZdsHandoff | undefined;
    let release: () => void = () => undefined;
    const firstSync = new Promise<void>((resolve) => {
      release = resolve;
    });
    const server = await ZdsServer.listen({
      path: o.socketPath,
      log: o.log,
      ackTimeoutMs: o.ackTimeoutMs,
      snapshot: async () => {
        await firstSync;
        return self ? self.#snapshot() : [];
      },
    });
    self = new ZdsHandoff(server, o);
    self.#firstSync.promise.then(release, release);
    server.on('peer', (peer: ZdsPeer) => self.#onPeer(peer));
    server.on('peer-gone', (peer: ZdsPeer, err: ZdsError | undefined) => self.#onPeerGone(peer, err));
    server.on('snapshot-failed', (peer: ZdsPeer, err: ZdsError) => {
      o.log.warn({ peer: peer.pid, err: describeError(err) }, 'ztunnel snapshot failed');
    });
    return self;
  }

  /** At least one ztunnel connected and took its snapshot. */
  get ready(): boolean {
    return this.#server.ready;
  }

  /** Why ztunnel cannot connect to this agent now (its ZDS server is down), or undefined. */
  serverProblem(): string | undefined {
    return this.#server.problem();
  }

  peers(): readonly ZdsPeer[] {
    return this.#server.peers();
  }

  served(uid: string, netnsCookie: bigint): boolean {
    const e = this.#pods.get(uid);
    return e !== undefined && e.state === 'acked' && e.servedCookie === netnsCookie;
  }

  peerPids(): readonly number[] {
    return this.#server.peers().flatMap((p) => (p.pid === undefined ? [] : [p.pid]));
  }

  /** Each connected ztunnel's cgroup against the attach cgroup (empty without the `cgroup` option). */
  ztunnelCgroups(): readonly ZtunnelCgroupCheck[] {
    return this.#cgroups?.current() ?? [];
  }

  status(): PodHandoffStatus[] {
    return [...this.#pods.values()].map((e) => ({
      uid: e.pod.uid,
      namespace: e.pod.namespace,
      name: e.pod.name,
      state: e.state,
      error: e.error,
      attempts: e.attempts,
      since: e.since,
    }));
  }

  peersChangedAt(): number | undefined {
    return this.#peersChangedAt;
  }

  sync(armed: readonly ResolvedPod[], scope?: ReadonlySet<string>): void {
    if (this.#closed) return;
    this.#firstSync.resolve();
    const want = new Map(armed.map((p) => [p.uid, p as HandoffPod]));
    // A scoped pass (src/reconcile/reconciler.ts) speaks for its pods only; the others stay as they are.
    for (const uid of scope ?? [...this.#pods.keys()]) {
      const e = this.#pods.get(uid);
      if (!e || want.has(uid)) continue;
      this.#pods.delete(uid);
      this.#o.annotator?.set(e.pod, null);
      void this.#del(uid, e.pod);
    }
    for (const pod of want.values()) {
      const e = this.#pods.get(pod.uid);
      if (e && e.pod.netnsCookie === pod.netnsCookie) {
        const info = infoOf(e.pod);
        const same = infoOf(pod);
        if (
          (e.state !== 'acked' && !e.inflight) ||
          (info.name === same.name && info.namespace === same.namespace && info.serviceAccount === same.serviceAccount)
        ) {
          e.pod = pod;
          continue;
        }
        // ztunnel keeps the WorkloadInfo of its first Add for a netns (another Add is a no-op) and
        // finds the pod's identity by it: a pod CNI ADD armed before the watch showed it went out
        // with the default service account. Del (queued first), then Add again.
        void this.#del(pod.uid, e.pod);
      }
      // New, or its sandbox was re-created (new netns): ztunnel replaces the proxy on a new inode.
      this.#pods.set(pod.uid, {
        pod,
        state: this.#server.ready ? 'pending' : 'no-ztunnel',
        error: undefined,
        attempts: 0,
        since: Date.now(),
        servedCookie: undefined,
        inflight: false,
        everAcked: false,
        retryAt: 0,
        backoffMs: RETRY_MIN_MS,
      });
      this.#annotate(this.#pods.get(pod.uid)!);
    }
    this.#pump();
  }

  async close(): Promise<void> {
    this.#closed = true;
    if (this.#timer) clearTimeout(this.#timer);
    await this.#server.close();
  }

  #set(e: Entry, state: HandoffState, error?: string): void {
    if (e.state !== state || e.error !== error) e.since = Date.now();
    const changed = e.state !== state || e.error !== error;
    if (state === 'acked') e.everAcked = true;
    e.state = state;
    e.error = error;
    if (state !== 'acked') e.servedCookie = undefined;
    // A pass registers a served pod's listeners and writes every state to the state file.
    if (changed) {
      this.#annotate(e);
      this.#o.onChange(e.pod.uid);
    }
  }

  /**
   * `enabled` once ztunnel acked; `pending` for a pod ztunnel has never taken from this agent, but
   * only once a ztunnel connected or the start-up grace passed (ANNOTATION_GRACE_MS). A pod that was
   * served and lost its ztunnel keeps `enabled`: its traffic is refused until ztunnel is back either
   * way, and flipping every pod of the node at each ztunnel restart would churn istiod.
   */
  #annotate(e: Entry): void {
    const a = this.#o.annotator;
    if (!a) return;
    if (e.state === 'acked') {
      a.set(e.pod, 'enabled');
      return;
    }
    if (e.everAcked) return;
    if (this.#sawPeer || Date.now() - this.#startedAt > ANNOTATION_GRACE_MS) a.set(e.pod, 'pending');
  }

  /** What a new ztunnel connection gets: every armed pod; Keep for one whose netns is gone for now. */
  #snapshot(): SnapshotItem[] {
    const items: SnapshotItem[] = [];
    this.#inSnapshot = new Map();
    for (const e of this.#pods.values()) {
      const { pod } = e;
      if (existsSync(pod.netnsPath)) {
        items.push({ kind: 'add', uid: pod.uid, info: infoOf(pod), netnsPath: pod.netnsPath });
        this.#inSnapshot.set(pod.uid, pod.netnsCookie);
      } else {
        items.push({ kind: 'keep', uid: pod.uid });
      }
    }
    return items;
  }

  /** A ztunnel took its snapshot: every pod in it is served by that ztunnel now. */
  #onPeer(peer: ZdsPeer): void {
    this.#sawPeer = true;
    this.#peersChangedAt = Date.now();
    this.#cgroups?.update(this.peerPids());
    this.#o.log.info({ peer: peer.pid, pods: this.#pods.size }, 'ztunnel connected and took the snapshot');
    // Only what went out in that snapshot, for the sandbox it named: a pod armed (or re-created)
    // while the snapshot was on its way gets its own Add from #pump. (A snapshot Add ztunnel nacked is
    // logged by the server and counted served here; ztunnel retries it by itself every 5 s.)
    for (const e of this.#pods.values()) {
      if (this.#inSnapshot.get(e.pod.uid) !== e.pod.netnsCookie) continue;
      e.servedCookie = e.pod.netnsCookie;
      e.attempts++;
      this.#set(e, 'acked');
    }
    this.#o.onPeer?.();
    this.#pump();
  }

  #onPeerGone(peer: ZdsPeer, err: ZdsError | undefined): void {
    this.#o.log.warn({ peer: peer.pid, err: err ? describeError(err) : undefined }, 'ztunnel disconnected');
    this.#peersChangedAt = Date.now();
    // An agent stopping keeps the last report: ztunnel outlives it, and so does what was wrong with it.
    if (!this.#closed) this.#cgroups?.update(this.peerPids());
    if (this.#server.ready) {
      this.#o.onPeerGone?.();
      return;
    }
    // No ztunnel left: the captures stay armed, so the pods' traffic is refused until one comes back
    // and takes the snapshot (fail closed).
    for (const e of this.#pods.values()) this.#set(e, 'no-ztunnel', err ? describeError(err) : 'ztunnel disconnected');
  }

  #pump(): void {
    if (this.#closed || !this.#server.ready) return;
    const now = Date.now();
    let next = Infinity;
    for (const e of this.#pods.values()) {
      if (e.state === 'acked' || e.inflight) continue;
      if (e.retryAt > now) {
        next = Math.min(next, e.retryAt);
        continue;
      }
      void this.#add(e);
    }
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = next === Infinity ? undefined : setTimeout(() => this.#pump(), next - now);
    this.#timer?.unref();
  }

  async #add(e: Entry): Promise<void> {
    const { pod } = e;
    e.inflight = true;
    e.attempts++;
    if (e.state !== 'pending') this.#set(e, 'pending', e.error);
    try {
      await this.#server.add(pod.uid, infoOf(pod), pod.netnsPath);
      if (this.#pods.get(pod.uid) !== e) return; // released meanwhile: its Del went out
      e.backoffMs = RETRY_MIN_MS;
      e.servedCookie = pod.netnsCookie;
      this.#set(e, 'acked');
      this.#o.log.info({ pod: `${pod.namespace}/${pod.name}`, uid: pod.uid }, 'ztunnel took the pod');
    } catch (err) {
      if (this.#pods.get(pod.uid) !== e) return;
      const text = describeError(err);
      if (err instanceof ZdsNoPeerError) {
        this.#set(e, 'no-ztunnel', text);
      } else {
        e.retryAt = Date.now() + e.backoffMs;
        e.backoffMs = Math.min(e.backoffMs * 2, RETRY_MAX_MS);
        this.#set(e, 'nacked', text);
        this.#o.log.warn(
          { pod: `${pod.namespace}/${pod.name}`, uid: pod.uid, err: text, retryInMs: e.retryAt - Date.now() },
          'ztunnel did not take the pod; its traffic stays refused, retrying',
        );
      }
    } finally {
      e.inflight = false;
      this.#pump();
    }
  }

  async #del(uid: string, pod: HandoffPod): Promise<void> {
    if (this.#server.peers().length === 0) return;
    const results = await this.#server.del(uid);
    for (const r of results) {
      if (r.error)
        this.#o.log.warn(
          { pod: `${pod.namespace}/${pod.name}`, uid, err: describeError(r.error) },
          'ztunnel did not ack the Del',
        );
    }
    this.#o.log.info({ pod: `${pod.namespace}/${pod.name}`, uid }, 'ztunnel released the pod');
  }
}
