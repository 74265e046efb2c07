// BpfProgram: one program of a BpfObject (libbpf owns it; valid while the object is open).
// Attach methods return handles with their own lifetimes (BpfLink, TcAttachment, SkMsgAttachment).
import { openSync } from 'node:fs';
import { ERRNO } from '../errors.ts';
import { raw, cString, addressOf, type Ptr } from './ffi.ts';
import { LibbpfError, check } from './errors.ts';
import { Handle, closeFd } from './handle.ts';
import { PROG_TYPES, ATTACH_TYPES, nameOf, type AttachTypeName } from './constants.ts';
import { progInfoByFd, type ProgInfo } from './info.ts';
import { BpfLink } from './link.ts';
import type { BpfMap } from './map.ts';
import { attachTc, type TcAttachment, type TcAttachOptions, type TcDirection } from './tc.ts';
import { bpf_test_run_opts, optsBuffer, decodeStruct } from './structs.ts';

/** Hooks a BpfObject gives its programs. */
export interface ProgramOwner {
  readonly objectName: string;
  readonly closed: boolean;
  readonly loaded: boolean;
}

export interface TestRunOptions {
  /** Packet (skb programs need at least 14 bytes: an Ethernet header). */
  data?: Uint8Array;
  /** Context struct in (e.g. struct __sk_buff). */
  ctx?: Uint8Array;
  /** Room for data_out (default: data length + 256). */
  dataOutSize?: number;
  /** Room for ctx_out (default: ctx length). */
  ctxOutSize?: number;
  repeat?: number;
  flags?: number;
}

export interface TestRunResult {
  retval: number;
  dataOut: Uint8Array;
  ctxOut: Uint8Array;
  /** Average ns per repetition (informational: tests never assert speed). */
  durationNs: number;
}

