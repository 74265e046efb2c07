// BTF through libbpf's own btf API (btf__load_from_kernel_by_id, btf__type_by_id, ...), exposed as
// a plain TS object model a formatter can walk. Layouts: include/uapi/linux/btf.h.
import { raw, cString, lastErrno, readBytes, type Ptr } from './ffi.ts';
import { LibbpfError } from './errors.ts';
import { Handle } from './handle.ts';
import type { BpfObject } from './object.ts';
import { btfInfoByFd, withFdById } from './info.ts';

export const BTF_KINDS = [
  'unknown',
  'int',
  'ptr',
  'array',
  'struct',
  'union',
  'enum',
  'fwd',
  'typedef',
  'volatile',
  'const',
  'restrict',
  'func',
  'func_proto',
  'var',
  'datasec',
  'float',
  'decl_tag',
  'type_tag',
  'enum64',
] as const;
export type BtfKindName = (typeof BTF_KINDS)[number];

export interface BtfMemberInfo {
  name: string;
  type: number;
  /** Bit offset from the start of the struct. */
  bitOffset: number;
  /** Bitfield size in bits (0: not a bitfield). */
  bitfieldSize: number;
}

export interface BtfTypeInfo {
  id: number;
  kind: BtfKindName;
  name: string;
  vlen: number;
  kindFlag: boolean;
  /** Byte size for int/struct/union/enum/enum64/float/datasec. */
  size?: number;
  /** Referenced type for ptr/typedef/const/volatile/restrict/type_tag/func/var/decl_tag, return type for func_proto. */
  type?: number;
  int?: { encoding: { signed: boolean; char: boolean; bool: boolean }; offset: number; bits: number };
  array?: { elemType: number; indexType: number; nelems: number };
  members?: BtfMemberInfo[];
  enumValues?: Array<{ name: string; value: bigint }>;
  params?: Array<{ name: string; type: number }>;
  /** datasec variables. */
  vars?: Array<{ type: number; offset: number; size: number }>;
  /** var linkage (0 static, 1 global, 2 extern). */
  linkage?: number;
  /** decl_tag component index (-1: the whole declaration). */
  componentIdx?: number;
}

const HEADER = 12;
const SIZED = new Set<BtfKindName>(['int', 'struct', 'union', 'enum', 'enum64', 'float', 'datasec']);

export class Btf extends Handle {
  readonly #ptr: Ptr;
  readonly #owned: boolean;
  readonly #base: Btf | null;
  readonly #label: string;

  private constructor(ptr: Ptr, owned: boolean, label: string, base: Btf | null = null) {
    super();
    this.#ptr = ptr;
    this.#owned = owned;
    this.#label = label;
    this.#base = base;
  }

  /** The kernel's own BTF (/sys/kernel/btf/vmlinux). */
  static loadVmlinux(): Btf {
    const p = raw.btf__load_vmlinux_btf() as Ptr | null;
    if (!p) throw new LibbpfError('btf__load_vmlinux_btf', lastErrno(), { path: '/sys/kernel/btf/vmlinux' });
    return new Btf(p, true, 'vmlinux');
  }

