// The datapath attach layer of the inpod topology (Istio 1.21+: ztunnel listens inside every mesh
// pod's netns). Loads bpf/ambpf_inpod.bpf.c with every map pinned under <bpffs>/ (the shared maps of
// docs/architecture.md "Maps" plus the inpod maps), attaches its cgroup programs to the pods' cgroup subtree
// as pinned links <bpffs>/links/<hook> (the node topology's pin names: one mode per bpffs), and per
// mesh pod:
//  - tags ztunnel's 15001 listener in the pod's netns with the netns cookie (ambpf_inpod_sk, cloned
//    by the kernel to every accepted socket: getsockopt's key to the pod);
//  - puts ztunnel's 15006/15008 listeners in ambpf_inpod_listen under {pod IP, slot};
//  - attaches ambpf_inpod_lookup (sk_lookup) to the pod's netns, pinned <bpffs>/links/inpod-<cookie>.
// Nothing is attached in the node's netns. Restart safety as in the node topology: maps reused from
// their pins, links adopted (ensurePinnedLink); close() releases this process's fds only.
import { existsSync, statSync } from 'node:fs';
import {
  BpfObject,
  LibbpfError,
  isTransparent,
  resolveIfindex,
  withNetns,
  type BpfMap,
  type BpfProgram,
} from '../libbpf/index.ts';
import { kernelAtLeast } from '../libbpf/probe.ts';
import { logger } from '../log.ts';
import { ensureObjects } from './build.ts';
import { DatapathError, assertPodsCgroup, objectMap, sizeMaps, type DatapathOptions } from './datapath.ts';
import { INPOD_CGROUP_HOOKS, INPOD_OBJECT, PROGRAMS, type InpodCgroupHook, type InpodMapName } from './names.ts';
import { DatapathMaps, MAP_NAMES } from './datapath-maps.ts';
import { ensurePinnedLink, removePinnedLink, type LinkOutcome } from './datapath-links.ts';
import { withCopiedFds, type SocketHolder } from './inpod-listeners.ts';
import { ledgerPath, readLedger } from './sysctl.ts';
import { kernelMemoryLocked } from './lockdown.ts';
import { setOrigSrcReturnPath } from './return-path.ts';
import { inpodLinkName, inpodTcLinkName, linkNames, linkPin, parseLinkName } from './pins.ts';
import * as s from './schema.ts';

const log = logger('datapath-inpod');

export { INPOD_CGROUP_HOOKS, INPOD_OBJECT, type InpodCgroupHook } from './names.ts';

export type InpodDatapathOptions = Pick<DatapathOptions, 'bpffs' | 'cgroup' | 'mapSizes' | 'ledger'> & {
  /** Path of ambpf_inpod.bpf.o (default: the build cache). */
  object?: string;
  /** The kernel's lockdown file (default LOCKDOWN_PATH; tests point it elsewhere). */
  lockdownPath?: string;
  /**
   * Redirected connections keep their destination where the pod's route allows it (inpod_keep_dst in
   * bpf/ambpf_inpod.bpf.c; default true); false: every one is recorded and rewritten to 15001.
   */
  keepDst?: boolean;
};

/** ztunnel's sockets inside one pod's netns, as held by a ztunnel process. */
export interface PodListeners {
  readonly outbound: SocketHolder;
  readonly inbound: SocketHolder;
  readonly hbone: SocketHolder;
  /** Another listener of the same reuseport group, registered as a fallback (a rolling upgrade). */
  readonly outbound2?: SocketHolder | undefined;
  readonly inbound2?: SocketHolder | undefined;
  readonly hbone2?: SocketHolder | undefined;
}

/** The inpod maps this module writes, by role. */
const M = {
  sk: 'ambpf_inpod_sk',
  closed: 'ambpf_inpod_closed',
  listen: 'ambpf_inpod_listen',
  origsrc: 'ambpf_inpod_origsrc',
  nodesyn: 'ambpf_inpod_nodesyn',
  dns: 'ambpf_inpod_dns',
} as const satisfies Record<string, InpodMapName>;

