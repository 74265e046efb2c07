// The baseline's node agent: what istio-cni's node agent does for ambient pods, with Istio's own rules
// (iptables or native nftables), so the benchmark's Istio paths run the real ztunnel contract
// (ZDS, spoofed inbound legs, the connmark return path) and not a shortcut.
// For each mesh pod of its node (pods file -> src/state/desired.ts, the same decision ambpf makes):
//  1. finds the pod's netns from its cgroup (src/node/discovery.ts, istio-cni's /proc scan);
//  2. installs the in-pod rules there (src/baseline/inpod.ts; Istio's golden rules, complete);
//  3. hands the pod to ztunnel over ZDS (src/agent/handoff.ts: snapshot on connect, Add, Del), and
//     once ztunnel acked, adds its IPs to the node's probe set (istio-cni's order: meshdataplane_linux.go);
// and when a pod leaves: probe set entry first, then its rules (if its netns still exists), then Del.
// At start it installs the node's probe SNAT in its own netns (the node's). On SIGTERM it removes
// everything it installed (the testbed's path goes away with it) unless --keep-rules (an upgrade).
//
//   node src/baseline/agent.ts --node N --pods-file F --rules iptables|nftables
//        [--zds-socket PATH|none] [--state-file F] [--no-dns-capture] [--no-ipv6] [--kubelet-uid N] [--keep-rules]
import { existsSync, renameSync, writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { ZdsHandoff, type PodHandoffStatus } from '../agent/handoff.ts';
import { describeError, UsageError } from '../errors.ts';
import { logger, type Logger } from '../log.ts';
import { resolveNode, type ResolvedPod } from '../node/discovery.ts';
import { createPodsFileSource } from '../sources/pods-file.ts';
import type { ClusterSnapshot, PodSource } from '../sources/types.ts';
import { computeDesiredState, type Problem } from '../state/desired.ts';
import { inpodNodeRules, inpodPodRules, loopbackIpv6, updateProbeSet } from './inpod.ts';
import { BACKENDS, ISTIO_DEFAULTS, podOverrides, type Backend, type IstioConfig } from './istio-rules.ts';
import { install, nftTables, remove, type NetnsRules } from './ruleset.ts';

/** A pod whose rules are in, as the agent tracks it. */
interface PodEntry {
  readonly pod: ResolvedPod;
  readonly rules: NetnsRules;
  /** nf_tables tables of its netns before install (undefined: unknown, leftovers were cleaned first). */
  readonly tablesBefore: readonly string[] | undefined;
  /** Its IPs are in the node's probe set. */
  probe: boolean;
}

export interface BaselineAgentOptions {
  readonly node: string;
  readonly source: PodSource;
  readonly backend: Backend;
  readonly cfg: IstioConfig;
  /** ZDS socket ztunnel connects to; undefined = no ZDS (ztunnel finds its pods by itself). */
  readonly zdsSocket: string | undefined;
  /** The node's netns (where the probe SNAT goes): the agent's own. */
  readonly nodeNetns: string;
  readonly stateFile?: string;
  readonly log: Logger;
  /** Retry delay for pods not resolved or not captured yet (default 500 ms). */
  readonly retryMs?: number;
}

/** What the state file holds (tests and the bench read it). */
export interface BaselineAgentState {
  readonly node: string;
  readonly backend: Backend;
  readonly pid: number;
  /** The first pass ran and every mesh pod of the node has its rules. */
  readonly ready: boolean;
  readonly zds: { readonly socket: string | undefined; readonly ready: boolean; readonly peers: readonly number[] };
  readonly pods: readonly {
    readonly uid: string;
    readonly namespace: string;
    readonly name: string;
    readonly ips: readonly string[];
    readonly netnsPath: string;
    readonly probe: boolean;
    readonly zds: PodHandoffStatus['state'] | 'no-zds';
  }[];
  /** Mesh pods without rules yet, and why. */
  readonly pending: readonly Problem[];
}

/** Per pod UID, its annotations (the desired state drops them; istio-cni's per-pod overrides live there). */
function podAnnotations(snapshot: ClusterSnapshot): Map<string, Record<string, string>> {
  const out = new Map<string, Record<string, string>>();
  for (const p of snapshot.pods) {
    const md = p.metadata;
    if (typeof md?.uid !== 'string') continue;
    const annotations: Record<string, string> = {};
    if (md.annotations && typeof md.annotations === 'object') {
      for (const [k, v] of Object.entries(md.annotations)) if (typeof v === 'string') annotations[k] = v;
    }
    out.set(md.uid, annotations);
  }
  return out;
}

export class BaselineAgent {
  readonly #o: BaselineAgentOptions;
  readonly #log: Logger;
  readonly #pods = new Map<string, PodEntry>();
  #handoff: ZdsHandoff | undefined;
  #host: { rules: NetnsRules; tablesBefore: readonly string[] | undefined } | undefined;
  #snapshot: ClusterSnapshot | undefined;
  #pending: Problem[] = [];
  #passes = 0;
  #running: Promise<void> = Promise.resolve();
  #queued = false;
  #retry: NodeJS.Timeout | undefined;
  #stopped = false;

  private constructor(o: BaselineAgentOptions) {
    this.#o = o;
    this.#log = o.log;
  }

  static async start(o: BaselineAgentOptions): Promise<BaselineAgent> {
    const agent = new BaselineAgent(o);
    agent.#host = await agent.#installCleanly(inpodNodeRules(o.nodeNetns, [], o.backend, o.cfg), true);
    o.log.info({ backend: o.backend, netns: o.nodeNetns }, 'node probe SNAT installed');
    if (o.zdsSocket !== undefined) {
      agent.#handoff = await ZdsHandoff.start({
        socketPath: o.zdsSocket,
        log: logger('zds'),
        onChange: () => agent.#schedule(),
      });
    }
    agent.#writeState();
    await o.source.start((snapshot) => {
      agent.#snapshot = snapshot;
      agent.#schedule();
      return agent.#running;
    });
    return agent;
  }

  state(): BaselineAgentState {
    const zds = new Map(this.#handoff?.status().map((s) => [s.uid, s.state]) ?? []);
    return {
      node: this.#o.node,
      backend: this.#o.backend,
      pid: process.pid,
      ready: this.#passes > 0 && this.#pending.length === 0,
      zds: { socket: this.#o.zdsSocket, ready: this.#handoff?.ready ?? false, peers: this.#handoff?.peerPids() ?? [] },
      pods: [...this.#pods.values()].map((e) => ({
        uid: e.pod.uid,
        namespace: e.pod.namespace,
        name: e.pod.name,
        ips: e.pod.ips,
        netnsPath: e.pod.netnsPath,
        probe: e.probe,
        zds: this.#handoff ? (zds.get(e.pod.uid) ?? 'pending') : 'no-zds',
      })),
      pending: this.#pending,
    };
  }

  /** Stops watching and serving; removes every rule it installed unless `keepRules`. */
  async stop(keepRules = false): Promise<void> {
    this.#stopped = true;
    if (this.#retry) clearTimeout(this.#retry);
    await this.#o.source.stop();
    await this.#running;
    // Like istio-cni, a stopping agent does not release its pods from ztunnel: it only goes away.
    await this.#handoff?.close();
    if (!keepRules) {
      for (const e of this.#pods.values()) await this.#release(e);
      this.#pods.clear();
      if (this.#host) await remove(this.#host.rules, this.#host.tablesBefore);
      this.#log.info('every rule removed');
    }
    this.#writeState();
  }

  /** One pass at a time; a change during a pass runs one more after it (coalesced). */
  #schedule(): void {
    if (this.#stopped || this.#queued) return;
    this.#queued = true;
    this.#running = this.#running.then(async () => {
      this.#queued = false;
      if (this.#stopped) return;
      try {
        await this.#pass();
      } catch (err) {
        this.#log.error({ err: describeError(err) }, 'pass failed; retrying');
        this.#retryLater();
      }
    });
  }

  #retryLater(): void {
    if (this.#stopped || this.#retry) return;
    this.#retry = setTimeout(() => {
      this.#retry = undefined;
      this.#schedule();
    }, this.#o.retryMs ?? 500);
  }

  async #pass(): Promise<void> {
    const snapshot = this.#snapshot;
    if (!snapshot) return;
    const desired = computeDesiredState(snapshot, this.#o.node);
    const annotations = podAnnotations(snapshot);
    // ztunnel's own pod is not ours to resolve: ZDS carries everything it needs.
    const res = await resolveNode({ ...desired, ztunnel: undefined });
    const want = new Map(res.pods.map((p) => [p.uid, p]));
    const pending: Problem[] = [...res.unresolved];

    for (const [uid, e] of this.#pods) {
      const w = want.get(uid);
      if (w && w.netnsCookie === e.pod.netnsCookie) continue;
      // Gone from the mesh, or its sandbox was re-created (a new netns to capture).
      await this.#release(e);
      this.#pods.delete(uid);
    }
    for (const p of res.pods) {
      if (this.#pods.has(p.uid)) continue;
      const what = `pod ${p.namespace}/${p.name}`;
      try {
        const rules = inpodPodRules(p.netnsPath, this.#o.backend, {
          cfg: this.#o.cfg,
          overrides: podOverrides(annotations.get(p.uid) ?? {}),
          v6Loopback: await loopbackIpv6(p.netnsPath),
        });
        // The first pass may meet the rules of an agent that crashed or kept them (--keep-rules).
        const { tablesBefore } = await this.#installCleanly(rules, this.#passes === 0);
        this.#pods.set(p.uid, { pod: p, rules, tablesBefore, probe: false });
        this.#log.info(
          { pod: what, uid: p.uid, netns: p.netnsPath, backend: this.#o.backend },
          'in-pod rules installed',
        );
      } catch (err) {
        pending.push({ object: what, reason: `could not install its rules: ${describeError(err)}` });
      }
    }
    this.#handoff?.sync([...this.#pods.values()].map((e) => e.pod));

    // The probe SNAT is the last step of a capture: only for pods ztunnel took (or without ZDS).
    for (const e of this.#pods.values()) {
      if (e.probe || (this.#handoff && !this.#handoff.served(e.pod.uid, e.pod.netnsCookie))) continue;
      for (const ip of e.pod.ips)
        await updateProbeSet(this.#o.nodeNetns, this.#o.backend, { ip, uid: e.pod.uid }, false);
      e.probe = true;
    }
    this.#pending = pending;
    this.#passes++;
    for (const p of pending) this.#log.warn(p, 'mesh pod not captured yet; retrying');
    if (pending.length > 0) this.#retryLater();
    this.#writeState();
  }

  /**
   * Installs `rules` exactly once, as istio-cni reconciles: with `cleanFirst` (at start, where an
   * earlier agent's rules may be in place) whatever of them is there is removed first; otherwise a
   * failed install is cleaned up and tried once more. After a cleanup the netns's tables before the
   * first install are unknown: removal then deletes iptables-nft's tables once they are empty.
   */
  async #installCleanly(
    rules: NetnsRules,
    cleanFirst: boolean,
  ): Promise<{ rules: NetnsRules; tablesBefore: readonly string[] | undefined }> {
    if (cleanFirst) {
      await remove(rules, undefined);
      await install(rules);
      return { rules, tablesBefore: undefined };
    }
    const tablesBefore = await nftTables(rules.netnsPath);
    try {
      await install(rules);
      return { rules, tablesBefore };
    } catch (err) {
      this.#log.warn(
        { netns: rules.netnsPath, err: describeError(err) },
        'install failed; removing what it left and installing again',
      );
      await remove(rules, undefined);
      await install(rules);
      return { rules, tablesBefore: undefined };
    }
  }

  async #release(e: PodEntry): Promise<void> {
    const what = `pod ${e.pod.namespace}/${e.pod.name}`;
    try {
      if (e.probe)
        for (const ip of e.pod.ips)
          await updateProbeSet(this.#o.nodeNetns, this.#o.backend, { ip, uid: e.pod.uid }, true);
      e.probe = false;
      // A deleted pod's netns went with it: nothing to clean there (istio-cni's isDelete).
      if (existsSync(e.pod.netnsPath)) await remove(e.rules, e.tablesBefore);
      this.#log.info({ pod: what, uid: e.pod.uid }, 'pod released: rules removed');
    } catch (err) {
      this.#log.error({ pod: what, err: describeError(err) }, "could not remove the pod's rules");
    }
  }

  #writeState(): void {
    const file = this.#o.stateFile;
    if (!file) return;
    // Atomic replace: a reader never sees half a file.
    writeFileSync(`${file}.tmp`, JSON.stringify(this.state(), null, 1));
    renameSync(`${file}.tmp`, file);
  }
}

