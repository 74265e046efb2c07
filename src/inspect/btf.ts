// A plain TypeScript model of BTF types, parsed from the raw BTF blob (the bytes libbpf's
// btf__raw_data() hands back, or the kernel's BPF_OBJ_GET_INFO_BY_FD on a BTF fd). The dumper walks
// this model; keeping it plain data lets the formatting be tested without a kernel.
// Layout: include/uapi/linux/btf.h.

export const BTF_KIND = {
  UNKN: 0, INT: 1, PTR: 2, ARRAY: 3, STRUCT: 4, UNION: 5, ENUM: 6, FWD: 7, TYPEDEF: 8, VOLATILE: 9,
  CONST: 10, RESTRICT: 11, FUNC: 12, FUNC_PROTO: 13, VAR: 14, DATASEC: 15, FLOAT: 16, DECL_TAG: 17,
  TYPE_TAG: 18, ENUM64: 19,
} as const;

export const BTF_INT_SIGNED = 1;
export const BTF_INT_CHAR = 2;
export const BTF_INT_BOOL = 4;

export interface BtfMember {
  readonly name: string;
  readonly type: number;
  /** Raw `offset` word: with the struct's kind_flag set it packs bitfield size (<<24) and bit offset. */
  readonly offset: number;
}

export interface BtfEnumValue {
  readonly name: string;
  /** Signed for ENUM (s32), unsigned 64-bit for ENUM64 (lo32 | hi32 << 32). */
  readonly value: bigint;
}

export interface BtfType {
  readonly kind: number;
  readonly name: string;
  readonly kindFlag: boolean;
  readonly vlen: number;
  /** `size` for INT/STRUCT/UNION/ENUM/DATASEC/FLOAT, `type` for PTR/TYPEDEF/modifiers/VAR/FUNC. */
  readonly sizeOrType: number;
  /** INT: the extra word (encoding << 24 | offset << 16 | bits). */
  readonly intData?: number;
  readonly array?: { readonly type: number; readonly indexType: number; readonly nelems: number };
  readonly members?: readonly BtfMember[];
  readonly enumValues?: readonly BtfEnumValue[];
  readonly secinfos?: readonly { readonly type: number; readonly offset: number; readonly size: number }[];
}

export class BtfParseError extends Error {
  override readonly name = 'BtfParseError';
}

/** A parsed BTF: type 0 is void; ids index `types`. */
export class Btf {
  readonly types: readonly (BtfType | undefined)[];
  constructor(types: readonly (BtfType | undefined)[]) {
    this.types = types;
  }

  typeById(id: number): BtfType | undefined {
    return this.types[id];
  }

