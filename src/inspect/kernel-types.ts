// What `ambpf map|prog` needs from the kernel, as plain data. The implementation over libbpf-ts is
// in kernel.ts; the formatting modules only see this interface, so they can be tested on fakes.
// Calls that can fail return a negative errno (the libbpf 1.x convention) instead of throwing: the
// commands turn each failure into bpftool's exact message.
import type { Btf } from './btf.ts';

export interface MapInfo {
  readonly type: number;
  readonly id: number;
  readonly keySize: number;
  readonly valueSize: number;
  readonly maxEntries: number;
  readonly mapFlags: number;
  /** Raw name bytes as latin1, up to the first NUL. */
  readonly name: string;
  readonly ifindex: number;
  readonly btfVmlinuxValueTypeId: number;
  readonly netnsDev: bigint;
  readonly netnsIno: bigint;
  readonly btfId: number;
  readonly btfKeyTypeId: number;
  readonly btfValueTypeId: number;
}

export interface ProgInfo {
  readonly type: number;
  readonly id: number;
  readonly tag: Uint8Array;
  readonly jitedProgLen: number;
  readonly xlatedProgLen: number;
  /** ns since boot (CLOCK_BOOTTIME) */
  readonly loadTime: bigint;
  readonly createdByUid: number;
  readonly nrMapIds: number;
  readonly name: string;
  readonly ifindex: number;
  readonly gplCompatible: boolean;
  readonly netnsDev: bigint;
  readonly netnsIno: bigint;
  readonly btfId: number;
  readonly funcInfoRecSize: number;
  readonly nrFuncInfo: number;
  readonly runTimeNs: bigint;
  readonly runCnt: bigint;
  readonly recursionMisses: bigint;
}

export type ObjType = 'map' | 'prog' | 'link' | 'unknown';

/** A number >= 0 on success or a negative errno. */
export type Errno = number;

export interface InspectKernel {
  mapGetNextId(start: number): Errno;
  progGetNextId(start: number): Errno;
  mapFdById(id: number): Errno;
  progFdById(id: number): Errno;
  /** BPF_OBJ_GET on a pinned path. */
  objGet(path: string): Errno;
  close(fd: number): void;
  mapInfo(fd: number): MapInfo | Errno;
  progInfo(fd: number): ProgInfo | Errno;
  /** The map ids a program uses (second BPF_OBJ_GET_INFO_BY_FD call with a map_ids buffer). */
  progMapIds(fd: number, count: number): number[] | Errno;
  /** type_id of the program's first func_info record (its BTF FUNC), or a negative errno. */
  progFirstFuncTypeId(fd: number, recSize: number): Errno;
  lookup(fd: number, key: Uint8Array | null, valueBufSize: number): Uint8Array | Errno;
  getNextKey(fd: number, key: Uint8Array | null, keySize: number): Uint8Array | Errno;
  /** The BTF object with this id, parsed. */
  btfById(id: number): Btf | Errno;
  possibleCpus(): number;
  /** CLOCK_REALTIME and CLOCK_BOOTTIME now, as bpftool reads them to date a program's load. */
  clocks(): Clocks;
}

export interface Clocks {
  readonly realSec: bigint;
  readonly realNsec: bigint;
  readonly bootSec: bigint;
  readonly bootNsec: bigint;
}

export function isErrno(v: unknown): v is number {
  return typeof v === 'number' && v < 0;
}

/**
 * bpftool reuses one bpf_map_info across the maps of a listing or a multi-map dump, and this kernel
 * (6.18) only writes the BTF ids when the map has BTF, and the device fields when it is offloaded:
 * so a map without BTF listed after one with BTF shows the previous map's btf_id. bpftool prints
 * that; to stay identical, a listing carries those fields over the same way.
 */
export function carryOverMapInfo(prev: MapInfo | null, cur: MapInfo): MapInfo {
  if (!prev) return cur;
  const btf = cur.btfId
    ? {}
    : { btfId: prev.btfId, btfKeyTypeId: prev.btfKeyTypeId, btfValueTypeId: prev.btfValueTypeId };
  const dev = cur.ifindex ? {} : { ifindex: prev.ifindex, netnsDev: prev.netnsDev, netnsIno: prev.netnsIno };
  return { ...cur, ...btf, ...dev };
}
