// Formats map keys/values from BTF the way bpftool's btf_dumper.c does, in its two flavours:
// plain text (`map dump` without -j: pretty JSON-ish, pointers as %p, bitfields as bare 0x..) and
// JSON (-j/-p `formatted`: bitfields quoted, non-printable chars as "\u00xx").
import { Btf, BTF_INT_BOOL, BTF_INT_CHAR, BTF_INT_SIGNED, BTF_KIND, isMod, type BtfType } from './btf.ts';
import type { JsonWriter } from './json-writer.ts';
import { ERRNO } from '../errors.ts';

const EINVAL = -ERRNO.EINVAL;

export interface BtfDumper {
  readonly btf: Btf;
  readonly jw: JsonWriter;
  readonly plainText: boolean;
}

/** A view that reads past the end as zero bytes (bpftool reads raw memory; we never overrun). */
function byteAt(data: Uint8Array, off: number): number {
  return off >= 0 && off < data.length ? data[off]! : 0;
}

function readLE(data: Uint8Array, off: number, n: number): bigint {
  let v = 0n;
  for (let i = n - 1; i >= 0; i--) v = (v << 8n) | BigInt(byteAt(data, off + i));
  return v;
}

function signed(v: bigint, bits: number): bigint {
  return BigInt.asIntN(bits, v);
}

/** glibc isprint() in the C locale, for a `char` that is signed on x86. */
function isprint(c: number): boolean {
  return c >= 0x20 && c <= 0x7e;
}

function int128Print(d: BtfDumper, v: bigint): void {
  const upper = v >> 64n;
  const lower = v & 0xffffffffffffffffn;
  const text =
    upper === 0n ? `0x${lower.toString(16)}` : `0x${upper.toString(16)}${lower.toString(16).padStart(16, '0')}`;
  d.jw.raw(d.plainText ? text : `"${text}"`);
}

/** btf_dumper_bitfield: `nrBits` bits starting `bitOffset` (< 8) bits into `data[off]`, little endian. */
function bitfield(d: BtfDumper, nrBits: number, bitOffset: number, data: Uint8Array, off: number): void {
  const bytes = Math.ceil((bitOffset + nrBits) / 8);
  const raw = readLE(data, off, bytes);
  const mask = nrBits >= 128 ? (1n << 128n) - 1n : (1n << BigInt(nrBits)) - 1n;
  int128Print(d, (raw >> BigInt(bitOffset)) & mask);
}

function intBits(d: BtfDumper, intData: number, bitOffset: number, data: Uint8Array, off: number): void {
  const nrBits = intData & 0xff;
  const total = bitOffset + ((intData >>> 16) & 0xff);
  bitfield(d, nrBits, total & 7, data, off + (total >> 3));
}

function dumpInt(d: BtfDumper, t: BtfType, bitOffset: number, data: Uint8Array, off: number): number {
  const intData = t.intData ?? 0;
  const nrBits = intData & 0xff;
  const encoding = (intData >>> 24) & 0x0f;
  if (bitOffset || (intData >>> 16) & 0xff || nrBits & 7) {
    intBits(d, intData, bitOffset, data, off);
    return 0;
  }
  if (nrBits === 128) {
    int128Print(d, readLE(data, off, 16));
    return 0;
  }
  switch (encoding) {
    case 0:
    case BTF_INT_SIGNED:
      if (nrBits === 64 || nrBits === 32 || nrBits === 16 || nrBits === 8) {
        const v = readLE(data, off, nrBits / 8);
        d.jw.raw(String(encoding === BTF_INT_SIGNED ? signed(v, nrBits) : v));
      } else {
        intBits(d, intData, bitOffset, data, off);
      }
      return 0;
    case BTF_INT_CHAR: {
      const c = byteAt(data, off);
      if (isprint(c)) d.jw.raw(`"${String.fromCharCode(c)}"`);
      else if (d.plainText) d.jw.raw(`0x${c.toString(16)}`);
      else d.jw.raw(`"\\u00${c.toString(16).padStart(2, '0')}"`);
      return 0;
    }
    case BTF_INT_BOOL:
      d.jw.bool(byteAt(data, off) !== 0);
      return 0;
    default:
      return EINVAL;
  }
}

function isStrArray(btf: Btf, arr: NonNullable<BtfType['array']>, data: Uint8Array, off: number): boolean {
  if (!arr.nelems) return false;
  let elem = btf.typeById(arr.type);
  // Typedefs to char do not count as strings (bpftool skips modifiers only).
  while (elem && isMod(elem.kind)) elem = btf.typeById(elem.sizeOrType);
  if (!elem || elem.kind !== BTF_KIND.INT || elem.sizeOrType !== 1) return false;
  if ((((elem.intData ?? 0) >>> 24) & 0x0f) !== BTF_INT_CHAR && elem.name !== 'char') return false;
  for (let i = 0; i < arr.nelems; i++) {
    const c = byteAt(data, off + i);
    if (c === 0) return true;
    if (c <= 0x1f || c >= 0x7f) return false;
  }
  return false;
}

