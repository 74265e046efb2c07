// A plain TypeScript model of BTF types (filled from libbpf's btf API through libbpf-ts: see
// btf-libbpf.ts). The dumper walks this model; keeping it plain data lets the formatting be tested
// without a kernel.
// Layout: include/uapi/linux/btf.h.

export const BTF_KIND = {
  UNKN: 0,
  INT: 1,
  PTR: 2,
  ARRAY: 3,
  STRUCT: 4,
  UNION: 5,
  ENUM: 6,
  FWD: 7,
  TYPEDEF: 8,
  VOLATILE: 9,
  CONST: 10,
  RESTRICT: 11,
  FUNC: 12,
  FUNC_PROTO: 13,
  VAR: 14,
  DATASEC: 15,
  FLOAT: 16,
  DECL_TAG: 17,
  TYPE_TAG: 18,
  ENUM64: 19,
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

/** A BTF: type 0 is void. Types come from a list (parsed blob, tests) or a lookup (libbpf, lazily). */
export class Btf {
  private readonly lookup: (id: number) => BtfType | undefined;
  private readonly cache = new Map<number, BtfType | undefined>();
  constructor(types: readonly (BtfType | undefined)[] | ((id: number) => BtfType | undefined)) {
    this.lookup = typeof types === 'function' ? types : (id) => types[id];
  }

  typeById(id: number): BtfType | undefined {
    if (id === 0) return undefined;
    if (!this.cache.has(id)) this.cache.set(id, this.lookup(id));
    return this.cache.get(id);
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
  return (
    kind === BTF_KIND.VOLATILE || kind === BTF_KIND.CONST || kind === BTF_KIND.RESTRICT || kind === BTF_KIND.TYPE_TAG
  );
}
