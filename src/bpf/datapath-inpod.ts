// The datapath attach layer of the inpod topology (Istio 1.21+: ztunnel listens inside every mesh
// pod's netns). Loads bpf/ambpf_inpod.bpf.c with every map pinned under <bpffs>/ (the shared maps of
// design.md §3 plus the three inpod maps), attaches its cgroup programs to the pods' cgroup subtree
// as pinned links <bpffs>/links/<hook> (the node topology's pin names: one mode per bpffs), and per
// mesh pod:
//  - tags ztunnel's 15001 listener in the pod's netns with the netns cookie (ambpf_inpod_sk, cloned
//    by the kernel to every accepted socket: getsockopt's key to the pod);
//  - puts ztunnel's 15006/15008 listeners in ambpf_inpod_listen under {pod IP, slot};
//  - attaches ambpf_inpod_lookup (sk_lookup) to the pod's netns, pinned <bpffs>/links/inpod-<cookie>.
// Nothing is attached in the node's netns. Restart safety as in the node topology: maps reused from
// their pins, links adopted (ensurePinnedLink); close() releases this process's fds only.
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { BpfObject, type BpfMap, type BpfProgram } from '../libbpf/index.ts';
import { logger } from '../log.ts';
import { ensureObjects } from './build.ts';
import {
  CGROUP_HOOKS, DatapathError, INPOD_LINK_PREFIX, assertPodsCgroup, objectMap, sizeMaps,
  type CgroupHook, type DatapathOptions,
} from './datapath.ts';
import { DatapathMaps, MAP_NAMES } from './datapath-maps.ts';
import { ensurePinnedLink, removePinnedLink, type LinkOutcome } from './datapath-links.ts';
import { withCopiedFds, type SocketHolder } from './inpod-listeners.ts';
import * as s from './schema.ts';

const log = logger('datapath-inpod');

export const INPOD_OBJECT = 'ambpf_inpod';

/** cgroup hook (pin name, as in the node topology) -> inpod program. */
export const INPOD_CGROUP_HOOKS: Readonly<Record<CgroupHook, string>> = {
  connect4: 'ambpf_inpod_connect4',
  connect6: 'ambpf_inpod_connect6',
  getpeername4: 'ambpf_inpod_peername4',
  getpeername6: 'ambpf_inpod_peername6',
  getsockopt: 'ambpf_inpod_getsopt',
  sockops: 'ambpf_inpod_sockops',
};

export type InpodDatapathOptions = Pick<DatapathOptions, 'bpffs' | 'cgroup' | 'mapSizes'> & {
  /** Path of ambpf_inpod.bpf.o (default: the build cache). */
  object?: string;
};

/** ztunnel's sockets inside one pod's netns, as held by a ztunnel process. */
export interface PodListeners {
  readonly outbound: SocketHolder;
  readonly inbound: SocketHolder;
  readonly hbone: SocketHolder;
}

export interface PodCapture {
  /** /proc/<pid>/ns/net of a process in the pod. */
  readonly netnsPath: string;
  readonly netnsCookie: bigint;
  /** The pod's IPs (the keys inbound connections arrive with). */
  readonly ips: readonly string[];
  readonly listeners: PodListeners;
}

export class InpodDatapath {
  readonly mode = 'inpod' as const;
  readonly bpffs: string;
  readonly cgroup: string;
  readonly maps: DatapathMaps;
  readonly links: Readonly<Record<CgroupHook, LinkOutcome>>;
  /** The inpod maps, raw (tests and inspection). */
  readonly inpodMaps: Readonly<{ sk: BpfMap; pair: BpfMap; listen: BpfMap }>;
  readonly #object: BpfObject;

  private constructor(o: InpodDatapathOptions, object: BpfObject, links: Record<CgroupHook, LinkOutcome>) {
    this.bpffs = o.bpffs;
    this.cgroup = o.cgroup;
    this.#object = object;
    this.maps = new DatapathMaps((n) => objectMap([object], n));
    this.inpodMaps = { sk: object.map('ambpf_inpod_sk'), pair: object.map('ambpf_inpod_pair'), listen: object.map('ambpf_inpod_listen') };
    this.links = links;
  }