/**
 * Links an older ambpf pinned that this one no longer makes, removed when found: the cgroup sockops
 * hook (kernels without tcx) and, per pod, tcx egress on lo (pins.ts inpodLoLinkName), all at open(). Their jobs moved to
 * connect4/6 (ztunnel's spoofed legs), sendmsg4/6 (DNS answers) and sock_release (a client's early
 * close), which run once per connection or socket instead of once per packet on lo.
 */
const RETIRED_CGROUP_LINKS = ['sockops'] as const;

/** A slot's fallback entry (bpf/ambpf_inpod.bpf.c tries slot, then slot + LISTENER_SLOTS). */
const fallbackSlot = (slot: number): number => slot + s.LISTENER_SLOTS;
const ALL_SLOTS = [
  s.LISTENER_INBOUND,
  s.LISTENER_HBONE,
  s.LISTENER_OUTBOUND,
  fallbackSlot(s.LISTENER_INBOUND),
  fallbackSlot(s.LISTENER_HBONE),
  fallbackSlot(s.LISTENER_OUTBOUND),
];

/** A pod whose capture is armed: sk_lookup on its netns and the return route of spoofed legs. */
export interface PodArm {
  /** /proc/<pid>/ns/net of a process in the pod. */
  readonly netnsPath: string;
  readonly netnsCookie: bigint;
}

/** What keepDstFor asks of a pod. */
export interface KeepDstPod {
  readonly netnsIno: number;
  readonly netnsCookie: bigint;
  /** The pod's IPs: its 15001 is registered under each. */
  readonly ips: readonly string[];
}

export interface PodCapture extends PodArm {
  /** The pod's IPs (the keys inbound connections arrive with). */
  readonly ips: readonly string[];
  readonly listeners: PodListeners;
}

/**
 * The pod-netns half of the return path of ztunnel's spoofed inbound legs (see AMBPF_MARK_ORIG_SRC in
 * bpf/include/ambpf.h): the app's accepted socket takes the SYN's mark (tcp_fwmark_accept), and this
 * rule + local route hand its replies to the client's address back to ztunnel over lo. Istio's rules
 * do the same with connmark 0x111 and table 100; ambpf's own table and preference keep the two apart.
 */
/** An armed pod whose probe/spoofed-leg support could not be set up: armed all the same (fail closed). */
export class PodArmIncomplete extends DatapathError {
  override readonly name: string = 'PodArmIncomplete';
  readonly netnsCookie: bigint;
  readonly problems: readonly string[];
  constructor(netnsCookie: bigint, problems: readonly string[]) {
    super(`pod armed, but ${problems.join('; ')}`);
    this.netnsCookie = netnsCookie;
    this.problems = problems;
  }
}

/** The pod-side interface CNIs give every pod (the CNI spec's CNI_IFNAME, eth0 under Kubernetes). */
const POD_IFNAME = 'eth0';
export { ORIG_SRC_ROUTE_TABLE, ORIG_SRC_RULE_PREF } from './return-path.ts';

export class InpodDatapath {
  readonly mode = 'inpod' as const;
  readonly bpffs: string;
  /** Where the sysctls and routes it changes in pod netns are recorded (sysctl.ts). */
  readonly ledger: string;
  readonly cgroup: string;
  readonly maps: DatapathMaps;
  /** Every cgroup hook's link, but release under lockdown=confidentiality (kernelMemoryLocked). */
  readonly links: Readonly<Partial<Record<InpodCgroupHook, LinkOutcome>>>;
  /** The inpod maps, raw (tests and inspection). */
  readonly inpodMaps: Readonly<{
    sk: BpfMap;
    closed: BpfMap;
    listen: BpfMap;
    origsrc: BpfMap;
    nodesyn: BpfMap;
    dns: BpfMap;
  }>;
  readonly #object: BpfObject;
  readonly #keepDst: boolean;
  /** Netns cookies of the pods whose registered 15001 listener has IP_TRANSPARENT (setListeners). */
  readonly #transparentOutbound = new Set<bigint>();

  private constructor(
    o: InpodDatapathOptions,
    object: BpfObject,
    links: Partial<Record<InpodCgroupHook, LinkOutcome>>,
  ) {
    this.bpffs = o.bpffs;
    this.ledger = o.ledger ?? ledgerPath(o.bpffs);
    this.#keepDst = (o.keepDst ?? true) && kernelAtLeast(...s.LOCAL_ROUTE_KERNEL);
    this.cgroup = o.cgroup;
    this.#object = object;
    this.maps = new DatapathMaps((n) => objectMap([object], n));
    this.inpodMaps = {
      sk: object.map(M.sk),
      closed: object.map(M.closed),
      listen: object.map(M.listen),
      origsrc: object.map(M.origsrc),
      nodesyn: object.map(M.nodesyn),
      dns: object.map(M.dns),
    };
    this.links = links;
  }

