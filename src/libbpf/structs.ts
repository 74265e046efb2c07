// koffi layouts of the C structs libbpf-ts exchanges with libbpf and the kernel: libbpf's opts
// structs (always `sz` first) and the kernel's info structs (linux/bpf.h). test/libbpf/structs
// asserts every size against the C compiler's sizeof, so a layout slip fails a test, not a load.
// Pointer fields are `uintptr_t` filled with addressOf(buffer): the caller keeps the buffer alive
// across the call.
import { koffi } from './ffi.ts';

export const bpf_object_open_opts = koffi.struct('bpf_object_open_opts', {
  sz: 'size_t',
  object_name: 'uintptr_t',
  relaxed_maps: 'bool',
  pin_root_path: 'uintptr_t',
  _pad_attach_prog_fd: 'uint32_t',
  kconfig: 'uintptr_t',
  btf_custom_path: 'uintptr_t',
  kernel_log_buf: 'uintptr_t',
  kernel_log_size: 'size_t',
  kernel_log_level: 'uint32_t',
});

export const bpf_map_create_opts = koffi.struct('bpf_map_create_opts', {
  sz: 'size_t',
  btf_fd: 'uint32_t',
  btf_key_type_id: 'uint32_t',
  btf_value_type_id: 'uint32_t',
  btf_vmlinux_value_type_id: 'uint32_t',
  inner_map_fd: 'uint32_t',
  map_flags: 'uint32_t',
  map_extra: 'uint64_t',
  numa_node: 'uint32_t',
  map_ifindex: 'uint32_t',
});

export const bpf_test_run_opts = koffi.struct('bpf_test_run_opts', {
  sz: 'size_t',
  data_in: 'uintptr_t',
  data_out: 'uintptr_t',
  data_size_in: 'uint32_t',
  data_size_out: 'uint32_t',
  ctx_in: 'uintptr_t',
  ctx_out: 'uintptr_t',
  ctx_size_in: 'uint32_t',
  ctx_size_out: 'uint32_t',
  retval: 'uint32_t',
  repeat: 'int',
  duration: 'uint32_t',
  flags: 'uint32_t',
  cpu: 'uint32_t',
  batch_size: 'uint32_t',
});

export const bpf_prog_load_opts = koffi.struct('bpf_prog_load_opts', {
  sz: 'size_t',
  attempts: 'int',
  expected_attach_type: 'uint32_t',
  prog_btf_fd: 'uint32_t',
  prog_flags: 'uint32_t',
  prog_ifindex: 'uint32_t',
  kern_version: 'uint32_t',
  attach_btf_id: 'uint32_t',
  attach_prog_fd: 'uint32_t',
  attach_btf_obj_fd: 'uint32_t',
  fd_array: 'uintptr_t',
  func_info: 'uintptr_t',
  func_info_cnt: 'uint32_t',
  func_info_rec_size: 'uint32_t',
  line_info: 'uintptr_t',
  line_info_cnt: 'uint32_t',
  line_info_rec_size: 'uint32_t',
  log_level: 'uint32_t',
  log_size: 'uint32_t',
  log_buf: 'uintptr_t',
});

export const bpf_tc_hook = koffi.struct('bpf_tc_hook', {
  sz: 'size_t',
  ifindex: 'int',
  attach_point: 'int',
  parent: 'uint32_t',
});

export const bpf_tc_opts = koffi.struct('bpf_tc_opts', {
  sz: 'size_t',
  prog_fd: 'int',
  flags: 'uint32_t',
  prog_id: 'uint32_t',
  handle: 'uint32_t',
  priority: 'uint32_t',
});

export const bpf_link_update_opts = koffi.struct('bpf_link_update_opts', {
  sz: 'size_t',
  flags: 'uint32_t',
  old_prog_fd: 'uint32_t',
});

/** One record of a program's func_info (linux/bpf.h struct bpf_func_info). */
export const bpf_func_info = koffi.struct('bpf_func_info', {
  insn_off: 'uint32_t',
  type_id: 'uint32_t',
});