  static parse(raw: Uint8Array): Btf {
    const dv = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
    if (raw.byteLength < 24 || dv.getUint16(0, true) !== 0xeb9f) throw new BtfParseError('not a BTF blob (bad magic)');
    const hdrLen = dv.getUint32(4, true);
    const typeOff = hdrLen + dv.getUint32(8, true);
    const typeLen = dv.getUint32(12, true);
    const strOff = hdrLen + dv.getUint32(16, true);
    const strLen = dv.getUint32(20, true);
    if (typeOff + typeLen > raw.byteLength || strOff + strLen > raw.byteLength) throw new BtfParseError('BTF sections run past the blob');
    const str = (off: number): string => {
      if (off >= strLen) return '';
      let end = strOff + off;
      while (end < strOff + strLen && raw[end] !== 0) end++;
      return Buffer.from(raw.subarray(strOff + off, end)).toString('latin1');
    };
    const types: (BtfType | undefined)[] = [undefined];
    let p = typeOff;
    const u32 = (): number => {
      const v = dv.getUint32(p, true);
      p += 4;
      return v;
    };
    while (p < typeOff + typeLen) {
      const nameOff = u32();
      const info = u32();
      const sizeOrType = u32();
      const kind = (info >>> 24) & 0x1f;
      const vlen = info & 0xffff;
      const base = { kind, name: str(nameOff), kindFlag: (info >>> 31) === 1, vlen, sizeOrType };
      switch (kind) {
        case BTF_KIND.INT:
          types.push({ ...base, intData: u32() });
          break;
        case BTF_KIND.ARRAY: {
          const type = u32();
          const indexType = u32();
          types.push({ ...base, array: { type, indexType, nelems: u32() } });
          break;
        }
        case BTF_KIND.STRUCT:
        case BTF_KIND.UNION: {
          const members: BtfMember[] = [];
          for (let i = 0; i < vlen; i++) {
            const name = str(u32());
            const type = u32();
            members.push({ name, type, offset: u32() });
          }
          types.push({ ...base, members });
          break;
        }
        case BTF_KIND.ENUM: {
          const enumValues: BtfEnumValue[] = [];
          for (let i = 0; i < vlen; i++) {
            const name = str(u32());
            enumValues.push({ name, value: BigInt(dv.getInt32((p += 4) - 4, true)) });
          }
          types.push({ ...base, enumValues });
          break;
        }
        case BTF_KIND.ENUM64: {
          const enumValues: BtfEnumValue[] = [];
          for (let i = 0; i < vlen; i++) {
            const name = str(u32());
            const lo = BigInt(u32());
            const hi = BigInt(u32());
            enumValues.push({ name, value: (hi << 32n) | lo });
          }
          types.push({ ...base, enumValues });
          break;
        }
        case BTF_KIND.FUNC_PROTO:
          p += 8 * vlen;
          types.push(base);
          break;
        case BTF_KIND.VAR:
        case BTF_KIND.DECL_TAG:
          p += 4;
          types.push(base);
          break;
        case BTF_KIND.DATASEC: {
          const secinfos: { type: number; offset: number; size: number }[] = [];
          for (let i = 0; i < vlen; i++) {
            const type = u32();
            const offset = u32();
            secinfos.push({ type, offset, size: u32() });
          }
          types.push({ ...base, secinfos });
          break;
        }
        case BTF_KIND.PTR:
        case BTF_KIND.FWD:
        case BTF_KIND.TYPEDEF:
        case BTF_KIND.VOLATILE:
        case BTF_KIND.CONST:
        case BTF_KIND.RESTRICT:
        case BTF_KIND.FUNC:
        case BTF_KIND.FLOAT:
        case BTF_KIND.TYPE_TAG:
          types.push(base);
          break;
        default:
          throw new BtfParseError(`unknown BTF kind ${kind} at type ${types.length}`);
      }
    }
    return new Btf(types);
  }

  /** libbpf's btf__resolve_type: skip modifiers, typedefs and vars; negative errno when it cannot. */
  resolveType(id: number): number {
    let t = this.typeById(id);
    let depth = 0;
    while (depth < 32 && id !== 0 && t && (isMod(t.kind) || t.kind === BTF_KIND.TYPEDEF || t.kind === BTF_KIND.VAR)) {
      id = t.sizeOrType;
      t = this.typeById(id);
      depth++;
    }
    if (depth === 32 || id === 0 || !t) return -22;
    return id;
  }

  /** libbpf's btf__resolve_size: byte size of a type, arrays multiplied out; negative errno on failure. */
  resolveSize(id: number): number {
    let nelems = 1;
    let size = -1;
    let t = this.typeById(id);
    for (let i = 0; i < 32 && id !== 0 && t; i++) {
      switch (t.kind) {
        case BTF_KIND.INT:
        case BTF_KIND.STRUCT:
        case BTF_KIND.UNION:
        case BTF_KIND.ENUM:
        case BTF_KIND.ENUM64:
        case BTF_KIND.DATASEC:
        case BTF_KIND.FLOAT:
          size = t.sizeOrType;
          break;
        case BTF_KIND.PTR:
          size = 8;
          break;
        case BTF_KIND.TYPEDEF:
        case BTF_KIND.VOLATILE:
        case BTF_KIND.CONST:
        case BTF_KIND.RESTRICT:
        case BTF_KIND.VAR:
        case BTF_KIND.DECL_TAG:
        case BTF_KIND.TYPE_TAG:
          id = t.sizeOrType;
          break;
        case BTF_KIND.ARRAY:
          nelems *= t.array!.nelems;
          id = t.array!.type;
          break;
        default:
          return -22;
      }
      if (size >= 0) break;
      t = this.typeById(id);
    }
    if (size < 0) return -22;
    return nelems * size;
  }
}

export function isMod(kind: number): boolean {
  return kind === BTF_KIND.VOLATILE || kind === BTF_KIND.CONST || kind === BTF_KIND.RESTRICT || kind === BTF_KIND.TYPE_TAG;
}