function parseCli(argv: readonly string[]): {
  options: Omit<BaselineAgentOptions, 'log' | 'source'>;
  podsFile: string;
  keepRules: boolean;
} {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      node: { type: 'string' },
      'pods-file': { type: 'string' },
      rules: { type: 'string', default: 'iptables' },
      'zds-socket': { type: 'string', default: '/var/run/ztunnel/ztunnel.sock' },
      'state-file': { type: 'string' },
      'no-dns-capture': { type: 'boolean', default: false },
      'no-ipv6': { type: 'boolean', default: false },
      'kubelet-uid': { type: 'string', default: '0' },
      'keep-rules': { type: 'boolean', default: false },
    },
    strict: true,
    allowPositionals: false,
  });
  if (!values.node) throw new UsageError('--node is required');
  if (!values['pods-file']) throw new UsageError('--pods-file is required');
  const backend = values.rules as Backend;
  if (!BACKENDS.includes(backend))
    throw new UsageError(`--rules must be one of ${BACKENDS.join(', ')}, not '${values.rules}'`);
  const uid = Number(values['kubelet-uid']);
  if (!Number.isInteger(uid) || uid < 0)
    throw new UsageError(`--kubelet-uid must be a user id, not '${values['kubelet-uid']}'`);
  const zds = values['zds-socket'];
  return {
    podsFile: values['pods-file'],
    keepRules: values['keep-rules'],
    options: {
      node: values.node,
      backend,
      cfg: {
        ...ISTIO_DEFAULTS,
        dns: !values['no-dns-capture'],
        ipv6: !values['no-ipv6'] && existsSync('/proc/sys/net/ipv6'),
        kubeletUid: uid,
      },
      zdsSocket: zds === 'none' ? undefined : zds,
      nodeNetns: `/proc/${process.pid}/ns/net`,
      ...(values['state-file'] ? { stateFile: values['state-file'] } : {}),
    },
  };
}

async function main(): Promise<void> {
  const log = logger('baseline-agent');
  let cli: ReturnType<typeof parseCli>;
  try {
    cli = parseCli(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`baseline agent: ${describeError(err)}\n`);
    process.exit(2);
  }
  const source = createPodsFileSource({ path: cli.podsFile, pollMs: 500 });
  const agent = await BaselineAgent.start({ ...cli.options, source, log });
  log.info(
    { node: cli.options.node, backend: cli.options.backend, zds: cli.options.zdsSocket ?? 'none' },
    'baseline agent running',
  );
  let stopping = false;
  const onSignal = (signal: NodeJS.Signals): void => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'stopping');
    agent.stop(cli.keepRules).then(
      () => process.exit(0),
      (err: unknown) => {
        log.error({ err: describeError(err) }, 'stop failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
}

if (import.meta.main) {
  main().catch((err: unknown) => {
    logger('baseline-agent').fatal({ err: describeError(err) }, 'baseline agent failed');
    process.exit(1);
  });
}