/** sk_msg program attached to a sockmap/sockhash (not a link: it lives as long as the map). */
export class SkMsgAttachment {
  readonly #progFd: number;
  readonly #mapFd: number;
  readonly #label: string;
  #done = false;
  constructor(progFd: number, mapFd: number, label: string) {
    this.#progFd = progFd;
    this.#mapFd = mapFd;
    this.#label = label;
  }
  /** bpf_prog_detach2(prog, map, BPF_SK_MSG_VERDICT). Needs the program and the map still open. */
  detach(): void {
    if (this.#done) return;
    this.#done = true;
    const rc = raw.bpf_prog_detach2(this.#progFd, this.#mapFd, ATTACH_TYPES.sk_msg_verdict) as number;
    if (rc !== -ERRNO.ENOENT) check('bpf_prog_detach2', rc, { program: this.#label });
  }
}

function openDirFd(path: string, what: string, program: string): number {
  try {
    return openSync(path, 'r');
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw new LibbpfError('open', e.errno ? -e.errno : ERRNO.ENOENT, {
      program,
      path,
      hint: `cannot open ${what} ${path}`,
    });
  }
}

export class BpfProgram extends Handle {
  readonly #ptr: Ptr;
  readonly #owner: ProgramOwner;

  /** @internal made by BpfObject */
  constructor(ptr: Ptr, owner: ProgramOwner) {
    super();
    this.#ptr = ptr;
    this.#owner = owner;
  }

  protected describe(): string {
    return `program of object ${this.#owner.objectName}`;
  }

  protected release(): void {
    // freed with the object
  }

  protected override ensureOpen(): void {
    if (this.#owner.closed) this.close();
    super.ensureOpen();
  }

  #p(): Ptr {
    this.ensureOpen();
    return this.#ptr;
  }

  get name(): string {
    return cString(raw.bpf_program__name(this.#p())) ?? '?';
  }

  /** ELF section (e.g. "cgroup/connect4"), which tells libbpf the type and attach type. */
  get section(): string {
    return cString(raw.bpf_program__section_name(this.#p())) ?? '';
  }

  get type(): number {
    return raw.bpf_program__type(this.#p()) as number;
  }

  get typeName(): string {
    return nameOf(PROG_TYPES, this.type);
  }

  get expectedAttachType(): number {
    return raw.bpf_program__expected_attach_type(this.#p()) as number;
  }

  setExpectedAttachType(type: AttachTypeName | number): void {
    const t = typeof type === 'number' ? type : ATTACH_TYPES[type];
    check('bpf_program__set_expected_attach_type', raw.bpf_program__set_expected_attach_type(this.#p(), t) as number, {
      program: this.name,
    });
  }

  get autoload(): boolean {
    return raw.bpf_program__autoload(this.#p()) as boolean;
  }

  /** Skip (false) or include this program when the object loads; only before load(). */
  setAutoload(on: boolean): void {
    if (this.#owner.loaded)
      throw new LibbpfError('bpf_program__set_autoload', ERRNO.EBUSY, {
        program: this.name,
        hint: 'call it before load()',
      });
    check('bpf_program__set_autoload', raw.bpf_program__set_autoload(this.#p(), on) as number, { program: this.name });
  }

  /** @internal BpfObject points libbpf at a buffer for this program's verifier log. */
  setLogBuf(buf: Buffer | null): void {
    check(
      'bpf_program__set_log_buf',
      raw.bpf_program__set_log_buf(this.#p(), buf ? addressOf(buf) : null, buf ? buf.length : 0) as number,
      { program: this.name },
    );
  }

  /** Program fd (after load). */
  get fd(): number {
    const fd = raw.bpf_program__fd(this.#p()) as number;
    if (fd < 0)
      throw new LibbpfError('bpf_program__fd', -fd, {
        program: this.name,
        object: this.#owner.objectName,
        hint: 'the program is not loaded (load() not called, or autoload off)',
      });
    return fd;
  }

  info(): ProgInfo {
    return progInfoByFd(this.fd);
  }

  get id(): number {
    return this.info().id;
  }

  get tag(): string {
    return this.info().tag;
  }

  // ---- attach ----

  #linkCreate(targetFd: number, attachType: number, what: string): BpfLink {
    const fd = raw.bpf_link_create(this.fd, targetFd, attachType, null) as number;
    if (fd < 0) throw new LibbpfError('bpf_link_create', -fd, { program: this.name, hint: what });
    return BpfLink.fromFd(fd, `${this.name} ${what}`);
  }

  /**
   * Attach to a cgroup (v2 directory) as a bpf_link, with the attach type of the program's section
   * (connect4, getsockopt, sockops, ...) unless given. Links are multi-attach: they coexist with
   * other programs on the cgroup (a CNI's).
   */
  attachCgroup(cgroupPath: string, attachType?: AttachTypeName | number): BpfLink {
    const t =
      attachType === undefined
        ? this.expectedAttachType
        : typeof attachType === 'number'
          ? attachType
          : ATTACH_TYPES[attachType];
    const cg = openDirFd(cgroupPath, 'cgroup', this.name);
    try {
      return this.#linkCreate(cg, t, `cgroup ${cgroupPath} (${nameOf(ATTACH_TYPES, t)})`);
    } finally {
      closeFd(cg);
    }
  }

  /** sockops program on a cgroup. */
  attachSockops(cgroupPath: string): BpfLink {
    return this.attachCgroup(cgroupPath, 'cgroup_sock_ops');
  }

  /** sk_msg verdict program on a sockhash/sockmap; must happen before sockops fills the map. */
  attachSkMsg(map: BpfMap): SkMsgAttachment {
    const progFd = this.fd;
    const mapFd = map.fd;
    check('bpf_prog_attach', raw.bpf_prog_attach(progFd, mapFd, ATTACH_TYPES.sk_msg_verdict, 0) as number, {
      program: this.name,
      map: map.name,
    });
    return new SkMsgAttachment(progFd, mapFd, this.name);
  }

  /** sk_lookup (or flow dissector) program on a network namespace. */
  attachNetns(netnsPath: string): BpfLink {
    const t = this.type === PROG_TYPES.flow_dissector ? ATTACH_TYPES.flow_dissector : ATTACH_TYPES.sk_lookup;
    const ns = openDirFd(netnsPath, 'netns', this.name);
    try {
      return this.#linkCreate(ns, t, `netns ${netnsPath}`);
    } finally {
      closeFd(ns);
    }
  }

  /** sched_cls program on an interface, tcx or clsact (see tc.ts). */
  attachTc(iface: number | string, direction: TcDirection, opts: TcAttachOptions = {}): TcAttachment {
    return attachTc(this.fd, this.name, iface, direction, opts);
  }

  /**
   * BPF_PROG_TEST_RUN with a crafted packet/context. With repeat > 1 the kernel checks for a pending
   * signal between runs and fails with EINTR after some of them (bpf_test_timer_continue): not retried
   * here, since the runs done already had their effects (maps); a caller counting effects runs once.
   */
  testRun(opts: TestRunOptions = {}): TestRunResult {
    return testRunFd(this.fd, this.name, opts);
  }
}

/** BPF_PROG_TEST_RUN on a program fd (BpfProgram.testRun; RawProgram.testRun). */
export function testRunFd(fd: number, name: string, opts: TestRunOptions = {}): TestRunResult {
  const data = opts.data ? Buffer.from(opts.data) : null;
  const ctx = opts.ctx ? Buffer.from(opts.ctx) : null;
  const dataOut = Buffer.alloc(opts.dataOutSize ?? (data ? data.length + 256 : 0));
  const ctxOut = Buffer.alloc(opts.ctxOutSize ?? (ctx ? ctx.length : 0));
  const o = optsBuffer(bpf_test_run_opts, {
    data_in: data ? addressOf(data) : 0n,
    data_size_in: data ? data.length : 0,
    data_out: dataOut.length ? addressOf(dataOut) : 0n,
    data_size_out: dataOut.length,
    ctx_in: ctx ? addressOf(ctx) : 0n,
    ctx_size_in: ctx ? ctx.length : 0,
    ctx_out: ctxOut.length ? addressOf(ctxOut) : 0n,
    ctx_size_out: ctxOut.length,
    repeat: opts.repeat ?? 1,
    flags: opts.flags ?? 0,
  });
  check('bpf_prog_test_run_opts', raw.bpf_prog_test_run_opts(fd, o) as number, { program: name });
  const r = decodeStruct<{ retval: number; data_size_out: number; ctx_size_out: number; duration: number }>(
    o,
    bpf_test_run_opts,
  );
  return {
    retval: r.retval,
    dataOut: new Uint8Array(dataOut.subarray(0, Math.min(r.data_size_out, dataOut.length))),
    ctxOut: new Uint8Array(ctxOut.subarray(0, Math.min(r.ctx_size_out, ctxOut.length))),
    durationNs: r.duration,
  };
}
