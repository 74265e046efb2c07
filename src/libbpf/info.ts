// Kernel object info by fd and by id (maps, programs, links, BTF), as plain TS objects that keep
// the kernel's fields faithfully (what `ambpf map/prog show` formats like bpftool does).
import { readFileSync } from 'node:fs';
import { ERRNO } from '../errors.ts';
import { raw, addressOf } from './ffi.ts';
import { LibbpfError, check } from './errors.ts';
import {
  bpf_map_info,
  bpf_prog_info,
  bpf_func_info,
  bpf_link_info,
  bpf_btf_info,
  structBuffer,
  decodeStruct,
  sizeOf,
  type KoffiType,
} from './structs.ts';
import { MAP_TYPES, PROG_TYPES, ATTACH_TYPES, LINK_TYPES, nameOf } from './constants.ts';
import { closeFd } from './handle.ts';

export type ObjKind = 'map' | 'prog' | 'link' | 'btf';

export interface MapInfo {
  type: number;
  typeName: string;
  id: number;
  keySize: number;
  valueSize: number;
  maxEntries: number;
  flags: number;
  name: string;
  ifindex: number;
  btfVmlinuxValueTypeId: number;
  netnsDev: bigint;
  netnsIno: bigint;
  btfId: number;
  btfKeyTypeId: number;
  btfValueTypeId: number;
  mapExtra: bigint;
}

export interface ProgInfo {
  type: number;
  typeName: string;
  id: number;
  /** 8-byte program tag as 16 hex digits, like bpftool prints it. */
  tag: string;
  name: string;
  jitedProgLen: number;
  xlatedProgLen: number;
  /** ns since boot. */
  loadTime: bigint;
  createdByUid: number;
  /** How many maps the program uses (the kernel's count; mapIds holds them). */
  nrMapIds: number;
  mapIds: number[];
  ifindex: number;
  gplCompatible: boolean;
  netnsDev: bigint;
  netnsIno: bigint;
  btfId: number;
  /** Size of one func_info record (sizeof(struct bpf_func_info), 8) when the program has any. */
  funcInfoRecSize: number;
  nrFuncInfo: number;
  nrLineInfo: number;
  nrJitedKsyms: number;
  runTimeNs: bigint;
  runCnt: bigint;
  recursionMisses: bigint;
  verifiedInsns: number;
  attachBtfObjId: number;
  attachBtfId: number;
}

export interface LinkInfo {
  type: number;
  typeName: string;
  id: number;
  progId: number;
  attachType?: number;
  attachTypeName?: string;
  /** cgroup links. */
  cgroupId?: bigint;
  /** netns links (sk_lookup, flow dissector). */
  netnsIno?: number;
  /** tcx / xdp / netkit links. */
  ifindex?: number;
}

export interface BtfInfo {
  id: number;
  size: number;
  name: string;
  kernelBtf: boolean;
}

const u64 = (v: unknown): bigint => (typeof v === 'bigint' ? v : BigInt(v as number));
const cstr = (bytes: Uint8Array): string => {
  const b = Buffer.from(bytes);
  const end = b.indexOf(0);
  return b.toString('utf8', 0, end < 0 ? b.length : end);
};

function getInfo(fd: number, type: KoffiType, init: Record<string, number | bigint> = {}): Buffer {
  const buf = structBuffer(type, init);
  const len = [sizeOf(type)];
  check('bpf_obj_get_info_by_fd', raw.bpf_obj_get_info_by_fd(fd, buf, len) as number);
  return buf;
}

export function mapInfoByFd(fd: number): MapInfo {
  const r = decodeStruct<Record<string, unknown>>(getInfo(fd, bpf_map_info), bpf_map_info);
  const type = r['type'] as number;
  return {
    type,
    typeName: nameOf(MAP_TYPES, type),
    id: r['id'] as number,
    keySize: r['key_size'] as number,
    valueSize: r['value_size'] as number,
    maxEntries: r['max_entries'] as number,
    flags: r['map_flags'] as number,
    name: cstr(r['name'] as Uint8Array),
    ifindex: r['ifindex'] as number,
    btfVmlinuxValueTypeId: r['btf_vmlinux_value_type_id'] as number,
    netnsDev: u64(r['netns_dev']),
    netnsIno: u64(r['netns_ino']),
    btfId: r['btf_id'] as number,
    btfKeyTypeId: r['btf_key_type_id'] as number,
    btfValueTypeId: r['btf_value_type_id'] as number,
    mapExtra: u64(r['map_extra']),
  };
}

