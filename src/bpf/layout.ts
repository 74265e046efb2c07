// Declarative C struct layouts: one description per struct of bpf/include/ambpf.h (C field name,
// offset, type) from which the encoder, the decoder and the layout test (test/bpf/schema-layout.test.ts,
// which checks every offset and field size against gcc) all derive. A codec never spells an offset of
// its own, so a field the test checks is the field the codec writes.
//
// Byte order, as in ambpf.h: addresses and the __be16 ports are network order, everything else is
// the host's (little-endian), as the kernel stores it.
import { AmbpfError } from '../errors.ts';
import { bytesToIp, ip4ToBytes, ipToBytes, isV4Mapped, isZeroIp } from '../ip.ts';

export class SchemaError extends AmbpfError {
  override readonly name: string = 'SchemaError';
}

/** How one C field's bytes map to a TS value. `size` is sizeof the C field (arrays: all elements). */
export interface FieldType<T> {
  readonly size: number;
  encode(b: Uint8Array, off: number, v: T): void;
  decode(b: Uint8Array, off: number): T;
}

/** One field: its C name (what offsetof names), where it starts, its type. */
export interface Field<T> {
  readonly c: string;
  readonly offset: number;
  readonly type: FieldType<T>;
}

/** Every property of the TS value V described once; a C field with no TS counterpart (_pad) is left out. */
export type Fields<V> = { readonly [K in keyof V]-?: Field<V[K]> };

export const field = <T>(c: string, offset: number, type: FieldType<T>): Field<T> => ({ c, offset, type });

const view = (b: Uint8Array): DataView => new DataView(b.buffer, b.byteOffset, b.byteLength);

function checkPort(port: number): number {
  if (!Number.isInteger(port) || port < 0 || port > 65535)
    throw new SchemaError(`port ${port} is out of range 0-65535.`);
  return port;
}

// ---- scalar types ----
export const u8: FieldType<number> = {
  size: 1,
  encode: (b, off, v) => {
    b[off] = v;
  },
  decode: (b, off) => b[off] ?? 0,
};
/** __u16 in host order (the _host ports of ambpf_ztunnel, the family of ambpf_orig). */
export const u16: FieldType<number> = {
  size: 2,
  encode: (b, off, v) => view(b).setUint16(off, checkPort(v), true),
  decode: (b, off) => view(b).getUint16(off, true),
};
/** __u16 port in network order (__be16 in the kernel's words). */
export const be16: FieldType<number> = {
  size: 2,
  encode: (b, off, v) => view(b).setUint16(off, checkPort(v), false),
  decode: (b, off) => view(b).getUint16(off, false),
};
export const u32: FieldType<number> = {
  size: 4,
  encode: (b, off, v) => view(b).setUint32(off, v, true),
  decode: (b, off) => view(b).getUint32(off, true),
};
export const u64: FieldType<bigint> = {
  size: 8,
  encode: (b, off, v) => view(b).setBigUint64(off, v, true),
  decode: (b, off) => view(b).getBigUint64(off, true),
};
/** __u32[4]: 16 bytes, IPv4 as v4-mapped IPv6, network order. */
export const ip: FieldType<string> = {
  size: 16,
  encode: (b, off, v) => b.set(ipToBytes(v), off),
  decode: (b, off) => bytesToIp(b.subarray(off, off + 16)),
};
/** An address that only IPv4 may fill (v4-mapped): connect4 rewrites to it. */
export const ipv4Mapped = (what: string): FieldType<string> => ({
  size: 16,
  encode: (b, off, v) => {
    const bytes = ipToBytes(v);
    if (!isV4Mapped(bytes)) throw new SchemaError(`${what} must be IPv4 (got ${v}).`);
    b.set(bytes, off);
  },
  decode: ip.decode,
});
/** __u32 saddr: an IPv4 address in 4 bytes, network order. */
export const ip4: FieldType<string> = {
  size: 4,
  encode: (b, off, v) => b.set(ip4ToBytes(v), off),
  decode: (b, off) => bytesToIp(b.subarray(off, off + 4)),
};
/** __u8[6] */
export const mac: FieldType<string> = {
  size: 6,
  encode: (b, off, v) => b.set(macToBytes(v), off),
  decode: (b, off) => bytesToMac(b.subarray(off, off + 6)),
};

export function macToBytes(text: string): Uint8Array {
  const parts = text.split(':');
  if (parts.length !== 6 || parts.some((p) => !/^[0-9a-fA-F]{1,2}$/.test(p))) {
    throw new SchemaError(`"${text}" is not a MAC address (six hex bytes separated by colons).`, { mac: text });
  }
  return Uint8Array.from(parts.map((p) => parseInt(p, 16)));
}

