// Which ZDS request does what: the stand-in's copy of ztunnel's in-pod workload manager
// (src/inpod/statemanager.rs WorkloadProxyManagerState and src/inpod/workloadmanager.rs
// WorkloadProxyManagerProcessor in istio/ztunnel). No sockets here: proxies come from a factory, so the
// rules are unit-tested with a fake one (test/testbed/ztunnel-workloads.test.ts).
//
// Netns fds: every fd handed to handle() becomes the manager's. It keeps the fd of a running proxy
// (the proxy makes its upstream sockets in that netns) and of a pending one (for the retry), and
// closes it when the proxy has drained, the pending entry is dropped, or the fd was not needed.
import type { ZdsRequest, ZdsVerdict, WorkloadInfo } from './zds-types.ts';

/** src/inpod/workloadmanager.rs RETRY_DURATION: a proxy that failed to start is retried every 5 s. */
export const PROXY_RETRY_MS = 5000;

export type DrainMode = 'immediate' | 'graceful';

export interface RunningProxy {
  drain(mode: DrainMode): Promise<void>;
}

export interface ProxyFactory {
  /** Opens the workload's listeners inside the netns of fd; throws when it cannot (the fd stays ours). */
  start(uid: string, info: WorkloadInfo, netnsFd: number): Promise<RunningProxy>;
}

export interface NetnsOps {
  /** The netns identity behind a fd (ztunnel's NetnsID: inode and device, src/inpod/netns.rs). */
  id(fd: number): string;
  close(fd: number): void;
}

export interface Timers {
  /** Runs fn once after ms (its promise is for a fake clock to await); the returned function cancels it. */
  after(ms: number, fn: () => Promise<void>): () => void;
}

const realTimers: Timers = {
  after(ms, fn) {
    const t = setTimeout(() => void fn(), ms);
    return () => clearTimeout(t);
  },
};

interface Netns {
  readonly fd: number;
  readonly id: string;
}

interface Running {
  readonly info: WorkloadInfo;
  readonly netns: Netns;
  readonly proxy: RunningProxy;
}

interface Pending {
  readonly info: WorkloadInfo;
  readonly netns: Netns;
}

export interface ManagerState {
  readonly connected: boolean;
  readonly snapshotReceived: boolean;
  readonly ready: boolean;
  readonly workloads: readonly {
    readonly uid: string;
    readonly name: string;
    readonly namespace: string;
    readonly netns: string;
  }[];
  readonly pending: readonly string[];
}

export interface ManagerOptions {
  readonly factory: ProxyFactory;
  readonly netns: NetnsOps;
  readonly timers?: Timers;
  readonly retryMs?: number;
  /** Log lines of the manager's decisions (pending, retries, drains). */
  readonly log?: (msg: string, fields?: Record<string, unknown>) => void;
  /** After every change of state (the stand-in rewrites its state file). */
  readonly onChange?: (s: ManagerState) => void;
}

/** Thrown by the factory wrapper when a proxy cannot start (ztunnel's Error::ProxyError). */
class ProxyStartError extends Error {}

export class WorkloadManager {
  readonly #factory: ProxyFactory;
  readonly #netns: NetnsOps;
  readonly #timers: Timers;
  readonly #retryMs: number;
  readonly #log: (msg: string, fields?: Record<string, unknown>) => void;
  readonly #onChange: ((s: ManagerState) => void) | undefined;

  readonly #running = new Map<string, Running>();
  readonly #pending = new Map<string, Pending>();
  readonly #draining = new Set<Promise<void>>();
  #snapshotReceived = false;
  readonly #snapshotNames = new Set<string>();
  #connected = false;
  /** ztunnel's readiness "block": set and cleared only where workloadmanager.rs does. */
  #ready = false;
  #cancelRetry: (() => void) | undefined;
  /** Requests and retries run one at a time, as ztunnel's single processing loop does. */
  #chain: Promise<unknown> = Promise.resolve();

  constructor(opts: ManagerOptions) {
    this.#factory = opts.factory;
    this.#netns = opts.netns;
    this.#timers = opts.timers ?? realTimers;
    this.#retryMs = opts.retryMs ?? PROXY_RETRY_MS;
    this.#log = opts.log ?? (() => undefined);
    this.#onChange = opts.onChange;
  }