export function progInfoByFd(fd: number): ProgInfo {
  // First call learns how many map ids there are; the second hands the kernel a buffer for them.
  let r = decodeStruct<Record<string, unknown>>(getInfo(fd, bpf_prog_info), bpf_prog_info);
  const nrMaps = r['nr_map_ids'] as number;
  let mapIds: number[] = [];
  if (nrMaps > 0) {
    const ids = Buffer.alloc(nrMaps * 4);
    r = decodeStruct<Record<string, unknown>>(
      getInfo(fd, bpf_prog_info, { nr_map_ids: nrMaps, map_ids: addressOf(ids) }),
      bpf_prog_info,
    );
    const n = Math.min(nrMaps, r['nr_map_ids'] as number);
    mapIds = Array.from({ length: n }, (_, i) => ids.readUInt32LE(i * 4));
  }
  const type = r['type'] as number;
  return {
    type,
    typeName: nameOf(PROG_TYPES, type),
    id: r['id'] as number,
    tag: Buffer.from(r['tag'] as Uint8Array).toString('hex'),
    name: cstr(r['name'] as Uint8Array),
    jitedProgLen: r['jited_prog_len'] as number,
    xlatedProgLen: r['xlated_prog_len'] as number,
    loadTime: u64(r['load_time']),
    createdByUid: r['created_by_uid'] as number,
    nrMapIds: nrMaps,
    mapIds,
    ifindex: r['ifindex'] as number,
    gplCompatible: ((r['gpl_bits'] as number) & 1) === 1,
    netnsDev: u64(r['netns_dev']),
    netnsIno: u64(r['netns_ino']),
    btfId: r['btf_id'] as number,
    funcInfoRecSize: r['func_info_rec_size'] as number,
    nrFuncInfo: r['nr_func_info'] as number,
    nrLineInfo: r['nr_line_info'] as number,
    nrJitedKsyms: r['nr_jited_ksyms'] as number,
    runTimeNs: u64(r['run_time_ns']),
    runCnt: u64(r['run_cnt']),
    recursionMisses: u64(r['recursion_misses']),
    verifiedInsns: r['verified_insns'] as number,
    attachBtfObjId: r['attach_btf_obj_id'] as number,
    attachBtfId: r['attach_btf_id'] as number,
  };
}

/** One func_info record: where a function starts (in instructions) and its BTF FUNC type id. */
export interface FuncInfo {
  insnOff: number;
  typeId: number;
}

const FUNC_INFO_SIZE = sizeOf(bpf_func_info);

/**
 * A program's func_info records (one per BPF function, the main one first), at most `limit` of them:
 * bpftool reads only the first to recover a long program name from BTF. [] when the program was
 * loaded without BTF.
 */
export function progFuncInfo(fd: number, limit = Number.MAX_SAFE_INTEGER): FuncInfo[] {
  const first = decodeStruct<Record<string, unknown>>(getInfo(fd, bpf_prog_info), bpf_prog_info);
  const n = Math.min(first['nr_func_info'] as number, limit);
  if (n <= 0) return [];
  // The kernel insists on its own record size, so ask for exactly sizeof(struct bpf_func_info).
  const recs = Buffer.alloc(n * FUNC_INFO_SIZE);
  const r = decodeStruct<Record<string, unknown>>(
    getInfo(fd, bpf_prog_info, { nr_func_info: n, func_info_rec_size: FUNC_INFO_SIZE, func_info: addressOf(recs) }),
    bpf_prog_info,
  );
  const got = Math.min(n, r['nr_func_info'] as number);
  return Array.from({ length: got }, (_, i) => ({
    insnOff: recs.readUInt32LE(i * FUNC_INFO_SIZE),
    typeId: recs.readUInt32LE(i * FUNC_INFO_SIZE + 4),
  }));
}

export function linkInfoByFd(fd: number): LinkInfo {
  const r = decodeStruct<Record<string, unknown>>(getInfo(fd, bpf_link_info), bpf_link_info);
  const type = r['type'] as number;
  const u = Buffer.from(r['u'] as Uint8Array);
  const info: LinkInfo = {
    type,
    typeName: nameOf(LINK_TYPES, type),
    id: r['id'] as number,
    progId: r['prog_id'] as number,
  };
  const setAttach = (t: number): void => {
    info.attachType = t;
    info.attachTypeName = nameOf(ATTACH_TYPES, t);
  };
  // Union layouts from linux/bpf.h (tcx/netkit from 6.6+ headers).
  if (type === LINK_TYPES.cgroup) {
    info.cgroupId = u.readBigUInt64LE(0);
    setAttach(u.readUInt32LE(8));
  } else if (type === LINK_TYPES.netns) {
    info.netnsIno = u.readUInt32LE(0);
    setAttach(u.readUInt32LE(4));
  } else if (type === LINK_TYPES.tcx || type === LINK_TYPES.netkit) {
    info.ifindex = u.readUInt32LE(0);
    setAttach(u.readUInt32LE(4));
  } else if (type === LINK_TYPES.xdp) {
    info.ifindex = u.readUInt32LE(0);
  } else if (type === LINK_TYPES.sockmap) {
    setAttach(u.readUInt32LE(4));
  }
  return info;
}