export function bytesToMac(b: Uint8Array): string {
  return [...b].map((x) => x.toString(16).padStart(2, '0')).join(':');
}

// ---- combinators ----
/** A field the loader may leave out: written as `dflt`, always read back. */
export const withDefault = <T>(type: FieldType<T>, dflt: T): FieldType<T | undefined> => ({
  size: type.size,
  encode: (b, off, v) => type.encode(b, off, v ?? dflt),
  decode: (b, off) => type.decode(b, off),
});

/** null <-> a field left all zero (an address not set, an orig with family 0: "none"). */
export const nullable = <T>(
  type: FieldType<T>,
  isNone: (b: Uint8Array, off: number) => boolean,
): FieldType<T | null> => ({
  size: type.size,
  encode: (b, off, v) => {
    if (v !== null) type.encode(b, off, v);
  },
  decode: (b, off) => (isNone(b, off) ? null : type.decode(b, off)),
});

/** An address field that is all zero when unset. */
export const optionalIp: FieldType<string | null> = nullable(ip, (b, off) => isZeroIp(b.subarray(off, off + 16)));

/** A fixed C array of `count` elements; every slot is kept (null slots included). */
export const array = <T>(type: FieldType<T>, count: number): FieldType<T[]> => ({
  size: type.size * count,
  encode: (b, off, v) => {
    if (v.length > count) throw new SchemaError(`at most ${count} elements fit, got ${v.length}.`);
    v.forEach((x, i) => type.encode(b, off + i * type.size, x));
  },
  decode: (b, off) => Array.from({ length: count }, (_, i) => type.decode(b, off + i * type.size)),
});

/**
 * A fixed C array used as a list: the used slots first, an all-zero slot is unused. `what` names the
 * list in errors; a zero value cannot be stored (it would read back as a free slot).
 */
export const list = <T>(
  type: FieldType<T>,
  count: number,
  what: string,
  isZero: (v: T) => boolean,
): FieldType<T[]> => ({
  size: type.size * count,
  encode: (b, off, v) => {
    if (v.length > count) throw new SchemaError(`at most ${count} ${what} fit, got ${v.length}.`);
    v.forEach((x, i) => {
      if (isZero(x)) throw new SchemaError(`${what}: ${String(x)} cannot be stored (a zero slot is unused).`);
      type.encode(b, off + i * type.size, x);
    });
  },
  decode: (b, off) => {
    const out: T[] = [];
    for (let i = 0; i < count; i++) {
      const at = off + i * type.size;
      if (!b.subarray(at, at + type.size).every((x) => x === 0)) out.push(type.decode(b, at));
    }
    return out;
  },
});

// ---- structs ----
/** One struct of ambpf.h: its size and its fields, with the codec they imply. */
export class Struct<V> implements FieldType<V> {
  readonly name: string;
  readonly size: number;
  readonly fields: Fields<V>;

  constructor(name: string, size: number, fields: Fields<V>) {
    this.name = name;
    this.size = size;
    this.fields = fields;
    for (const [, f] of this.#list()) {
      if (f.offset + f.type.size > size) throw new SchemaError(`${name}.${f.c} ends past the struct's ${size} bytes.`);
    }
  }

  #list(): Array<[keyof V, Field<unknown>]> {
    return Object.entries(this.fields) as Array<[keyof V, Field<unknown>]>;
  }

  /** C field name -> offset (what the layout test compares with offsetof). */
  offsets(): Record<string, number> {
    return Object.fromEntries(this.#list().map(([, f]) => [f.c, f.offset]));
  }

  encode(b: Uint8Array, off: number, v: V): void {
    for (const [key, f] of this.#list()) f.type.encode(b, off + f.offset, v[key]);
  }

  decode(b: Uint8Array, off: number): V {
    const out = {} as V;
    for (const [key, f] of this.#list()) out[key] = f.type.decode(b, off + f.offset) as V[keyof V];
    return out;
  }

  /** The struct's bytes (fields not described, such as padding, stay zero). */
  toBytes(v: V): Uint8Array {
    const b = new Uint8Array(this.size);
    this.encode(b, 0, v);
    return b;
  }

  fromBytes(b: Uint8Array): V {
    if (b.length < this.size)
      throw new SchemaError(`a ${this.name} is ${this.size} bytes, got ${b.length}.`, { what: this.name });
    return this.decode(b, 0);
  }
}
