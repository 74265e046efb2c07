// What ambpf has attached, read from its pins (<bpffs>/links/<hook>[-<ifname>], docs/architecture.md "Lifecycle") and,
// for sk_msg (attached to the sockhash with prog_attach, so never pinned as a link), from the
// sockhash itself.
import {
  ATTACH_TYPES,
  BpfLink,
  BpfMap,
  Btf,
  LibbpfError,
  attachedProgIds,
  progFuncInfo,
  progInfoByFd,
  withFdById,
  type LinkInfo,
} from '../libbpf/index.ts';
import { linkNames, linkPin, mapPin, parseLinkName } from '../bpf/pins.ts';
import { mountsOf } from '../doctor/system.ts';
import { cgroupPathById, netnsPathByIno } from './targets.ts';

export interface AttachedRow {
  /** Pin name under <bpffs>/links (the hook), or 'sk_msg'. */
  readonly hook: string;
  readonly linkId: number | null;
  /** link type (cgroup, tcx, netns) or 'prog_attach'. */
  readonly kind: string;
  readonly progId: number | null;
  readonly progName: string | null;
  readonly target: string;
  /** Why the row is not healthy (defunct link, unreadable pin), else null. */
  readonly problem: string | null;
}

/** The program's name, the full one from BTF when the kernel's 15 bytes cut it. */
export function progName(progId: number): string | null {
  try {
    return withFdById('prog', progId, (fd) => {
      const info = progInfoByFd(fd);
      if (info.name.length < 15 || !info.btfId) return info.name;
      const [first] = progFuncInfo(fd, 1);
      if (!first) return info.name;
      using btf = Btf.loadFromKernelById(info.btfId);
      const t = btf.type(first.typeId);
      return t.kind === 'func' && t.name ? t.name : info.name;
    });
  } catch {
    return null;
  }
}

/** Where cgroup v2 is mounted (/sys/fs/cgroup/unified on hybrid hosts, /sys/fs/cgroup on unified ones). */
function cgroup2Root(): string {
  return mountsOf('cgroup2')[0] ?? '/sys/fs/cgroup';
}

function describeTarget(hook: string, info: LinkInfo): { target: string; problem: string | null } {
  if (info.cgroupId !== undefined) {
    if (info.cgroupId === 0n) return { target: 'cgroup (gone)', problem: 'defunct: its cgroup was removed' };
    const path = cgroupPathById(cgroup2Root(), info.cgroupId);
    return { target: `cgroup ${path ?? `id ${info.cgroupId} (not found under ${cgroup2Root()})`}`, problem: null };
  }
  if (info.netnsIno !== undefined) {
    if (info.netnsIno === 0) return { target: 'netns (gone)', problem: 'defunct: its netns was removed' };
    return { target: `netns ${netnsPathByIno(info.netnsIno) ?? '?'} (inode ${info.netnsIno})`, problem: null };
  }
  if (info.ifindex !== undefined) {
    if (info.ifindex === 0) return { target: 'interface (gone)', problem: 'defunct: its interface was removed' };
    // The ifindex lives in the node's netns, which need not be ours: the pin name carries the name.
    const pin = parseLinkName(hook);
    const ifname = pin?.kind === 'tc' ? pin.ifname : '?';
    const dir = info.attachTypeName?.replace(/^tcx_/, '') ?? '';
    return { target: `${ifname} (ifindex ${info.ifindex}${dir ? `, ${dir}` : ''})`, problem: null };
  }
  return { target: '?', problem: null };
}

export function readLinks(bpffs: string): AttachedRow[] {
  const rows: AttachedRow[] = [];
  for (const hook of linkNames(bpffs)) {
    try {
      using link = BpfLink.openPinned(linkPin(bpffs, hook));
      const info = link.info();
      const { target, problem } = describeTarget(hook, info);
      rows.push({
        hook,
        linkId: info.id,
        kind: info.typeName,
        progId: info.progId,
        progName: progName(info.progId),
        target,
        problem,
      });
    } catch (err) {
      const why = err instanceof LibbpfError ? err.message : String(err);
      rows.push({
        hook,
        linkId: null,
        kind: '?',
        progId: null,
        progName: null,
        target: '?',
        problem: `cannot read the pin: ${why}`,
      });
    }
  }
  rows.push(skMsgRow(bpffs));
  return rows;
}

function skMsgRow(bpffs: string): AttachedRow {
  const base = { hook: 'sk_msg', linkId: null, kind: 'prog_attach', target: 'sockhash ambpf_sockhash' };
  try {
    using map = BpfMap.openPinned(mapPin(bpffs, 'ambpf_sockhash'));
    const [id] = attachedProgIds(map.fd, ATTACH_TYPES.sk_msg_verdict);
    if (id === undefined)
      return {
        ...base,
        progId: null,
        progName: null,
        problem: 'no sk_msg program on the sockhash: same-node splice is off',
      };
    return { ...base, progId: id, progName: progName(id), problem: null };
  } catch (err) {
    // Kernels before 6.0 cannot list a sockmap's programs: say so rather than guess.
    if (err instanceof LibbpfError && err.code === 'EINVAL')
      return {
        ...base,
        progId: null,
        progName: null,
        problem: null,
        target: `${base.target} (this kernel cannot list it)`,
      };
    return { ...base, progId: null, progName: null, problem: err instanceof Error ? err.message : String(err) };
  }
}