export function btfInfoByFd(fd: number): BtfInfo {
  const name = Buffer.alloc(256);
  const buf = getInfo(fd, bpf_btf_info, { name: addressOf(name), name_len: name.length });
  const r = decodeStruct<Record<string, unknown>>(buf, bpf_btf_info);
  return {
    id: r['id'] as number,
    size: r['btf_size'] as number,
    name: cstr(name),
    kernelBtf: (r['kernel_btf'] as number) !== 0,
  };
}

const NEXT_ID = {
  map: raw.bpf_map_get_next_id,
  prog: raw.bpf_prog_get_next_id,
  link: raw.bpf_link_get_next_id,
  btf: raw.bpf_btf_get_next_id,
};
const FD_BY_ID = {
  map: raw.bpf_map_get_fd_by_id,
  prog: raw.bpf_prog_get_fd_by_id,
  link: raw.bpf_link_get_fd_by_id,
  btf: raw.bpf_btf_get_fd_by_id,
};

/** Every id of a kind the kernel has now, ascending (bpf_*_get_next_id). */
export function listIds(kind: ObjKind): number[] {
  const ids: number[] = [];
  const next = [0];
  let cur = 0;
  for (;;) {
    const rc = NEXT_ID[kind](cur, next) as number;
    if (rc === -ERRNO.ENOENT /* the end */) return ids;
    check(`bpf_${kind}_get_next_id`, rc);
    cur = next[0] ?? 0;
    ids.push(cur);
  }
}

/**
 * Ids of the programs attached to a target (cgroup, netns, sockmap/sockhash fd) for one attach type
 * (bpf_prog_query). Kernels before 6.0 cannot list a sockmap's programs: they answer EINVAL.
 */
export function attachedProgIds(targetFd: number, attachType: number, max = 64): number[] {
  const ids = new Uint32Array(max);
  const cnt = [max];
  check('bpf_prog_query', raw.bpf_prog_query(targetFd, attachType, 0, [0], ids, cnt) as number, {
    hint: `attach type ${nameOf(ATTACH_TYPES, attachType)}`,
  });
  return Array.from(ids.subarray(0, Math.min(cnt[0] ?? 0, max)));
}

/** A new fd for the object with this id (the caller closes it). */
export function fdById(kind: ObjKind, id: number): number {
  const rc = FD_BY_ID[kind](id) as number;
  if (rc < 0) throw new LibbpfError(`bpf_${kind}_get_fd_by_id`, -rc, { hint: `no ${kind} with id ${id}` });
  return rc;
}

/** Run fn with a temporary fd for (kind, id). */
export function withFdById<T>(kind: ObjKind, id: number, fn: (fd: number) => T): T {
  const fd = fdById(kind, id);
  try {
    return fn(fd);
  } finally {
    closeFd(fd);
  }
}

/** The key/value lines of /proc/self/fdinfo/<fd> (map_type, frozen, memlock, prog_tag, link_type...). */
export function fdinfo(fd: number): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8').split('\n')) {
    const i = line.indexOf(':');
    if (i > 0) out[line.slice(0, i).trim()] = line.slice(i + 1).trim();
  }
  return out;
}

/** What kind of BPF object an fd refers to, from its fdinfo (null: not a BPF object we know). */
export function kindOfFd(fd: number): ObjKind | null {
  const info = fdinfo(fd);
  if ('map_type' in info) return 'map';
  if ('prog_type' in info) return 'prog';
  if ('link_type' in info) return 'link';
  try {
    btfInfoByFd(fd);
    return 'btf';
  } catch {
    return null;
  }
}

/** bpf_obj_get: an fd for the object pinned at path (the caller closes it). */
export function openPinnedFd(path: string): number {
  const rc = raw.bpf_obj_get(path) as number;
  if (rc < 0) {
    const errno = -rc;
    throw new LibbpfError('bpf_obj_get', errno, {
      path,
      hint:
        errno === ERRNO.ENOENT ? `nothing is pinned at ${path} (is bpffs mounted and the loader running?)` : undefined,
    });
  }
  return rc;
}

/** bpf_obj_pin an fd at path. */
export function pinFd(fd: number, path: string, what: { map?: string; program?: string; link?: string } = {}): void {
  const rc = raw.bpf_obj_pin(fd, path) as number;
  if (rc < 0) {
    const errno = -rc;
    throw new LibbpfError('bpf_obj_pin', errno, {
      ...what,
      path,
      hint:
        errno === ERRNO.EEXIST
          ? `${path} is already pinned`
          : errno === ERRNO.ENOENT
            ? `the directory of ${path} does not exist or is not on bpffs`
            : undefined,
    });
  }
}
