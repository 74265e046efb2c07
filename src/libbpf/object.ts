// BpfObject: an ELF object opened by libbpf. Configure (autoload, pin paths, map sizes) between
// open() and load(); programs and maps are owned by the object and die with close().
import { existsSync, mkdirSync } from 'node:fs';
import { basename } from 'node:path';
import { raw, cString, lastErrno, addressOf, type Ptr } from './ffi.ts';
import { LibbpfError, UnknownNameError } from './errors.ts';
import { Handle } from './handle.ts';
import { BpfProgram } from './program.ts';
import { BpfMap } from './map.ts';
import { bpf_object_open_opts, optsBuffer } from './structs.ts';
import { AmbpfError, ERRNO } from '../errors.ts';
import { logger } from '../log.ts';
import { installLibbpfPrint } from './print.ts';

const log = logger('libbpf');
installLibbpfPrint();

/** Verifier log room per program; kernels 6.4+ keep the log's tail when it overflows. */
const LOG_BUF_SIZE = 1 << 20;

export interface OpenOptions {
  /** Directory where maps declared with LIBBPF_PIN_BY_NAME are pinned / reused. */
  pinRoot?: string;
  /** Override the object name (default: from the file name). */
  objectName?: string;
}

export class BpfObjectFileError extends AmbpfError {
  override readonly name: string = 'BpfObjectFileError';
  constructor(path: string) {
    super(`BPF object file ${path} does not exist; build the objects with \`ambpf build\` (or \`make bpf\`)`, { path });
  }
}

export class BpfObject extends Handle {
  readonly #ptr: Ptr;
  readonly path: string;
  readonly #programs = new Map<string, BpfProgram>();
  readonly #maps = new Map<string, BpfMap>();
  #loaded = false;

  private constructor(ptr: Ptr, path: string) {
    super();
    this.#ptr = ptr;
    this.path = path;
    const owner = this;
    const view = {
      get objectName() {
        return owner.#nameUnchecked();
      },
      get closed() {
        return owner.closed;
      },
      get loaded() {
        return owner.#loaded;
      },
    };
    for (
      let p = raw.bpf_object__next_program(ptr, null) as Ptr | null;
      p;
      p = raw.bpf_object__next_program(ptr, p) as Ptr | null
    ) {
      const prog = new BpfProgram(p, view);
      this.#programs.set(prog.name, prog);
    }
    for (
      let m = raw.bpf_object__next_map(ptr, null) as Ptr | null;
      m;
      m = raw.bpf_object__next_map(ptr, m) as Ptr | null
    ) {
      const map = BpfMap.fromObject(m, view);
      this.#maps.set(map.name, map);
    }
  }

  /** Open (parse, not load) an object file. */
  static open(path: string, opts: OpenOptions = {}): BpfObject {
    if (!existsSync(path)) throw new BpfObjectFileError(path);
    // Strings referenced from the opts struct must outlive the call: keep them in locals.
    const pinRoot = opts.pinRoot ? Buffer.from(opts.pinRoot + '\0') : null;
    const objName = opts.objectName ? Buffer.from(opts.objectName + '\0') : null;
    if (opts.pinRoot) mkdirSync(opts.pinRoot, { recursive: true });
    const o = optsBuffer(bpf_object_open_opts, {
      pin_root_path: pinRoot ? addressOf(pinRoot) : 0n,
      object_name: objName ? addressOf(objName) : 0n,
    });
    const ptr = raw.bpf_object__open_file(path, o) as Ptr | null;
    if (!ptr) throw new LibbpfError('bpf_object__open_file', lastErrno(), { path, object: basename(path) });
    return new BpfObject(ptr, path);
  }

  protected describe(): string {
    return `BPF object ${this.path}`;
  }

  protected release(): void {
    for (const p of this.#programs.values()) p.close();
    for (const m of this.#maps.values()) m.close();
    raw.bpf_object__close(this.#ptr);
  }

  #nameUnchecked(): string {
    return this.closed ? basename(this.path) : (cString(raw.bpf_object__name(this.#ptr)) ?? basename(this.path));
  }

  get name(): string {
    this.ensureOpen();
    return this.#nameUnchecked();
  }

  /** @internal libbpf's btf* of this object (for Btf.fromObject). */
  btfPtr(): Ptr | null {
    this.ensureOpen();
    return (raw.bpf_object__btf(this.#ptr) as Ptr | null) ?? null;
  }

  get loaded(): boolean {
    return this.#loaded;
  }

  get programs(): BpfProgram[] {
    this.ensureOpen();
    return [...this.#programs.values()];
  }

  get maps(): BpfMap[] {
    this.ensureOpen();
    return [...this.#maps.values()];
  }

  program(name: string): BpfProgram {
    this.ensureOpen();
    const p = this.#programs.get(name);
    if (!p) throw new UnknownNameError('program', name, this.name, [...this.#programs.keys()]);
    return p;
  }

  map(name: string): BpfMap {
    this.ensureOpen();
    const m = this.#maps.get(name);
    if (!m) throw new UnknownNameError('map', name, this.name, [...this.#maps.keys()]);
    return m;
  }

  /** Pin every map that has no pin path yet under dir/<map name> on load (reusing what is there). */
  setPinDir(dir: string): void {
    this.ensureOpen();
    mkdirSync(dir, { recursive: true });
    for (const m of this.#maps.values()) {
      // libbpf's internal maps (.rodata, .bss) carry a '.' and bpffs refuses such names.
      if (!m.name.includes('.') && !m.pinPath) m.setPinPath(`${dir}/${m.name}`);
    }
  }

  /**
   * Load every autoload program and create (or reuse) the maps. A verifier rejection raises a
   * LibbpfError naming the program, with the log's tail in the message and the whole log attached.
   */
  load(): void {
    this.ensureOpen();
    if (this.#loaded)
      throw new LibbpfError('bpf_object__load', ERRNO.EALREADY, {
        object: this.name,
        hint: 'the object is already loaded',
      });
    const bufs = new Map<BpfProgram, Buffer>();
    for (const p of this.#programs.values()) {
      if (!p.autoload) continue;
      const buf = Buffer.alloc(LOG_BUF_SIZE);
      p.setLogBuf(buf);
      bufs.set(p, buf);
    }
    // libbpf writes into these buffers only during bpf_object__load (afterwards set_log_buf even
    // refuses with EBUSY), so they may be dropped once it returns.
    const rc = raw.bpf_object__load(this.#ptr) as number;
    // An object libbpf tried to load cannot be loaded again, whatever the outcome.
    this.#loaded = true;
    if (rc < 0) throw this.#loadError(-rc, bufs);
    log.debug({ object: this.name, programs: bufs.size }, 'object loaded');
  }

  #loadError(errno: number, bufs: Map<BpfProgram, Buffer>): LibbpfError {
    for (const [p, buf] of bufs) {
      const end = buf.indexOf(0);
      if (end === 0) continue;
      const verifierLog = buf.toString('utf8', 0, end < 0 ? buf.length : end);
      return new LibbpfError('bpf_object__load', errno, {
        object: this.name,
        program: p.name,
        verifierLog,
        hint: `The kernel verifier rejected program ${p.name}`,
      });
    }
    return new LibbpfError('bpf_object__load', errno, { object: this.name });
  }
}