function cString(data: Uint8Array, off: number): string {
  let end = off;
  while (end < data.length && data[end] !== 0) end++;
  return Buffer.from(data.subarray(off, end)).toString('latin1');
}

function dumpArray(d: BtfDumper, t: BtfType, data: Uint8Array, off: number): number {
  const arr = t.array!;
  if (isStrArray(d.btf, arr, data, off)) {
    d.jw.string(cString(data, off));
    return 0;
  }
  const elemSize = d.btf.resolveSize(arr.type);
  if (elemSize < 0) return elemSize;
  let ret = 0;
  d.jw.startArray();
  for (let i = 0; i < arr.nelems; i++) {
    ret = doType(d, arr.type, 0, data, off + i * elemSize);
    if (ret) break;
  }
  d.jw.endArray();
  return ret;
}

function dumpStruct(d: BtfDumper, t: BtfType, data: Uint8Array, off: number): number {
  let ret = 0;
  d.jw.startObject();
  for (const m of t.members ?? []) {
    let bitOffset = m.offset;
    let bitfieldSize = 0;
    if (t.kindFlag) {
      bitfieldSize = m.offset >>> 24;
      bitOffset = m.offset & 0xffffff;
    }
    d.jw.name(m.name);
    const dataOff = off + (bitOffset >>> 3);
    if (bitfieldSize) {
      bitfield(d, bitfieldSize, bitOffset & 7, data, dataOff);
    } else {
      ret = doType(d, m.type, bitOffset & 7, data, dataOff);
      if (ret) break;
    }
  }
  d.jw.endObject();
  return ret;
}

function dumpEnum(d: BtfDumper, t: BtfType, data: Uint8Array, off: number): number {
  const size = t.sizeOrType;
  if (size !== 1 && size !== 2 && size !== 4 && size !== 8) return EINVAL;
  const value = signed(readLE(data, off, size), size * 8);
  const hit = t.enumValues?.find((e) => e.value === value);
  if (hit) d.jw.string(hit.name);
  else d.jw.int(value);
  return 0;
}

function dumpEnum64(d: BtfDumper, t: BtfType, data: Uint8Array, off: number): number {
  const value = readLE(data, off, 8);
  const hit = t.enumValues?.find((e) => e.value === value);
  if (hit) d.jw.string(hit.name);
  else d.jw.int(signed(value, 64)); // jsonw_int takes an int64_t
  return 0;
}

function dumpPtr(d: BtfDumper, data: Uint8Array, off: number): void {
  const v = readLE(data, off, 8);
  if (d.plainText)
    d.jw.raw(v === 0n ? '(nil)' : `0x${v.toString(16)}`); // glibc's %p
  else d.jw.raw(String(v));
}

function doType(d: BtfDumper, id: number, bitOffset: number, data: Uint8Array, off: number): number {
  const t = d.btf.typeById(id);
  if (!t) return EINVAL;
  switch (t.kind) {
    case BTF_KIND.INT:
      return dumpInt(d, t, bitOffset, data, off);
    case BTF_KIND.STRUCT:
    case BTF_KIND.UNION:
      return dumpStruct(d, t, data, off);
    case BTF_KIND.ARRAY:
      return dumpArray(d, t, data, off);
    case BTF_KIND.ENUM:
      return dumpEnum(d, t, data, off);
    case BTF_KIND.ENUM64:
      return dumpEnum64(d, t, data, off);
    case BTF_KIND.PTR:
      dumpPtr(d, data, off);
      return 0;
    case BTF_KIND.UNKN:
      d.jw.raw('(unknown)');
      return 0;
    case BTF_KIND.FWD:
      d.jw.raw('(fwd-kind-invalid)');
      return EINVAL;
    case BTF_KIND.TYPEDEF:
    case BTF_KIND.VOLATILE:
    case BTF_KIND.CONST:
    case BTF_KIND.RESTRICT: {
      const actual = d.btf.resolveType(id);
      if (actual < 0) return actual;
      return doType(d, actual, bitOffset, data, off);
    }
    case BTF_KIND.VAR: {
      d.jw.startObject();
      d.jw.name(t.name);
      const ret = doType(d, t.sizeOrType, bitOffset, data, off);
      d.jw.endObject();
      return ret;
    }
    case BTF_KIND.DATASEC: {
      let ret = 0;
      d.jw.startObject();
      d.jw.name(t.name);
      d.jw.startArray();
      for (const vsi of t.secinfos ?? []) {
        ret = doType(d, vsi.type, 0, data, off + vsi.offset);
        if (ret) break;
      }
      d.jw.endArray();
      d.jw.endObject();
      return ret;
    }
    default:
      d.jw.raw('(unsupported-kind');
      return EINVAL;
  }
}

/** bpftool's btf_dumper_type: write the value of type `id` found at `data[off..]`; 0 or -errno. */
export function dumpBtfType(d: BtfDumper, id: number, data: Uint8Array, off = 0): number {
  return doType(d, id, 0, data, off);
}
