// Kernel clocks Node does not expose. BPF timestamps (a program's load_time, bpf_ktime_get_boot_ns)
// count from boot on CLOCK_BOOTTIME, which keeps running during suspend; process.hrtime is
// CLOCK_MONOTONIC, which does not, so dating a program with it drifts on any machine that slept.
import { libcRaw, lastErrno } from './ffi.ts';
import { SystemError } from '../errors.ts';

export const CLOCKS = { realtime: 0, monotonic: 1, boottime: 7 } as const;
export type ClockName = keyof typeof CLOCKS;

/** One clock_gettime reading, seconds and nanoseconds as the kernel gives them. */
export interface Timespec {
  readonly sec: bigint;
  readonly nsec: bigint;
}

export function clockGettime(clock: ClockName): Timespec {
  const ts = new Uint8Array(16); // struct timespec on 64-bit Linux: two longs
  if ((libcRaw.clock_gettime(CLOCKS[clock], ts) as number) !== 0) {
    throw new SystemError(`clock_gettime(${clock})`, lastErrno(), 'the kernel refused to read the clock');
  }
  const b = Buffer.from(ts.buffer, ts.byteOffset, ts.byteLength);
  return { sec: b.readBigInt64LE(0), nsec: b.readBigInt64LE(8) };
}

/** ns since boot, the unit of a program's load_time. */
export function bootTimeNs(): bigint {
  const t = clockGettime('boottime');
  return t.sec * 1_000_000_000n + t.nsec;
}

/**
 * CLOCK_REALTIME and CLOCK_BOOTTIME read back to back: the pair bpftool reads to turn load_time into
 * a wall-clock time (realtime - boottime + load_time), kept as parts so its integer arithmetic can be
 * reproduced exactly.
 */
export function bootEpochParts(): { realSec: bigint; realNsec: bigint; bootSec: bigint; bootNsec: bigint } {
  const real = clockGettime('realtime');
  const boot = clockGettime('boottime');
  return { realSec: real.sec, realNsec: real.nsec, bootSec: boot.sec, bootNsec: boot.nsec };
}