  /** Load (reusing pins), pin, attach the cgroup programs. Pods are added with attachPod. */
  static async open(o: InpodDatapathOptions): Promise<InpodDatapath> {
    assertPodsCgroup(o.cgroup);
    const path = o.object ?? (await ensureObjects()).objects[INPOD_OBJECT];
    if (!path)
      throw new DatapathError(`the BPF object ${INPOD_OBJECT} was not built; run \`ambpf build\`.`, {
        object: INPOD_OBJECT,
      });
    const obj = BpfObject.open(path);
    try {
      sizeMaps(obj, o);
      obj.setPinDir(o.bpffs);
      const locked = kernelMemoryLocked(o.lockdownPath);
      if (locked) {
        obj.program(INPOD_CGROUP_HOOKS.release).setAutoload(false);
        log.warn(
          { lockdown: 'confidentiality' },
          'kernel lockdown=confidentiality refuses bpf_probe_read_kernel: ambpf_inpod_release is not loaded, ' +
            "so a client that closes before ztunnel's accept() loses that connection (no original destination)",
        );
      }
      obj.load();
      const missing = MAP_NAMES.filter((n) => !obj.maps.some((m) => m.name === n));
      if (missing.length > 0)
        throw new DatapathError(
          `${INPOD_OBJECT} lacks the shared maps ${missing.join(', ')}; it must include ambpf_maps.h.`,
        );
      const cgroupIno = BigInt(statSync(o.cgroup).ino);
      const links: Partial<Record<InpodCgroupHook, LinkOutcome>> = {};
      for (const hook of Object.keys(INPOD_CGROUP_HOOKS) as InpodCgroupHook[]) {
        if (locked && hook === 'release') {
          removePinnedLink(linkPin(o.bpffs, hook)); // one an earlier boot left would keep running
          continue;
        }
        const prog = obj.program(INPOD_CGROUP_HOOKS[hook]);
        links[hook] = ensurePinnedLink({
          pin: linkPin(o.bpffs, hook),
          prog,
          attach: () => prog.attachCgroup(o.cgroup),
          sameTarget: (info) => info.cgroupId === cgroupIno,
        });
      }
      for (const retired of RETIRED_CGROUP_LINKS) {
        const pin = linkPin(o.bpffs, retired);
        if (existsSync(pin)) removePinnedLink(pin);
      }
      // Every pod an older ambpf armed: a pod already armed is not armed again, so this is the place.
      for (const name of linkNames(o.bpffs)) {
        if (parseLinkName(name)?.kind === 'inpod-lo') removePinnedLink(linkPin(o.bpffs, name));
      }
      log.info({ bpffs: o.bpffs, cgroup: o.cgroup, links }, 'inpod datapath attached');
      return new InpodDatapath(o, obj, links);
    } catch (err) {
      obj.close();
      throw err;
    }
  }

