// Programs loaded from raw instructions (bpf_prog_load), for feature probes: a helper call the
// verifier accepts or refuses, a do-nothing sched_cls to try a tcx link. Not for ambpf's datapath,
// which always comes from compiled objects.
import { raw, addressOf } from './ffi.ts';
import { LibbpfError } from './errors.ts';
import { Handle, closeFd } from './handle.ts';
import { PROG_TYPES, ATTACH_TYPES, type ProgTypeName, type AttachTypeName } from './constants.ts';
import { bpf_prog_load_opts, optsBuffer } from './structs.ts';
import { testRunFd, type TestRunOptions, type TestRunResult } from './program.ts';

/** One bpf_insn: code, dst/src registers, offset, immediate. */
export function insn(code: number, dst = 0, src = 0, off = 0, imm = 0): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt8(code, 0);
  b.writeUInt8(((src & 0xf) << 4) | (dst & 0xf), 1);
  b.writeInt16LE(off, 2);
  b.writeInt32LE(imm, 4);
  return b;
}
export const MOV64_IMM = (dst: number, imm: number): Buffer => insn(0xb7, dst, 0, 0, imm);
export const CALL = (helper: number): Buffer => insn(0x85, 0, 0, 0, helper);
export const EXIT = (): Buffer => insn(0x95);

/** Program types whose load needs an expected attach type. */
const DEFAULT_ATTACH: Partial<Record<ProgTypeName, AttachTypeName>> = {
  cgroup_sock_addr: 'cgroup_inet4_connect',
  cgroup_sockopt: 'cgroup_getsockopt',
  sk_lookup: 'sk_lookup',
  cgroup_sock: 'cgroup_inet_sock_create',
};

export interface RawLoadResult {
  /** The program (null when the verifier refused it). */
  prog: RawProgram | null;
  errno: number;
  log: string;
}

export class RawProgram extends Handle {
  readonly #fd: number;
  private constructor(fd: number) {
    super();
    this.#fd = fd;
  }

  /** Try to load; never throws for a refusal (probes want the verdict and the log). */
  static tryLoad(
    type: ProgTypeName,
    insns: readonly Buffer[],
    opts: { attachType?: AttachTypeName; license?: string } = {},
  ): RawLoadResult {
    const code = Buffer.concat([...insns]);
    const log = Buffer.alloc(64 * 1024);
    const attach = opts.attachType ?? DEFAULT_ATTACH[type];
    const o = optsBuffer(bpf_prog_load_opts, {
      expected_attach_type: attach ? ATTACH_TYPES[attach] : 0,
      log_level: 1,
      log_size: log.length,
      log_buf: addressOf(log),
    });
    const fd = raw.bpf_prog_load(
      PROG_TYPES[type],
      'ambpf_probe',
      opts.license ?? 'GPL',
      code,
      insns.length,
      o,
    ) as number;
    const end = log.indexOf(0);
    const text = log.toString('utf8', 0, end < 0 ? log.length : end);
    return fd >= 0 ? { prog: new RawProgram(fd), errno: 0, log: text } : { prog: null, errno: -fd, log: text };
  }

  /** Load or throw a LibbpfError with the verifier log. */
  static load(
    type: ProgTypeName,
    insns: readonly Buffer[],
    opts: { attachType?: AttachTypeName; license?: string } = {},
  ): RawProgram {
    const r = RawProgram.tryLoad(type, insns, opts);
    if (!r.prog)
      throw new LibbpfError('bpf_prog_load', r.errno, { program: `raw ${type}`, verifierLog: r.log || undefined });
    return r.prog;
  }

  protected describe(): string {
    return `raw program fd ${this.#fd}`;
  }
  protected release(): void {
    closeFd(this.#fd);
  }
  get fd(): number {
    this.ensureOpen();
    return this.#fd;
  }

  /** BPF_PROG_TEST_RUN (see BpfProgram.testRun). */
  testRun(opts: TestRunOptions = {}): TestRunResult {
    return testRunFd(this.fd, 'ambpf_probe', opts);
  }
}