  /** Load (reusing pins), pin, attach the cgroup programs. Pods are added with attachPod. */
  static async open(o: InpodDatapathOptions): Promise<InpodDatapath> {
    assertPodsCgroup(o.cgroup);
    const path = o.object ?? (await ensureObjects()).objects[INPOD_OBJECT];
    if (!path) throw new DatapathError(`the BPF object ${INPOD_OBJECT} was not built; run \`ambpf build\`.`, { object: INPOD_OBJECT });
    const obj = BpfObject.open(path);
    try {
      sizeMaps(obj, o);
      obj.setPinDir(o.bpffs);
      obj.load();
      const missing = MAP_NAMES.filter((n) => !obj.maps.some((m) => m.name === n));
      if (missing.length > 0) throw new DatapathError(`${INPOD_OBJECT} lacks the shared maps ${missing.join(', ')}; it must include ambpf_maps.h.`);
      const cgroupIno = BigInt(statSync(o.cgroup).ino);
      const links = {} as Record<CgroupHook, LinkOutcome>;
      for (const hook of Object.keys(CGROUP_HOOKS) as CgroupHook[]) {
        const prog = obj.program(INPOD_CGROUP_HOOKS[hook]);
        links[hook] = ensurePinnedLink({
          pin: join(o.bpffs, 'links', hook),
          prog,
          attach: () => prog.attachCgroup(o.cgroup),
          sameTarget: (info) => info.cgroupId === cgroupIno,
        });
      }
      log.info({ bpffs: o.bpffs, cgroup: o.cgroup, links }, 'inpod datapath attached');
      return new InpodDatapath(o, obj, links);
    } catch (err) {
      obj.close();
      throw err;
    }
  }

  #lookupProg(): BpfProgram {
    return this.#object.program('ambpf_inpod_lookup');
  }

  /** Summed per-CPU counters. */
  stats(): s.Stats {
    return this.maps.stats();
  }

  /**
   * Capture one pod: listeners tagged and registered, then sk_lookup on its netns. Idempotent (a
   * later call with ztunnel's new listeners after a ztunnel restart replaces the old ones).
   */
  attachPod(p: PodCapture): LinkOutcome {
    const { outbound, inbound, hbone } = p.listeners;
    withCopiedFds([outbound, inbound, hbone], ([out, inb, hb]) => {
      // The cookie goes on the listener; accepted sockets inherit it (BPF_F_CLONE).
      this.inpodMaps.sk.update(fdKey(out!), s.encodeInpodSk({ orig: null, netnsCookie: p.netnsCookie }));
      for (const ip of p.ips) {
        this.inpodMaps.listen.update(s.encodeInpodListenKey(ip, s.LISTENER_INBOUND), s.encodeU64Key(BigInt(inb!)));
        this.inpodMaps.listen.update(s.encodeInpodListenKey(ip, s.LISTENER_HBONE), s.encodeU64Key(BigInt(hb!)));
      }
    });
    const prog = this.#lookupProg();
    const ino = statSync(p.netnsPath).ino;
    return ensurePinnedLink({
      pin: this.#podPin(p.netnsCookie),
      prog,
      attach: () => prog.attachNetns(p.netnsPath),
      sameTarget: (info) => info.netnsIno === ino,
    });
  }

  /** Release a pod: its listener entries and its sk_lookup link. False when no link was pinned. */
  detachPod(netnsCookie: bigint, ips: readonly string[]): boolean {
    for (const ip of ips) {
      for (const slot of [s.LISTENER_INBOUND, s.LISTENER_HBONE]) this.inpodMaps.listen.delete(s.encodeInpodListenKey(ip, slot));
    }
    return removePinnedLink(this.#podPin(netnsCookie));
  }

  /** Netns cookies of the pods whose sk_lookup link is pinned. */
  attachedPods(): Set<bigint> {
    const dir = join(this.bpffs, 'links');
    const out = new Set<bigint>();
    if (!existsSync(dir)) return out;
    for (const name of readdirSync(dir)) {
      if (name.startsWith(INPOD_LINK_PREFIX) && /^\d+$/.test(name.slice(INPOD_LINK_PREFIX.length))) out.add(BigInt(name.slice(INPOD_LINK_PREFIX.length)));
    }
    return out;
  }

  /** Whether a listener entry for this pod IP is still in the map (it leaves when ztunnel's socket closes). */
  hasListener(ip: string, slot: number): boolean {
    return this.inpodMaps.listen.lookup(s.encodeInpodListenKey(ip, slot)) !== undefined;
  }

  #podPin(cookie: bigint): string {
    return join(this.bpffs, 'links', `${INPOD_LINK_PREFIX}${cookie}`);
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