export const bpf_map_info = koffi.struct('bpf_map_info', {
  type: 'uint32_t',
  id: 'uint32_t',
  key_size: 'uint32_t',
  value_size: 'uint32_t',
  max_entries: 'uint32_t',
  map_flags: 'uint32_t',
  name: koffi.array('uint8_t', 16),
  ifindex: 'uint32_t',
  btf_vmlinux_value_type_id: 'uint32_t',
  netns_dev: 'uint64_t',
  netns_ino: 'uint64_t',
  btf_id: 'uint32_t',
  btf_key_type_id: 'uint32_t',
  btf_value_type_id: 'uint32_t',
  _pad: 'uint32_t',
  map_extra: 'uint64_t',
});

export const bpf_prog_info = koffi.struct('bpf_prog_info', {
  type: 'uint32_t',
  id: 'uint32_t',
  tag: koffi.array('uint8_t', 8),
  jited_prog_len: 'uint32_t',
  xlated_prog_len: 'uint32_t',
  jited_prog_insns: 'uint64_t',
  xlated_prog_insns: 'uint64_t',
  load_time: 'uint64_t',
  created_by_uid: 'uint32_t',
  nr_map_ids: 'uint32_t',
  map_ids: 'uint64_t',
  name: koffi.array('uint8_t', 16),
  ifindex: 'uint32_t',
  /** bit 0: gpl_compatible (a C bitfield; koffi has none). */
  gpl_bits: 'uint32_t',
  netns_dev: 'uint64_t',
  netns_ino: 'uint64_t',
  nr_jited_ksyms: 'uint32_t',
  nr_jited_func_lens: 'uint32_t',
  jited_ksyms: 'uint64_t',
  jited_func_lens: 'uint64_t',
  btf_id: 'uint32_t',
  func_info_rec_size: 'uint32_t',
  func_info: 'uint64_t',
  nr_func_info: 'uint32_t',
  nr_line_info: 'uint32_t',
  line_info: 'uint64_t',
  jited_line_info: 'uint64_t',
  nr_jited_line_info: 'uint32_t',
  line_info_rec_size: 'uint32_t',
  jited_line_info_rec_size: 'uint32_t',
  nr_prog_tags: 'uint32_t',
  prog_tags: 'uint64_t',
  run_time_ns: 'uint64_t',
  run_cnt: 'uint64_t',
  recursion_misses: 'uint64_t',
  verified_insns: 'uint32_t',
  attach_btf_obj_id: 'uint32_t',
  attach_btf_id: 'uint32_t',
  _pad: 'uint32_t',
});

/** bpf_link_info: the per-type union is kept as raw bytes and decoded by link type in info.ts. */
export const bpf_link_info = koffi.struct('bpf_link_info', {
  type: 'uint32_t',
  id: 'uint32_t',
  prog_id: 'uint32_t',
  _pad: 'uint32_t',
  u: koffi.array('uint8_t', 32),
});

export const bpf_btf_info = koffi.struct('bpf_btf_info', {
  btf: 'uint64_t',
  btf_size: 'uint32_t',
  id: 'uint32_t',
  name: 'uint64_t',
  name_len: 'uint32_t',
  kernel_btf: 'uint32_t',
});

export type KoffiType = ReturnType<typeof koffi.struct>;

/** A zeroed Buffer holding `type` with `sz` set (every libbpf opts struct starts with size_t sz). */
export function optsBuffer(type: KoffiType, fields: Record<string, number | bigint | boolean> = {}): Buffer {
  const size = koffi.sizeof(type);
  const buf = Buffer.alloc(size);
  koffi.encode(buf, 0, type, { sz: size, ...fields });
  return buf;
}

/** Encode `fields` into a zeroed Buffer of the struct's size (no sz field). */
export function structBuffer(type: KoffiType, fields: Record<string, number | bigint | boolean> = {}): Buffer {
  const buf = Buffer.alloc(koffi.sizeof(type));
  koffi.encode(buf, 0, type, fields);
  return buf;
}

/** Decode a struct Buffer into a plain object. */
export function decodeStruct<T>(buf: Buffer, type: KoffiType): T {
  return koffi.decode(buf, type) as T;
}

export function sizeOf(type: KoffiType): number {
  return koffi.sizeof(type);
}
