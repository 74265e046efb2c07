// Native calls libbpf-ts does not expose yet: a program's first func_info record (bpftool takes a
// long program's full name from it, a BPF_OBJ_GET_INFO_BY_FD read) and libc
// clock_gettime(CLOCK_BOOTTIME). Declared here until libbpf-ts grows `progFuncInfo(fd)` and a
// boot-clock reading; then this file goes away.
import koffi from 'koffi';
import type { Errno } from './kernel-types.ts';

type InfoFn = (fd: number, info: Buffer, len: number[]) => number;
let getInfo: InfoFn | undefined;

function objGetInfo(fd: number, info: Buffer): number {
  getInfo ??= koffi.load('libbpf.so.1').func('int bpf_obj_get_info_by_fd(int fd, void *info, _Inout_ uint32_t *len)') as InfoFn;
  return getInfo(fd, info, [info.length]);
}

// struct bpf_prog_info: func_info_rec_size @132, func_info @136, nr_func_info @144; 232 bytes in 6.x.
const PROG_INFO_SIZE = 232;

/** type_id of a program's first func_info record (its main function's BTF FUNC). */
export function progFirstFuncTypeId(progFd: number): Errno {
  const rec = Buffer.alloc(8); // struct bpf_func_info { insn_off, type_id }
  const info = Buffer.alloc(PROG_INFO_SIZE);
  info.writeUInt32LE(8, 132);
  info.writeBigUInt64LE(koffi.address(rec), 136);
  info.writeUInt32LE(1, 144);
  const rc = objGetInfo(progFd, info);
  if (rc < 0) return rc;
  if (info.readUInt32LE(144) === 0) return -2;
  return rec.readUInt32LE(4);
}

type ClockFn = (clock: number, ts: Buffer) => number;
let clockGettime: ClockFn | undefined;

/** clock_gettime(CLOCK_REALTIME) - clock_gettime(CLOCK_BOOTTIME) in ns: the boot moment, as bpftool
 *  computes it to turn a program's load_time (ns since boot) into a wall-clock time. Node has no
 *  CLOCK_BOOTTIME (process.hrtime is CLOCK_MONOTONIC, which stops during suspend). */
export function bootEpochParts(): { realSec: bigint; realNsec: bigint; bootSec: bigint; bootNsec: bigint } {
  clockGettime ??= koffi.load('libc.so.6').func('int clock_gettime(int clk, void *ts)') as ClockFn;
  const real = Buffer.alloc(16);
  const boot = Buffer.alloc(16);
  clockGettime(0 /* CLOCK_REALTIME */, real);
  clockGettime(7 /* CLOCK_BOOTTIME */, boot);
  return { realSec: real.readBigInt64LE(0), realNsec: real.readBigInt64LE(8), bootSec: boot.readBigInt64LE(0), bootNsec: boot.readBigInt64LE(8) };
}
