// tc attachment of sched_cls programs: a tcx bpf_link (Linux 6.6+) or a clsact filter (any
// kernel). `auto` tries tcx and falls back to clsact when the kernel refuses the link type.
// ifindexes belong to a netns: pass `netns` to attach (and later detach) inside another one.
import { ERRNO } from '../errors.ts';
import { raw } from './ffi.ts';
import { LibbpfError, check } from './errors.ts';
import { BpfLink } from './link.ts';
import { ATTACH_TYPES } from './constants.ts';
import { bpf_tc_hook, bpf_tc_opts, optsBuffer, decodeStruct } from './structs.ts';
import { inNetns } from './netns.ts';
import { ifIndex } from './sockets.ts';

export type TcDirection = 'ingress' | 'egress';
export type TcMode = 'tcx' | 'clsact' | 'auto';

export interface TcAttachOptions {
  mode?: TcMode;
  /** Netns (path) the interface lives in; default the current one. */
  netns?: string;
  /** clsact only: filter priority (default: the kernel picks) and handle. */
  priority?: number;
  handle?: number;
}

const BPF_TC_INGRESS = 1;
const BPF_TC_EGRESS = 2;

/** Resolve an interface name or index inside the current netns. */
export function resolveIfindex(iface: number | string): number {
  if (typeof iface === 'number') return iface;
  const idx = ifIndex(iface);
  if (!idx) throw new LibbpfError('if_nametoindex', ERRNO.ENODEV, { hint: `no interface named ${iface}` });
  return idx;
}

/** One tc attachment; detach()/close() remove exactly this program and nothing else on the hook. */
export class TcAttachment {
  readonly mode: 'tcx' | 'clsact';
  readonly ifindex: number;
  readonly direction: TcDirection;
  /** The tcx link (mode tcx): pin it to keep the program attached across restarts. */
  readonly link: BpfLink | null;
  /** clsact filter identity (mode clsact). */
  readonly handle: number;
  readonly priority: number;
  readonly netns: string | undefined;
  #done = false;

  constructor(init: {
    mode: 'tcx' | 'clsact';
    ifindex: number;
    direction: TcDirection;
    link: BpfLink | null;
    handle: number;
    priority: number;
    netns: string | undefined;
  }) {
    this.mode = init.mode;
    this.ifindex = init.ifindex;
    this.direction = init.direction;
    this.link = init.link;
    this.handle = init.handle;
    this.priority = init.priority;
    this.netns = init.netns;
  }

  /** Remove the program from the hook. */
  detach(): void {
    if (this.#done) return;
    this.#done = true;
    if (this.link) {
      this.link.close();
      return;
    }
    inNetns(this.netns, () => {
      const hook = tcHook(this.ifindex, this.direction);
      const opts = optsBuffer(bpf_tc_opts, { handle: this.handle, priority: this.priority });
      const rc = raw.bpf_tc_detach(hook, opts) as number;
      // ENOENT: someone (or the interface's removal) already took it away.
      if (rc !== -ERRNO.ENOENT) check('bpf_tc_detach', rc, { hint: `ifindex ${this.ifindex} ${this.direction}` });
    });
  }

  close(): void {
    this.detach();
  }

  [Symbol.dispose](): void {
    this.detach();
  }
}

function tcHook(ifindex: number, direction: TcDirection): Buffer {
  return optsBuffer(bpf_tc_hook, { ifindex, attach_point: direction === 'ingress' ? BPF_TC_INGRESS : BPF_TC_EGRESS });
}

/** tcx link via bpf_link_create (libbpf 1.1 has no bpf_program__attach_tcx). */
export function attachTcx(progFd: number, ifindex: number, direction: TcDirection, label: string): BpfLink {
  const type = direction === 'ingress' ? ATTACH_TYPES.tcx_ingress : ATTACH_TYPES.tcx_egress;
  const fd = raw.bpf_link_create(progFd, ifindex, type, null) as number;
  if (fd < 0)
    throw new LibbpfError('bpf_link_create', -fd, {
      program: label,
      hint: `tcx ${direction} on ifindex ${ifindex} (tcx needs Linux 6.6+)`,
    });
  return BpfLink.fromFd(fd, `tcx ${direction} ifindex ${ifindex}`);
}

/** clsact filter via bpf_tc_hook_create + bpf_tc_attach (direct-action). */
export function attachClsact(
  progFd: number,
  ifindex: number,
  direction: TcDirection,
  label: string,
  priority = 0,
  handle = 0,
): { handle: number; priority: number } {
  const hook = tcHook(ifindex, direction);
  const rc = raw.bpf_tc_hook_create(hook) as number;
  if (rc !== -ERRNO.EEXIST /* clsact already there, fine */)
    check('bpf_tc_hook_create', rc, { program: label, hint: `clsact on ifindex ${ifindex}` });
  const opts = optsBuffer(bpf_tc_opts, { prog_fd: progFd, priority, handle });
  check('bpf_tc_attach', raw.bpf_tc_attach(hook, opts) as number, {
    program: label,
    hint: `clsact ${direction} on ifindex ${ifindex}`,
  });
  const out = decodeStruct<{ handle: number; priority: number }>(opts, bpf_tc_opts);
  return { handle: out.handle, priority: out.priority };
}

/** Attach progFd at iface/direction per opts.mode. */
export function attachTc(
  progFd: number,
  label: string,
  iface: number | string,
  direction: TcDirection,
  opts: TcAttachOptions = {},
): TcAttachment {
  const mode = opts.mode ?? 'auto';
  return inNetns(opts.netns, () => {
    const ifindex = resolveIfindex(iface);
    const base = { ifindex, direction, netns: opts.netns };
    if (mode !== 'clsact') {
      try {
        const link = attachTcx(progFd, ifindex, direction, label);
        return new TcAttachment({ ...base, mode: 'tcx', link, handle: 0, priority: 0 });
      } catch (err) {
        // Kernels before 6.6 answer EINVAL for the unknown attach type: that is the fallback case.
        if (mode === 'tcx' || !(err instanceof LibbpfError) || err.code !== 'EINVAL') throw err;
      }
    }
    const { handle, priority } = attachClsact(progFd, ifindex, direction, label, opts.priority ?? 0, opts.handle ?? 0);
    return new TcAttachment({ ...base, mode: 'clsact', link: null, handle, priority });
  });
}

/** Remove the clsact qdisc of an interface (both directions), e.g. when a test tears down. */
export function destroyClsact(ifindex: number, netns?: string): void {
  inNetns(netns, () => {
    const hook = optsBuffer(bpf_tc_hook, { ifindex, attach_point: BPF_TC_INGRESS | BPF_TC_EGRESS });
    const rc = raw.bpf_tc_hook_destroy(hook) as number;
    if (rc !== -ERRNO.ENOENT && rc !== -ERRNO.EINVAL)
      check('bpf_tc_hook_destroy', rc, { hint: `clsact on ifindex ${ifindex}` });
  });
}