  get ready(): boolean {
    return this.#ready;
  }

  state(): ManagerState {
    return {
      connected: this.#connected,
      snapshotReceived: this.#snapshotReceived,
      ready: this.#ready,
      workloads: [...this.#running].map(([uid, r]) => ({
        uid,
        name: r.info.name,
        namespace: r.info.namespace,
        netns: r.netns.id,
      })),
      pending: [...this.#pending.keys()],
    };
  }

  #changed(): void {
    this.#onChange?.(this.state());
  }

  #serial<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.#chain.then(fn, fn);
    this.#chain = next.catch(() => undefined);
    return next;
  }

  /** A new ZDS connection (WorkloadProxyManagerProcessor::new -> reset_snapshot). */
  connected(): void {
    this.#stopRetry();
    this.#snapshotNames.clear();
    for (const p of this.#pending.values()) this.#netns.close(p.netns.fd);
    this.#pending.clear();
    this.#snapshotReceived = false;
    this.#connected = true;
    this.#changed();
  }

  /** The connection ended (EOF or error): not ready; running proxies stay (workloadmanager.rs run_internal). */
  disconnected(): void {
    this.#stopRetry();
    this.#connected = false;
    this.#ready = false;
    this.#changed();
  }

  handle(req: ZdsRequest): Promise<ZdsVerdict> {
    return this.#serial(async () => {
      const v = await this.#process(req);
      if ('exit' in v) this.#ready = false;
      this.#changed();
      return v;
    });
  }

  async #process(req: ZdsRequest): Promise<ZdsVerdict> {
    switch (req.kind) {
      case 'add': {
        // src/inpod/protocol.rs get_workload_data: Add without exactly one fd is a read error: nack and
        // reconnect. The fds are dropped.
        if (req.fdCount !== 1 || req.netnsFd === undefined) {
          if (req.netnsFd !== undefined) this.#netns.close(req.netnsFd);
          return { reconnect: req.fdCount === 0 ? 'No control message' : `Expected 1 FD, got ${req.fdCount}` };
        }
        // statemanager.rs process_msg: workload_info is required; its absence is a protocol error (exit).
        if (req.info === undefined) {
          this.#netns.close(req.netnsFd);
          return { exit: 'workload_info is required but not present' };
        }
        if (!this.#snapshotReceived) this.#snapshotNames.add(req.uid);
        let netns: Netns;
        try {
          netns = { fd: req.netnsFd, id: this.#netns.id(req.netnsFd) };
        } catch (e) {
          this.#netns.close(req.netnsFd);
          this.#scheduleRetry();
          return { ack: `failure to start proxy: ${(e as Error).message}` };
        }
        try {
          await this.#addWorkload(req.uid, req.info, netns);
        } catch (e) {
          if (!(e instanceof ProxyStartError)) throw e;
          this.#scheduleRetry();
          return { ack: `failure to start proxy: ${e.message}` };
        }
        this.#checkReady();
        return { ack: '' };
      }
      case 'keep':
        if (this.#snapshotReceived) return { exit: 'pod keep received after snapshot' };
        this.#snapshotNames.add(req.uid);
        this.#checkReady();
        return { ack: '' };
      case 'del':
        if (!this.#snapshotReceived) {
          // Before the snapshot a Del only takes the pod out of it; reconcile drops the proxy.
          this.#snapshotNames.delete(req.uid);
          this.#dropPending(req.uid);
        } else {
          this.#delWorkload(req.uid);
        }
        this.#checkReady();
        return { ack: '' };
      case 'snapshot-sent':
        if (this.#snapshotReceived) return { exit: 'pod snapshot received already' };
        this.#reconcile();
        this.#snapshotReceived = true;
        this.#checkReady();
        return { ack: '' };
    }
  }

  /** statemanager.rs add_workload: idempotent for the same netns, replaces the proxy for a new one. */
  async #addWorkload(uid: string, info: WorkloadInfo, netns: Netns): Promise<void> {
    const existing = this.#running.get(uid);
    if (existing && existing.netns.id === netns.id) {
      this.#dropPending(uid, netns.fd);
      if (existing.netns.fd !== netns.fd) this.#netns.close(netns.fd);
      return;
    }
    if (existing) {
      this.#log('new netns for a running workload: replacing its proxy', {
        uid,
        old: existing.netns.id,
        new: netns.id,
      });
      this.#delWorkload(uid);
    }
    let proxy: RunningProxy;
    try {
      proxy = await this.#factory.start(uid, info, netns.fd);
    } catch (e) {
      const old = this.#pending.get(uid);
      if (old && old.netns.fd !== netns.fd) this.#netns.close(old.netns.fd);
      this.#pending.set(uid, { info, netns });
      this.#log('proxy failed to start: pending', { uid, err: (e as Error).message });
      throw new ProxyStartError((e as Error).message);
    }
    this.#dropPending(uid, netns.fd);
    this.#running.set(uid, { info, netns, proxy });
  }

  /** Forgets a pending entry, closing its fd unless it is `keep` (about to be used). */
  #dropPending(uid: string, keep?: number): void {
    const p = this.#pending.get(uid);
    if (!p) return;
    this.#pending.delete(uid);
    if (p.netns.fd !== keep) this.#netns.close(p.netns.fd);
  }

  /** statemanager.rs del_workload: the proxy is drained at once (DrainMode::Immediate). */
  #delWorkload(uid: string): void {
    this.#dropPending(uid);
    const r = this.#running.get(uid);
    if (!r) return;
    this.#running.delete(uid);
    this.#drain(uid, r, 'immediate');
  }

  #drain(uid: string, r: Running, mode: DrainMode): Promise<void> {
    this.#log('draining proxy', { uid, mode });
    const p = r.proxy
      .drain(mode)
      .catch((e: unknown) => this.#log('drain failed', { uid, err: (e as Error).message }))
      .finally(() => {
        this.#netns.close(r.netns.fd);
        this.#draining.delete(p);
      });
    this.#draining.add(p);
    return p;
  }

  /** statemanager.rs reconcile: proxies the snapshot did not name are drained. */
  #reconcile(): void {
    for (const [uid, r] of [...this.#running]) {
      if (this.#snapshotNames.has(uid)) continue;
      this.#running.delete(uid);
      this.#drain(uid, r, 'immediate');
    }
    this.#snapshotNames.clear();
  }

  #checkReady(): void {
    this.#ready = this.#snapshotReceived && this.#pending.size === 0;
  }

  #scheduleRetry(): void {
    if (this.#cancelRetry) return;
    this.#log('scheduling retry', { uids: [...this.#pending.keys()] });
    this.#cancelRetry = this.#timers.after(this.#retryMs, () => {
      this.#cancelRetry = undefined;
      return this.#serial(() => this.retryPending());
    });
  }

  #stopRetry(): void {
    this.#cancelRetry?.();
    this.#cancelRetry = undefined;
  }

  /** workloadmanager.rs retry_proxies: every pending proxy once; reschedule while any stays pending. */
  async retryPending(): Promise<void> {
    const pending = [...this.#pending];
    this.#pending.clear();
    for (const [uid, p] of pending) {
      this.#log('retrying workload', { uid });
      try {
        await this.#addWorkload(uid, p.info, p.netns);
      } catch (e) {
        if (!(e instanceof ProxyStartError)) throw e;
      }
    }
    if (this.#pending.size > 0) this.#scheduleRetry();
    else {
      this.#stopRetry();
      this.#checkReady();
    }
    this.#changed();
  }

  /** SIGTERM: every proxy drains gracefully, and the ones already draining finish (statemanager.rs drain). */
  async drainAll(): Promise<void> {
    this.#stopRetry();
    this.#ready = false;
    const running = [...this.#running];
    this.#running.clear();
    await Promise.all(running.map(([uid, r]) => this.#drain(uid, r, 'graceful')));
    await Promise.all([...this.#draining]);
    for (const p of this.#pending.values()) this.#netns.close(p.netns.fd);
    this.#pending.clear();
    this.#changed();
  }
}
