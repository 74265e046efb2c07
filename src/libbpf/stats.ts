// The kernel's BPF run-time statistics: while enabled, every program run adds to its run_cnt and
// run_time_ns (bpf_prog_info), at the price of two clock reads per run. Enabled by holding the fd
// BPF_ENABLE_STATS returns rather than by writing kernel.bpf_stats_enabled: the kernel counts the
// holders (two benchmarks at once do not switch each other off) and drops ours when the process
// ends however it ends, so a crashed run cannot leave the machine paying for the statistics.
// The sysctl shows only its own setting: it reads 0 while the statistics are on through an fd.
import { readFileSync } from 'node:fs';
import { ERRNO } from '../errors.ts';
import { raw } from './ffi.ts';
import { LibbpfError } from './errors.ts';
import { Handle, closeFd } from './handle.ts';
import { progInfoByFd, withFdById } from './info.ts';
import { EXIT, MOV64_IMM, RawProgram } from './rawprog.ts';

const BPF_STATS_RUN_TIME = 0;
const SYSCTL = '/proc/sys/kernel/bpf_stats_enabled';

export class BpfRunTimeStats extends Handle {
  readonly #fd: number;

  private constructor(fd: number) {
    super();
    this.#fd = fd;
  }

  /** Turns the statistics on until close() (or the end of the process). Needs CAP_SYS_ADMIN. */
  static enable(): BpfRunTimeStats {
    const rc = raw.bpf_enable_stats(BPF_STATS_RUN_TIME) as number;
    if (rc < 0) {
      const errno = -rc;
      throw new LibbpfError('bpf_enable_stats', errno, {
        hint: errno === ERRNO.EPERM ? 'BPF run-time statistics need CAP_SYS_ADMIN' : undefined,
      });
    }
    return new BpfRunTimeStats(rc);
  }

  protected describe(): string {
    return 'BPF run-time statistics';
  }

  protected release(): void {
    closeFd(this.#fd);
  }
}

/** kernel.bpf_stats_enabled: whether someone turned the statistics on by the sysctl (fd holders do not show). */
export function bpfStatsSysctl(): boolean {
  return readFileSync(SYSCTL, 'utf8').trim() === '1';
}

export interface ProgRunStats {
  readonly id: number;
  readonly runCnt: bigint;
  readonly runTimeNs: bigint;
}

/** run_cnt and run_time_ns of a program by id; undefined when it is gone. */
export function progRunStats(id: number): ProgRunStats | undefined {
  try {
    return withFdById('prog', id, (fd) => {
      const info = progInfoByFd(fd);
      return { id, runCnt: info.runCnt, runTimeNs: info.runTimeNs };
    });
  } catch (err) {
    if (err instanceof LibbpfError && err.code === 'ENOENT') return undefined;
    throw err;
  }
}

/**
 * What a program that does nothing (r0 = 0; exit) measures per run while the statistics are on (the
 * caller holds them): run `runs` times by BPF_PROG_TEST_RUN, run_time_ns / run_cnt. The kernel times
 * each run between two clock reads around the call into the program, as at a hook, so this is the part
 * of every measured run that is not the program's own work: the clock's share inside the window and
 * the call itself (the full cost of the statistics, the reads and the counter update, is larger).
 * undefined when nothing was counted (the statistics are off).
 */
export function statsCostPerRunNs(runs = 200_000): number | undefined {
  const prog = RawProgram.load('socket_filter', [MOV64_IMM(0, 0), EXIT()]);
  try {
    // A socket filter test-runs over a packet: an Ethernet header's worth is the least it takes. A
    // pending signal (a child's SIGCHLD) ends the repeat loop early with EINTR: the runs done until
    // then are counted all the same, and the ratio needs nothing else.
    try {
      prog.testRun({ data: new Uint8Array(64), repeat: runs, dataOutSize: 0 });
    } catch (err) {
      if (!(err instanceof LibbpfError && err.code === 'EINTR')) throw err;
    }
    const info = progInfoByFd(prog.fd);
    if (info.runCnt === 0n) return undefined;
    return Number(info.runTimeNs) / Number(info.runCnt);
  } finally {
    prog.close();
  }
}
