// libbpf-ts's Btf (libbpf's btf__* API) seen as the dumper's plain model (btf.ts). Types are
// converted one at a time as the dumper asks for them, so a big split BTF costs only what is used.
import { Btf as LibBtf, BTF_KINDS, LibbpfError, type BtfTypeInfo } from '../libbpf/index.ts';
import { Btf, type BtfType } from './btf.ts';
import type { Errno } from './kernel-types.ts';

function toModel(t: BtfTypeInfo): BtfType {
  const kind = BTF_KINDS.indexOf(t.kind);
  const base = { kind, name: t.name, kindFlag: t.kindFlag, vlen: t.vlen, sizeOrType: t.size ?? t.type ?? 0 };
  const extra: Partial<BtfType> = {};
  if (t.int) {
    const e = t.int.encoding;
    const enc = (e.signed ? 1 : 0) | (e.char ? 2 : 0) | (e.bool ? 4 : 0);
    Object.assign(extra, { intData: (enc << 24) | (t.int.offset << 16) | t.int.bits });
  }
  if (t.array)
    Object.assign(extra, { array: { type: t.array.elemType, indexType: t.array.indexType, nelems: t.array.nelems } });
  if (t.members) {
    // Back to BTF's raw offset word: bpftool decodes it itself according to kind_flag.
    const members = t.members.map((m) => ({
      name: m.name,
      type: m.type,
      offset: t.kindFlag ? ((m.bitfieldSize << 24) | m.bitOffset) >>> 0 : m.bitOffset,
    }));
    Object.assign(extra, { members });
  }
  if (t.enumValues) {
    // bpftool compares an enum's value as __s32, an enum64's as two __u32 halves.
    const enumValues = t.enumValues.map((v) => ({
      name: v.name,
      value: t.kind === 'enum' ? BigInt.asIntN(32, v.value) : BigInt.asUintN(64, v.value),
    }));
    Object.assign(extra, { enumValues });
  }
  if (t.vars) Object.assign(extra, { secinfos: t.vars });
  return { ...base, ...extra };
}

/** The kernel BTF object `id` (btf__load_from_kernel_by_id), or -errno. */
export function loadKernelBtf(id: number): { btf: Btf; close(): void } | Errno {
  let lib: LibBtf;
  try {
    lib = LibBtf.loadFromKernelById(id);
  } catch (e) {
    if (e instanceof LibbpfError) return -e.errno;
    throw e;
  }
  const count = lib.typeCount;
  const btf = new Btf((tid) => (tid > 0 && tid < count ? toModel(lib.type(tid)) : undefined));
  return { btf, close: () => lib.close() };
}
