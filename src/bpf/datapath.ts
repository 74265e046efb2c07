// The datapath attach layer (node topology): load ambpf's three objects with every map pinned under
// <bpffs>/, attach the cgroup programs to the pods' cgroup subtree as pinned links, sk_msg on the
// sockhash, and per-interface tc / per-netns sk_lookup for inbound. The loader (reconcile, `ambpf run`)
// drives it; this module only knows the kernel side.
//
// Restart safety (docs/architecture.md "Lifecycle"): maps are reused from their pins, links are adopted from their pins
// (ensurePinnedLink), so a restarted loader changes nothing that works and attaches nothing twice.
// close() releases this process's fds only: pinned maps and links keep traffic flowing without us.
import { existsSync, rmdirSync, statSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import {
  BpfLink,
  BpfMap,
  BpfObject,
  LibbpfError,
  ifIndex,
  inNetns,
  resolveIfindex,
  type BpfProgram,
  type SkMsgAttachment,
} from '../libbpf/index.ts';
import { AmbpfError } from '../errors.ts';
import { logger } from '../log.ts';
import { ensureObjects } from './build.ts';
import { changeNetSysctl, forgetRoute, ledgerPath, readNetSysctl, recordRoute } from './sysctl.ts';
import { undoLedger, type LedgerUndoReport, type NetnsFinder } from './ledger-undo.ts';
import { DatapathMaps } from './datapath-maps.ts';
import {
  CGROUP_HOOKS,
  INPOD_MAP_NAMES,
  INPOD_ONLY_HOOKS,
  MAP_NAMES,
  OBJECTS,
  PROGRAMS,
  RETIRED_MAP_NAMES,
  isAmbpfMap,
  type CgroupHook,
} from './names.ts';
import { ensurePinnedLink, progTag, removePinnedLink, type LinkOutcome } from './datapath-links.ts';
import {
  CLSACT_HANDLE,
  CLSACT_PRIORITY,
  detachClsact,
  listClsactFilters,
  removeClsactFilters,
} from './datapath-clsact.ts';
import { installPolicyRoute, removePolicyRoute, withListenerFd, type PolicyRouteOptions } from './datapath-ztunnel.ts';
import { SK_LOOKUP_LINK, linkNames, linkPin, linksDir, mapPin, parseLinkName, tcLinkName } from './pins.ts';
import * as s from './schema.ts';

export {
  DatapathMaps,
  openPinnedMaps,
  TypedMap,
  SingletonMap,
  MAP_NAMES,
  MapFullError,
  type MapName,
} from './datapath-maps.ts';
export type { LinkOutcome } from './datapath-links.ts';

const log = logger('datapath');

export { CGROUP_HOOKS, INPOD_MAP_NAMES, INPOD_ONLY_HOOKS, OBJECTS, type CgroupHook } from './names.ts';

export class DatapathError extends AmbpfError {
  override readonly name: string = 'DatapathError';
}

export interface DatapathOptions {
  /** bpffs directory for pins (design default /sys/fs/bpf/ambpf). */
  bpffs: string;
  /** cgroup v2 directory holding the pods (kubelet's kubepods, or a test's cgroup). Never the root. */
  cgroup: string;
  /** Only 'node' opens here; the inpod topology is openInpodDatapath (datapath-inpod.ts). */
  mode?: 'node' | 'inpod';
  /** Object paths by name (default: ensureObjects() from the build cache). */
  objects?: Partial<Record<(typeof OBJECTS)[number], string>>;
  /** The ledger of what it changes outside bpffs (sysctls, routes): default ledgerPath(bpffs). */
  ledger?: string;
  /** max_entries by map name for maps created now (a reused pin keeps its size); see mapSizesFrom. */
  mapSizes?: Readonly<Record<string, number>>;
  /** The node's netns, when this process does not run in it (tests): tc and node sysctls go there. */
  netns?: string;
  /** How inbound tc attaches: 'auto' (default) tcx, clsact where the kernel has no tcx (< 6.6);
   * 'clsact' always clsact (tests of the old-kernel path on a new kernel). */
  tcMode?: 'auto' | 'clsact';
}

export interface ZtunnelAttachOptions {
  /** ztunnel's netns (/proc/<pid>/ns/net or /run/netns/NAME). */
  netnsPath: string;
  /** A ztunnel process holding the 15006/15008 listeners. */
  pid: number;
  /** ztunnel's interface towards the node inside its netns (default eth0). */
  ifname?: string;
  /** ztunnel's host-side veth in the node netns: rp_filter is turned off there (its replies carry pod IPs). */
  hostIfname?: string;
  /** Policy routing table and rule preference in ztunnel's netns (default 100 / 100). */
  table?: number;
  pref?: number;
}

function isCgroupRoot(path: string): boolean {
  return existsSync(join(path, 'cgroup.controllers')) && !existsSync(join(path, 'cgroup.events'));
}

/** The pods' cgroup must exist and must not be the root: a connect4 there would redirect the whole
 * machine, ambpf's own traffic included. */
export function assertPodsCgroup(cgroup: string): void {
  if (!existsSync(cgroup) || !statSync(cgroup).isDirectory()) {
    throw new DatapathError(`cgroup ${cgroup} does not exist; pass the cgroup v2 directory that holds the pods.`, {
      cgroup,
    });
  }
  if (isCgroupRoot(cgroup)) {
    throw new DatapathError(
      `refusing to attach to the root cgroup ${cgroup}; pass the pods' cgroup subtree (e.g. kubepods).`,
      { cgroup },
    );
  }
}

export class Datapath {
  readonly bpffs: string;
  readonly cgroup: string;
  readonly netns: string | undefined;
  readonly tcMode: 'auto' | 'clsact';
  readonly ledger: string;
  readonly maps: DatapathMaps;
  /** What happened to each cgroup hook's link at open. */
  readonly links: Readonly<Record<CgroupHook, LinkOutcome>>;
  readonly #objects: BpfObject[];
  readonly #skMsg: SkMsgAttachment;
  /**
   * Interfaces carrying a clsact filter of ours: scanned from the kernel on first use (one `ip` and
   * one `tc` spawn per interface, tens of ms) and kept up to date by attachInbound/detachInbound, so a
   * reconcile pass for a pod event does not pay the scan. undefined: scan on next use
   * (rescanInbound(), which the loader's periodic safety-net pass calls).
   */
  #clsactSeen: Map<string, number> | undefined; // ifname -> ifindex it had when attached

  private constructor(
    o: DatapathOptions,
    objects: BpfObject[],
    maps: DatapathMaps,
    links: Record<CgroupHook, LinkOutcome>,
    skMsg: SkMsgAttachment,
  ) {
    this.bpffs = o.bpffs;
    this.cgroup = o.cgroup;
    this.netns = o.netns;
    this.tcMode = o.tcMode ?? 'auto';
    this.ledger = o.ledger ?? ledgerPath(o.bpffs);
    this.#objects = objects;
    this.maps = maps;
    this.links = links;
    this.#skMsg = skMsg;
  }

  /** Load (reusing pins), pin, attach. See the module comment. */
  static async open(o: DatapathOptions): Promise<Datapath> {
    if ((o.mode ?? 'node') !== 'node')
      throw new DatapathError(
        `datapath mode ${o.mode} is not opened here; use openInpodDatapath (src/bpf/datapath-inpod.ts).`,
      );
    assertPodsCgroup(o.cgroup);
    const paths = { ...(o.objects ?? {}) };
    if (OBJECTS.some((n) => !paths[n])) Object.assign(paths, (await ensureObjects()).objects, o.objects ?? {});

    const objects: BpfObject[] = [];
    try {
      for (const name of OBJECTS) {
        const path = paths[name];
        if (!path)
          throw new DatapathError(`the BPF object ${name} was not built; run \`ambpf build\`.`, { object: name });
        const obj = BpfObject.open(path);
        objects.push(obj);
        sizeMaps(obj, o);
        obj.setPinDir(o.bpffs);
        obj.load();
      }
      const [sock, skmsg] = objects as [BpfObject, BpfObject, BpfObject];
      const maps = new DatapathMaps((n) => objectMap(objects, n));
      // sk_msg before sockops: a socket inserted before the verdict program exists is never spliced.
      // A restart re-attaches, which replaces the previous program in the map's single slot.
      const skMsg = skmsg.program(PROGRAMS.skmsg).attachSkMsg(maps.raw.ambpf_sockhash);
      const cgroupIno = BigInt(statSync(o.cgroup).ino);
      const links = {} as Record<CgroupHook, LinkOutcome>;
      for (const [hook, progName] of Object.entries(CGROUP_HOOKS) as Array<[CgroupHook, string]>) {
        const prog = sock.program(progName);
        links[hook] = ensurePinnedLink({
          pin: linkPin(o.bpffs, hook),
          prog,
          attach: () => prog.attachCgroup(o.cgroup),
          sameTarget: (info) => info.cgroupId === cgroupIno,
        });
      }
      log.info({ bpffs: o.bpffs, cgroup: o.cgroup, links }, 'datapath attached');
      return new Datapath(o, objects, maps, links, skMsg);
    } catch (err) {
      objects.forEach((obj) => obj.close());
      throw err;
    }
  }

  #prog(name: string): BpfProgram {
    for (const obj of this.#objects) {
      if (obj.programs.some((p) => p.name === name)) return obj.program(name);
    }
    throw new DatapathError(`program ${name} is not in ambpf's objects.`);
  }

  /** Summed per-CPU counters. */
  stats(): s.Stats {
    return this.maps.stats();
  }

  /**
   * Steer inbound traffic of the pod behind host-side veth `ifname` to ztunnel (tc egress on that
   * veth). tcx link pinned as <bpffs>/links/tc-<ifname>; on kernels without tcx (or tcMode 'clsact') a
   * clsact filter with a fixed handle: it lives with the interface, cannot be pinned, and is found
   * again in the kernel (datapath-clsact.ts).
   */
  attachInbound(ifname: string): LinkOutcome {
    const prog = this.#prog(PROGRAMS.tcPod);
    const ifindex = inNetns(this.netns, () => resolveIfindex(ifname));
    if (this.tcMode !== 'clsact') {
      try {
        return ensurePinnedLink({
          pin: this.#tcPin(ifname),
          prog,
          attach: () => {
            const a = prog.attachTc(ifindex, 'egress', { mode: 'tcx', netns: this.netns });
            if (!a.link) throw new DatapathError('tcx attach returned no link');
            return a.link;
          },
          sameTarget: (info) => info.ifindex === ifindex,
        });
      } catch (err) {
        if (!(err instanceof LibbpfError) || err.code !== 'EINVAL') throw err;
        // No tcx (Linux < 6.6): clsact below.
      }
    }
    // The cache changes only once the kernel did (a failed attach must not look steered).
    const attach = (): void => {
      prog.attachTc(ifindex, 'egress', {
        mode: 'clsact',
        netns: this.netns,
        handle: CLSACT_HANDLE,
        priority: CLSACT_PRIORITY,
      });
      this.#clsactSeen?.set(ifname, ifindex);
    };
    try {
      attach();
      return 'created';
    } catch (e) {
      if (!(e instanceof LibbpfError) || e.code !== 'EEXIST') throw e;
    }
    // EEXIST: a filter sits at ambpf's handle. Ours with the same code: keep it. An older version
    // (an upgraded loader): swap it, or the fixes in the new program never reach this interface. One
    // that is not ours (its program uses other maps: an earlier install whose maps were re-created)
    // steers with state this loader does not fill: swap it too. libbpf-ts has no BPF_TC_F_REPLACE,
    // so it is detach + attach: a moment without steering on this veth.
    const ours = listClsactFilters(this.bpffs, this.netns).find((f) => f.ifindex === ifindex);
    if (ours && progTag(ours.progId) === prog.tag) {
      this.#clsactSeen?.set(ifname, ifindex);
      return 'adopted';
    }
    detachClsact(ifindex, this.netns);
    attach();
    if (ours) log.info({ ifname, old: ours.progId }, 'replaced an older clsact filter');
    else log.warn({ ifname, handle: CLSACT_HANDLE }, "replaced a clsact filter at ambpf's handle that uses other maps");
    return 'replaced';
  }

  /** Undo attachInbound (tcx link or clsact filter); false when nothing of ours was on that interface. */
  detachInbound(ifname: string): boolean {
    if (removePinnedLink(this.#tcPin(ifname))) return true;
    const ours = listClsactFilters(this.bpffs, this.netns).find((f) => f.ifname === ifname);
    if (ours) detachClsact(ours.ifindex, this.netns);
    this.#clsactSeen?.delete(ifname); // after the kernel: a failed detach stays in the view
    return ours !== undefined;
  }

  /**
   * Interfaces whose inbound traffic ambpf steers now: the pinned tcx links (tc-<ifname>) and the
   * clsact filters found in the kernel. What reconcile should take as "current" on every kernel.
   */
  inboundInterfaces(): string[] {
    const names = new Set<string>();
    for (const n of linkNames(this.bpffs)) {
      const pin = parseLinkName(n);
      if (pin?.kind === 'tc') names.add(pin.ifname);
    }
    this.#clsactSeen ??= new Map(listClsactFilters(this.bpffs, this.netns).map((f) => [f.ifname, f.ifindex]));
    // A clsact filter lives and dies with its interface: a veth recreated under the same name (a
    // sandbox restart with deterministic names) has none, so it must be attached again.
    const seen = this.#clsactSeen;
    const current = inNetns(this.netns, () => new Map([...seen.keys()].map((n) => [n, ifIndex(n)] as const)));
    for (const [n, ifindex] of seen) {
      if (current.get(n) === ifindex) names.add(n);
      else seen.delete(n);
    }
    return [...names].sort();
  }

  /**
   * Interfaces whose pinned tcx link steers nothing: the interface is gone, or the name now belongs to
   * another interface (a pod recreated with the same deterministic veth name). detachInbound unpins
   * them, so the next plan attaches to the interface as it is now.
   */
  staleInbound(): Array<{ ifname: string; pinned: number | undefined; current: number | undefined }> {
    const stale: Array<{ ifname: string; pinned: number | undefined; current: number | undefined }> = [];
    for (const name of linkNames(this.bpffs)) {
      const pin = parseLinkName(name);
      if (pin?.kind !== 'tc') continue;
      const { ifname } = pin;
      let current: number | undefined;
      try {
        current = inNetns(this.netns, () => resolveIfindex(ifname));
      } catch {
        current = undefined;
      }
      let pinned: number | undefined;
      try {
        using link = BpfLink.openPinned(linkPin(this.bpffs, name));
        pinned = link.info().ifindex;
      } catch {
        pinned = undefined;
      }
      if (current === undefined || pinned !== current) stale.push({ ifname, pinned, current });
    }
    return stale;
  }

  /**
   * Both of ztunnel's listener slots hold a socket: false once ztunnel's listeners closed (a restarted
   * ztunnel). A sockmap's get-next-key walks slots, empty or not, so only a lookup per slot tells: an
   * empty slot is ENOENT.
   */
  ztunnelListenersPresent(): boolean {
    try {
      const listen = this.maps.raw.ambpf_zt_listen;
      return [s.LISTENER_INBOUND, s.LISTENER_HBONE].every((slot) => listen.lookup(s.encodeU32Key(slot)) !== undefined);
    } catch {
      return false;
    }
  }

  /** The next inboundInterfaces() scans the kernel for clsact filters again (something outside ambpf may have changed them). */
  rescanInbound(): void {
    this.#clsactSeen = undefined;
  }

  #tcPin(ifname: string): string {
    return linkPin(this.bpffs, tcLinkName(ifname));
  }

  /**
   * Make ztunnel's netns accept steered connections: its listeners into ambpf_zt_listen, the policy
   * route, the sk_lookup link (pinned as <bpffs>/links/sk_lookup). Call again after ztunnel restarts
   * (its new listeners replace the closed ones).
   */
  async attachZtunnel(o: ZtunnelAttachOptions): Promise<LinkOutcome> {
    const zt = this.maps.ztunnel.get();
    const ports = [
      [s.LISTENER_INBOUND, zt.portIn || s.PORT_INBOUND],
      [s.LISTENER_HBONE, zt.portHbone || s.PORT_HBONE],
    ] as const;
    const listen = this.maps.raw.ambpf_zt_listen;
    for (const [slot, port] of ports) {
      withListenerFd(o.pid, port, (fd) => listen.update(s.encodeU32Key(slot), s.encodeU64Key(BigInt(fd))));
    }
    const route = this.#routeOpts(o);
    await installPolicyRoute(route);
    recordRoute(this.ledger, {
      kind: 'route',
      netnsIno: statSync(o.netnsPath).ino,
      netnsPath: o.netnsPath,
      what: 'ztunnel-policy',
      ifname: route.ifname,
      table: route.table,
      pref: route.pref,
    });
    if (o.hostIfname) {
      // ztunnel answers from the pods' addresses. A Calico-style host veth has no IPv4 address, and
      // the kernel's reverse-path check then drops every packet whose source is not routed via that
      // very interface, in loose mode (2) too (fib_validate_source: no address -> last resort ->
      // reject). So rp_filter must be 0 on it; the effective value is max(all, interface), hence the
      // warning when the node sets net.ipv4.conf.all.rp_filter (Istio's node agent turned it off too).
      const hostIfname = o.hostIfname;
      const all = inNetns(this.netns, () => {
        changeNetSysctl(this.ledger, this.netns ?? '/proc/self/ns/net', `ipv4/conf/${hostIfname}/rp_filter`, '0');
        return readNetSysctl('ipv4/conf/all/rp_filter');
      });
      if (all !== '0')
        log.warn(
          { all },
          'net.ipv4.conf.all.rp_filter is not 0: replies from ztunnel to steered inbound connections will be dropped; set it to 0',
        );
    }
    const prog = this.#prog(PROGRAMS.skLookup);
    const ino = statSync(o.netnsPath).ino;
    return ensurePinnedLink({
      pin: linkPin(this.bpffs, SK_LOOKUP_LINK),
      prog,
      attach: () => prog.attachNetns(o.netnsPath),
      sameTarget: (info) => info.netnsIno === ino,
    });
  }

  /** Undo attachZtunnel. */
  async detachZtunnel(o: Pick<ZtunnelAttachOptions, 'netnsPath' | 'ifname' | 'table' | 'pref'>): Promise<void> {
    removePinnedLink(linkPin(this.bpffs, SK_LOOKUP_LINK));
    for (const slot of [s.LISTENER_INBOUND, s.LISTENER_HBONE]) {
      try {
        this.maps.raw.ambpf_zt_listen.delete(s.encodeU32Key(slot));
      } catch (err) {
        // A slot whose listener already closed (ztunnel gone) is empty: a sockmap answers EINVAL.
        if (!(err instanceof LibbpfError) || err.code !== 'EINVAL') throw err;
      }
    }
    await removePolicyRoute(this.#routeOpts(o));
    forgetRoute(this.ledger, statSync(o.netnsPath).ino, 'ztunnel-policy');
  }

  #routeOpts(o: Pick<ZtunnelAttachOptions, 'netnsPath' | 'ifname' | 'table' | 'pref'>): PolicyRouteOptions {
    return { netnsPath: o.netnsPath, ifname: o.ifname ?? 'eth0', table: o.table ?? 100, pref: o.pref ?? 100 };
  }

  /** Release fds; pins (maps, links, sk_msg on the pinned sockhash) stay and keep working. */
  close(): void {
    this.#objects.forEach((obj) => obj.close());
  }

  /** For tests/uninstall of a running process: stop splicing new sockets now. */
  detachSkMsg(): void {
    this.#skMsg.detach();
  }
}

export function objectMap(objects: readonly BpfObject[], name: string): BpfMap {
  for (const obj of objects) {
    if (obj.maps.some((m) => m.name === name)) return obj.map(name);
  }
  throw new DatapathError(`map ${name} is not in ambpf's objects.`);
}

/** A map being reused must be declared with its pinned size, else libbpf refuses the reuse. */
export function sizeMaps(obj: BpfObject, o: Pick<DatapathOptions, 'bpffs' | 'mapSizes'>): void {
  for (const m of obj.maps) {
    if (!isAmbpfMap(m.name)) continue; // .bss, .rodata: not pinned
    const pin = mapPin(o.bpffs, m.name);
    if (existsSync(pin)) {
      const pinned = BpfMap.openPinned(pin);
      try {
        if (pinned.maxEntries !== m.maxEntries) m.setMaxEntries(pinned.maxEntries);
      } finally {
        pinned.close();
      }
    } else {
      const want = o.mapSizes?.[m.name];
      if (want) m.setMaxEntries(want);
    }
  }
}

export const openDatapath = (o: DatapathOptions): Promise<Datapath> => Datapath.open(o);

export interface UninstallReport {
  links: string[];
  maps: string[];
  /** What the ledger said ambpf changed outside bpffs, undone (ledger-undo.ts). */
  undone: LedgerUndoReport;
  /** Interfaces whose clsact filter (kernels without tcx) was removed. */
  clsact: string[];
}

export interface UninstallOptions {
  /** The node netns whose interfaces may carry ambpf's clsact filters (default: this process's). */
  netns?: string;
  /** The ledger of this install (default ledgerPath(bpffs)). */
  ledger?: string;
  /** Finds a netns by inode when a recorded path no longer names it (the CLI passes netnsPathByIno). */
  findNetns?: NetnsFinder;
}

/**
 * Detach and unpin everything ambpf pins under bpffs — its links and its maps by name — and nothing
 * else (unknown files are left, and then the directory too); and remove the clsact filters of this
 * install from the interfaces of the node netns (kernels without tcx: filters cannot be pinned, and
 * they would keep steering, into a ztunnel that no longer gets anything, with the pins gone). That
 * goes first: the pinned maps are how those filters are recognised as this install's. The policy
 * route in ztunnel's netns is not under bpffs: remove it with detachZtunnel.
 */
export function uninstallDatapath(bpffs: string, opts: UninstallOptions = {}): UninstallReport {
  const report: UninstallReport = {
    links: [],
    maps: [],
    clsact: removeClsactFilters(bpffs, opts.netns),
    undone: undoLedger(opts.ledger ?? ledgerPath(bpffs), opts.findNetns),
  };
  const hooks = new Set<string>([...Object.keys(CGROUP_HOOKS), ...INPOD_ONLY_HOOKS]);
  for (const name of linkNames(bpffs)) {
    if (!hooks.has(name) && parseLinkName(name) === undefined) continue;
    if (removePinnedLink(linkPin(bpffs, name))) report.links.push(name);
  }
  tryRmdir(linksDir(bpffs));
  for (const name of [...MAP_NAMES, ...INPOD_MAP_NAMES, ...RETIRED_MAP_NAMES]) {
    const pin = mapPin(bpffs, name);
    if (!existsSync(pin)) continue;
    unlinkSync(pin);
    report.maps.push(name);
  }
  tryRmdir(bpffs);
  return report;
}

function tryRmdir(dir: string): void {
  try {
    rmdirSync(dir);
  } catch {
    // not empty (someone else's pins) or already gone: leave it
  }
}