  /** A BTF object loaded in the kernel, by id; module BTF (split on vmlinux) is handled too. */
  static loadFromKernelById(id: number): Btf {
    const isKernelSplit = withFdById('btf', id, (fd) => {
      const info = btfInfoByFd(fd);
      return info.kernelBtf && info.name !== 'vmlinux';
    });
    if (isKernelSplit) {
      const base = Btf.loadVmlinux();
      const p = raw.btf__load_from_kernel_by_id_split(id, base.#ptr) as Ptr | null;
      if (!p) {
        const errno = lastErrno();
        base.close();
        throw new LibbpfError('btf__load_from_kernel_by_id_split', errno, { hint: `BTF id ${id}` });
      }
      return new Btf(p, true, `id ${id}`, base);
    }
    const p = raw.btf__load_from_kernel_by_id(id) as Ptr | null;
    if (!p) throw new LibbpfError('btf__load_from_kernel_by_id', lastErrno(), { hint: `BTF id ${id}` });
    return new Btf(p, true, `id ${id}`);
  }

  /** The BTF of an open object (borrowed: valid while the object is open; close() is a no-op). */
  static fromObject(obj: BpfObject): Btf | null {
    const p = obj.btfPtr();
    return p ? new Btf(p, false, `object ${obj.name}`) : null;
  }

  protected describe(): string {
    return `BTF ${this.#label}`;
  }

  protected release(): void {
    if (this.#owned) raw.btf__free(this.#ptr);
    this.#base?.close();
  }

  #p(): Ptr {
    this.ensureOpen();
    return this.#ptr;
  }

  /** Number of type ids (ids run 1..typeCount-1; 0 is void). */
  get typeCount(): number {
    return raw.btf__type_cnt(this.#p()) as number;
  }

  /** fd of the BTF in the kernel (-1 when not loaded there). */
  get fd(): number {
    return raw.btf__fd(this.#p()) as number;
  }

  nameOf(offset: number): string {
    return cString(raw.btf__name_by_offset(this.#p(), offset)) ?? '';
  }

  /** Size in bytes of a type, following typedefs/modifiers/arrays (btf__resolve_size). */
  resolveSize(id: number): number {
    const n = Number(raw.btf__resolve_size(this.#p(), id) as bigint | number);
    if (n < 0) throw new LibbpfError('btf__resolve_size', -n, { hint: `type id ${id}` });
    return n;
  }

  /** Strip typedef/const/volatile/restrict down to the underlying type id (btf__resolve_type). */
  resolveType(id: number): number {
    const n = raw.btf__resolve_type(this.#p(), id) as number;
    if (n < 0) throw new LibbpfError('btf__resolve_type', -n, { hint: `type id ${id}` });
    return n;
  }

  /** Find a type id by name (and optionally kind); undefined when absent. Linear scan. */
  findByName(name: string, kind?: BtfKindName): number | undefined {
    const n = this.typeCount;
    for (let id = 1; id < n; id++) {
      const t = this.type(id);
      if (t.name === name && (!kind || t.kind === kind)) return id;
    }
    return undefined;
  }

  /** The type with this id as a plain object (id 0 is void). */
  type(id: number): BtfTypeInfo {
    if (id === 0) return { id: 0, kind: 'unknown', name: 'void', vlen: 0, kindFlag: false };
    const ptr = raw.btf__type_by_id(this.#p(), id) as Ptr | null;
    if (!ptr)
      throw new LibbpfError('btf__type_by_id', lastErrno() || 22, { hint: `no BTF type id ${id} in ${this.#label}` });
    const head = readBytes(ptr, HEADER);
    const nameOff = head.readUInt32LE(0);
    const info = head.readUInt32LE(4);
    const sizeOrType = head.readUInt32LE(8);
    const vlen = info & 0xffff;
    const kind = BTF_KINDS[(info >>> 24) & 0x1f] ?? 'unknown';
    const kindFlag = info >>> 31 === 1;
    const t: BtfTypeInfo = { id, kind, name: this.nameOf(nameOff), vlen, kindFlag };
    if (SIZED.has(kind)) t.size = sizeOrType;
    else t.type = sizeOrType;
    const extra = (len: number): Buffer => readBytes(ptr, HEADER + len).subarray(HEADER);
    switch (kind) {
      case 'int': {
        const v = extra(4).readUInt32LE(0);
        const enc = (v >>> 24) & 0x0f;
        t.int = {
          encoding: { signed: (enc & 1) !== 0, char: (enc & 2) !== 0, bool: (enc & 4) !== 0 },
          offset: (v >>> 16) & 0xff,
          bits: v & 0xff,
        };
        break;
      }
      case 'array': {
        const b = extra(12);
        t.array = { elemType: b.readUInt32LE(0), indexType: b.readUInt32LE(4), nelems: b.readUInt32LE(8) };
        break;
      }
      case 'struct':
      case 'union': {
        const b = extra(vlen * 12);
        t.members = Array.from({ length: vlen }, (_, i) => {
          const off = b.readUInt32LE(i * 12 + 8);
          return {
            name: this.nameOf(b.readUInt32LE(i * 12)),
            type: b.readUInt32LE(i * 12 + 4),
            // With kind_flag the offset word packs the bitfield size in its top byte.
            bitOffset: kindFlag ? off & 0xffffff : off,
            bitfieldSize: kindFlag ? off >>> 24 : 0,
          };
        });
        break;
      }
      case 'enum': {
        const b = extra(vlen * 8);
        t.enumValues = Array.from({ length: vlen }, (_, i) => ({
          name: this.nameOf(b.readUInt32LE(i * 8)),
          // kind_flag: signed values.
          value: kindFlag ? BigInt(b.readInt32LE(i * 8 + 4)) : BigInt(b.readUInt32LE(i * 8 + 4)),
        }));
        break;
      }
      case 'enum64': {
        const b = extra(vlen * 12);
        t.enumValues = Array.from({ length: vlen }, (_, i) => {
          const v = (BigInt(b.readUInt32LE(i * 12 + 8)) << 32n) | BigInt(b.readUInt32LE(i * 12 + 4));
          return { name: this.nameOf(b.readUInt32LE(i * 12)), value: kindFlag ? BigInt.asIntN(64, v) : v };
        });
        break;
      }
      case 'func_proto': {
        const b = extra(vlen * 8);
        t.params = Array.from({ length: vlen }, (_, i) => ({
          name: this.nameOf(b.readUInt32LE(i * 8)),
          type: b.readUInt32LE(i * 8 + 4),
        }));
        break;
      }
      case 'var':
        t.linkage = extra(4).readUInt32LE(0);
        break;
      case 'datasec': {
        const b = extra(vlen * 12);
        t.vars = Array.from({ length: vlen }, (_, i) => ({
          type: b.readUInt32LE(i * 12),
          offset: b.readUInt32LE(i * 12 + 4),
          size: b.readUInt32LE(i * 12 + 8),
        }));
        break;
      }
      case 'decl_tag':
        t.componentIdx = extra(4).readInt32LE(0);
        break;
      default:
        break;
    }
    return t;
  }

  /** Follow typedef/const/volatile/restrict/type_tag to the first other type. */
  skipModifiers(id: number): BtfTypeInfo {
    let t = this.type(id);
    for (let i = 0; i < 64 && ['typedef', 'const', 'volatile', 'restrict', 'type_tag'].includes(t.kind); i++)
      t = this.type(t.type ?? 0);
    return t;
  }
}