  #lookupProg(): BpfProgram {
    return this.#object.program(PROGRAMS.inpodLookup);
  }

  /** Summed per-CPU counters. */
  stats(): s.Stats {
    return this.maps.stats();
  }

  /**
   * Arm one pod's capture, before ztunnel is told about it: sk_lookup on its netns (which refuses
   * inbound connections while no ztunnel listener is registered: fail closed) and the return route of
   * ztunnel's spoofed legs. Idempotent.
   */
  armPod(p: PodArm): LinkOutcome {
    // sk_lookup first: it is what refuses inbound while ztunnel does not serve the pod. If it cannot
    // be attached the pod is not armed (the caller reports it and retries; nothing is left behind).
    const prog = this.#lookupProg();
    const ino = statSync(p.netnsPath).ino;
    const outcome = ensurePinnedLink({
      pin: this.#podPin(p.netnsCookie),
      prog,
      attach: () => prog.attachNetns(p.netnsPath),
      sameTarget: (info) => info.netnsIno === ino,
    });
    // The rest serves probes and ztunnel's spoofed legs. A failure there leaves the pod armed (its
    // traffic can only reach ztunnel, or fails): the error is thrown for the caller to report, after
    // everything that could be set up is.
    const problems: string[] = [];
    try {
      this.#attachPodTc(p);
    } catch (err) {
      problems.push(`tc: ${String(err)}`);
    }
    try {
      setOrigSrcReturnPath(p.netnsPath, true, this.ledger);
    } catch (err) {
      problems.push(`return route: ${String(err)}`);
    }
    if (problems.length > 0) throw new PodArmIncomplete(p.netnsCookie, problems);
    return outcome;
  }

  /**
   * The pod's tc program, inside its netns, as a tcx link (Linux 6.6+) pinned as links/inpod-<cookie>-tc:
   * ingress on eth0, ambpf_inpod_node_syn: the node's own connections (kubelet's probes) reach the app
   * directly. Without tcx the pod is captured all the same and probes go through ztunnel (logged;
   * `ambpf doctor` says so). An older ambpf's tcx on lo is removed at open().
   */
  #attachPodTc(p: PodArm): void {
    const prog = this.#object.program(PROGRAMS.inpodNodeSyn);
    let ifindex: number;
    try {
      ifindex = withNetns(p.netnsPath, () => resolveIfindex(POD_IFNAME));
    } catch (err) {
      log.warn({ netnsPath: p.netnsPath, err: String(err) }, `no ${POD_IFNAME} in the pod: ${prog.name} not attached`);
      return;
    }
    try {
      ensurePinnedLink({
        pin: this.#tcPin(p.netnsCookie),
        prog,
        attach: () => {
          const a = prog.attachTc(ifindex, 'ingress', { mode: 'tcx', netns: p.netnsPath });
          if (!a.link) throw new DatapathError('tcx attach returned no link');
          return a.link;
        },
        sameTarget: (info) => info.ifindex === ifindex,
      });
    } catch (err) {
      if (!(err instanceof LibbpfError) || err.code !== 'EINVAL') throw err;
      log.warn({ netnsPath: p.netnsPath, prog: prog.name }, 'no tcx on this kernel (< 6.6): probes go through ztunnel');
    }
  }

  /**
   * Capture one pod: listeners tagged and registered, then sk_lookup on its netns. Idempotent (a
   * later call with ztunnel's new listeners after a ztunnel restart replaces the old ones).
   */
  attachPod(p: PodCapture): LinkOutcome {
    this.setListeners(p);
    return this.armPod(p);
  }

  /** ztunnel took the pod: its 15001 listener tagged, 15006/15008 registered for sk_lookup. */
  setListeners(p: PodCapture): void {
    const { outbound, inbound, hbone, outbound2, inbound2, hbone2 } = p.listeners;
    const extra = [outbound2, inbound2, hbone2].filter((h): h is SocketHolder => h !== undefined);
    withCopiedFds([outbound, inbound, hbone, ...extra], ([out, inb, hb, ...rest]) => {
      const out2 = outbound2 ? rest.shift() : undefined;
      const inb2 = inbound2 ? rest.shift() : undefined;
      const hb2 = hbone2 ? rest.shift() : undefined;
      const outs = [out!, ...(out2 === undefined ? [] : [out2])];
      // The cookie goes on the 15001 listeners; accepted sockets inherit it (BPF_F_CLONE).
      for (const fd of outs)
        this.inpodMaps.sk.update(fdKey(fd), s.encodeInpodSk({ orig: null, netnsCookie: p.netnsCookie }));
      // Kept connections need every 15001 of the group to answer from a foreign address.
      if (outs.every(isTransparent)) this.#transparentOutbound.add(p.netnsCookie);
      else this.#transparentOutbound.delete(p.netnsCookie);
      const entries: Array<[number, number | undefined]> = [
        [s.LISTENER_INBOUND, inb],
        [s.LISTENER_HBONE, hb],
        [s.LISTENER_OUTBOUND, out],
        [fallbackSlot(s.LISTENER_INBOUND), inb2],
        [fallbackSlot(s.LISTENER_HBONE), hb2],
        [fallbackSlot(s.LISTENER_OUTBOUND), out2],
      ];
      for (const ip of p.ips) {
        for (const [slot, fd] of entries) {
          const key = s.encodeInpodListenKey(ip, slot);
          if (fd === undefined) this.inpodMaps.listen.delete(key);
          else this.inpodMaps.listen.update(key, s.encodeU64Key(BigInt(fd)));
        }
      }
    });
  }

  /**
   * Release a pod: its listener entries, its sk_lookup link and (when its netns is still there) the
   * return route. False when no link was pinned.
   */
  detachPod(netnsCookie: bigint, ips: readonly string[], netnsPath?: string): boolean {
    this.#transparentOutbound.delete(netnsCookie);
    for (const ip of ips) {
      for (const slot of ALL_SLOTS) this.inpodMaps.listen.delete(s.encodeInpodListenKey(ip, slot));
    }
    if (netnsPath !== undefined && existsSync(netnsPath)) {
      try {
        setOrigSrcReturnPath(netnsPath, false, this.ledger);
      } catch (err) {
        log.warn({ netnsPath, err: String(err) }, 'could not remove the return route of spoofed legs');
      }
    }
    removePinnedLink(this.#tcPin(netnsCookie));
    return removePinnedLink(this.#podPin(netnsCookie));
  }

  /**
   * Which pods' connections connect4/6 may keep their destination (POD_LOCAL_ROUTE), on a kernel whose
   * sk_lookup has ingress_ifindex and with keepDst on: those whose return-path rule and route the ledger
   * records (set up by this ambpf or an earlier one: without the rule a kept connection would leave
   * through eth0 for its destination, so nothing else counts as proof), and whose ztunnel 15001 has
   * IP_TRANSPARENT (it must answer from the original destination; ztunnel sets it unless
   * ENABLE_ORIG_SRC=false, src/proxy.rs maybe_set_transparent) is registered now: once ztunnel is gone
   * (its listeners leave the map as they close; its ZDS disconnect brings a pass) the pod's connects go
   * back to the record path, refused at once by its own IP:15001 as under Istio's rules, rather than
   * waiting in SYN retransmits (a refused kept SYN gets no reset: docs/kernel-facts.md). The ledger is
   * read once per call.
   */
  keepDstFor(): (pod: KeepDstPod) => boolean {
    if (!this.#keepDst) return () => false;
    const routed = new Set<number>();
    for (const e of readLedger(this.ledger))
      if (e.kind === 'route' && e.what === 'inpod-return') routed.add(e.netnsIno);
    const transparent = new Set(this.#transparentOutbound);
    return (pod) =>
      routed.has(pod.netnsIno) &&
      transparent.has(pod.netnsCookie) &&
      pod.ips.some((ip) => this.hasListener(ip, s.LISTENER_OUTBOUND));
  }

  /** Netns cookies of the pods whose sk_lookup link is pinned. */
  attachedPods(): Set<bigint> {
    const out = new Set<bigint>();
    for (const name of linkNames(this.bpffs)) {
      const pin = parseLinkName(name);
      if (pin?.kind === 'inpod') out.add(pin.netnsCookie);
    }
    return out;
  }

  /** Whether the pod's sk_lookup link is pinned (its capture is armed). */
  isArmed(netnsCookie: bigint): boolean {
    return existsSync(this.#podPin(netnsCookie));
  }

  /** Whether a listener entry for this pod IP is still in the map (it leaves when ztunnel's socket closes). */
  hasListener(ip: string, slot: number): boolean {
    return (
      this.inpodMaps.listen.lookup(s.encodeInpodListenKey(ip, slot)) !== undefined ||
      this.inpodMaps.listen.lookup(s.encodeInpodListenKey(ip, fallbackSlot(slot))) !== undefined
    );
  }

  #podPin(cookie: bigint): string {
    return linkPin(this.bpffs, inpodLinkName(cookie));
  }

  #tcPin(cookie: bigint): string {
    return linkPin(this.bpffs, inpodTcLinkName(cookie));
  }

  /** Release fds; pins stay and keep working. */
  close(): void {
    this.#object.close();
  }
}

/** SK_STORAGE maps are keyed by a socket fd (an int) from user space. */
function fdKey(fd: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setInt32(0, fd, true);
  return b;
}

export const openInpodDatapath = (o: InpodDatapathOptions): Promise<InpodDatapath> => InpodDatapath.open(o);
