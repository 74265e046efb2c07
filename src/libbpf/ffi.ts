// The raw koffi declarations of libbpf.so.1 (1.1.x) and the few libc calls libbpf-ts needs.
// Nothing outside src/libbpf/ may import this file: every pointer here is an untyped BigInt and a
// wrong one segfaults the process, so only the typed classes of this directory hand them around.
// One exception: src/zds/transport.ts and reactor.ts, whose AF_UNIX and poll() calls live here so the
// process keeps one libc binding; those two files are the only typed owners of them.
import koffi from 'koffi';

/** A C pointer as koffi returns it: BigInt, or null for NULL. */
export type Ptr = bigint;

// Every libbpf handle (bpf_object*, bpf_program*, bpf_map*, btf*) is declared `void *`: koffi would
// not check a named opaque type either, and the TS classes are what keep them apart.
const lib = koffi.load('libbpf.so.1');
const libc = koffi.load('libc.so.6');

type Fn = (...args: unknown[]) => unknown;
const f = (decl: string): Fn => lib.func(decl) as Fn;
const c = (decl: string): Fn => libc.func(decl) as Fn;

// Opts structs and info structs are passed as Buffers (`void *`): their layouts live in structs.ts,
// where a test asserts them against the C sizeof.
export const raw = {
  // objects
  bpf_object__open_file: f('void *bpf_object__open_file(const char *path, void *opts)'),
  bpf_object__load: f('int bpf_object__load(void *obj)'),
  bpf_object__close: f('void bpf_object__close(void *obj)'),
  bpf_object__name: f('const char *bpf_object__name(void *obj)'),
  bpf_object__next_program: f('void *bpf_object__next_program(void *obj, void *prog)'),
  bpf_object__next_map: f('void *bpf_object__next_map(void *obj, void *map)'),
  bpf_object__btf: f('void *bpf_object__btf(void *obj)'),
  // programs
  bpf_program__name: f('const char *bpf_program__name(void *prog)'),
  bpf_program__section_name: f('const char *bpf_program__section_name(void *prog)'),
  bpf_program__type: f('int bpf_program__type(void *prog)'),
  bpf_program__expected_attach_type: f('int bpf_program__expected_attach_type(void *prog)'),
  bpf_program__set_expected_attach_type: f('int bpf_program__set_expected_attach_type(void *prog, int type)'),
  bpf_program__fd: f('int bpf_program__fd(void *prog)'),
  bpf_program__set_autoload: f('int bpf_program__set_autoload(void *prog, bool autoload)'),
  bpf_program__autoload: f('bool bpf_program__autoload(void *prog)'),
  bpf_program__set_log_buf: f('int bpf_program__set_log_buf(void *prog, void *buf, size_t size)'),
  bpf_program__set_log_level: f('int bpf_program__set_log_level(void *prog, uint32_t level)'),
  // maps owned by an object
  bpf_map__name: f('const char *bpf_map__name(void *map)'),
  bpf_map__type: f('int bpf_map__type(void *map)'),
  bpf_map__key_size: f('uint32_t bpf_map__key_size(void *map)'),
  bpf_map__value_size: f('uint32_t bpf_map__value_size(void *map)'),
  bpf_map__max_entries: f('uint32_t bpf_map__max_entries(void *map)'),
  bpf_map__map_flags: f('uint32_t bpf_map__map_flags(void *map)'),
  bpf_map__fd: f('int bpf_map__fd(void *map)'),
  bpf_map__set_max_entries: f('int bpf_map__set_max_entries(void *map, uint32_t max)'),
  bpf_map__set_pin_path: f('int bpf_map__set_pin_path(void *map, const char *path)'),
  bpf_map__pin_path: f('const char *bpf_map__pin_path(void *map)'),
  bpf_map__is_pinned: f('bool bpf_map__is_pinned(void *map)'),
  bpf_map__reuse_fd: f('int bpf_map__reuse_fd(void *map, int fd)'),
  bpf_map__set_autocreate: f('int bpf_map__set_autocreate(void *map, bool autocreate)'),
  // low-level syscall wrappers (int APIs return -errno)
  bpf_map_create: f(
    'int bpf_map_create(int type, const char *name, uint32_t key_size, uint32_t value_size, uint32_t max_entries, void *opts)',
  ),
  bpf_map_lookup_elem: f('int bpf_map_lookup_elem(int fd, void *key, void *value)'),
  bpf_map_update_elem: f('int bpf_map_update_elem(int fd, void *key, void *value, uint64_t flags)'),
  bpf_map_delete_elem: f('int bpf_map_delete_elem(int fd, void *key)'),
  bpf_map_get_next_key: f('int bpf_map_get_next_key(int fd, void *key, void *next_key)'),
  bpf_map_freeze: f('int bpf_map_freeze(int fd)'),
  bpf_obj_pin: f('int bpf_obj_pin(int fd, const char *path)'),
  bpf_obj_get: f('int bpf_obj_get(const char *path)'),
  bpf_obj_get_info_by_fd: f('int bpf_obj_get_info_by_fd(int fd, void *info, _Inout_ uint32_t *len)'),
  bpf_map_get_next_id: f('int bpf_map_get_next_id(uint32_t start, _Out_ uint32_t *next)'),
  bpf_prog_get_next_id: f('int bpf_prog_get_next_id(uint32_t start, _Out_ uint32_t *next)'),
  // enum bpf_stats_type: BPF_STATS_RUN_TIME = 0. Returns an fd; run-time stats stay on while it is open.
  bpf_enable_stats: f('int bpf_enable_stats(int type)'),
  bpf_link_get_next_id: f('int bpf_link_get_next_id(uint32_t start, _Out_ uint32_t *next)'),
  bpf_btf_get_next_id: f('int bpf_btf_get_next_id(uint32_t start, _Out_ uint32_t *next)'),
  bpf_map_get_fd_by_id: f('int bpf_map_get_fd_by_id(uint32_t id)'),
  bpf_prog_get_fd_by_id: f('int bpf_prog_get_fd_by_id(uint32_t id)'),
  bpf_link_get_fd_by_id: f('int bpf_link_get_fd_by_id(uint32_t id)'),
  bpf_btf_get_fd_by_id: f('int bpf_btf_get_fd_by_id(uint32_t id)'),
  bpf_prog_query: f(
    'int bpf_prog_query(int target_fd, int type, uint32_t query_flags, _Out_ uint32_t *attach_flags, _Out_ uint32_t *prog_ids, _Inout_ uint32_t *prog_cnt)',
  ),
  bpf_prog_attach: f('int bpf_prog_attach(int prog_fd, int target_fd, int type, uint32_t flags)'),
  bpf_prog_detach2: f('int bpf_prog_detach2(int prog_fd, int target_fd, int type)'),
  bpf_link_create: f('int bpf_link_create(int prog_fd, int target_fd, int type, void *opts)'),
  bpf_link_detach: f('int bpf_link_detach(int link_fd)'),
  bpf_link_update: f('int bpf_link_update(int link_fd, int new_prog_fd, void *opts)'),
  bpf_prog_load: f(
    'int bpf_prog_load(int type, const char *name, const char *license, void *insns, size_t cnt, void *opts)',
  ),
  bpf_prog_test_run_opts: f('int bpf_prog_test_run_opts(int prog_fd, void *opts)'),
  // tc (clsact)
  bpf_tc_hook_create: f('int bpf_tc_hook_create(void *hook)'),
  bpf_tc_hook_destroy: f('int bpf_tc_hook_destroy(void *hook)'),
  bpf_tc_attach: f('int bpf_tc_attach(void *hook, void *opts)'),
  bpf_tc_detach: f('int bpf_tc_detach(void *hook, void *opts)'),
  bpf_tc_query: f('int bpf_tc_query(void *hook, void *opts)'),
  // BTF
  btf__load_from_kernel_by_id: f('void *btf__load_from_kernel_by_id(uint32_t id)'),
  btf__load_from_kernel_by_id_split: f('void *btf__load_from_kernel_by_id_split(uint32_t id, void *base)'),
  btf__load_vmlinux_btf: f('void *btf__load_vmlinux_btf(void)'),
  btf__free: f('void btf__free(void *btf)'),
  btf__type_cnt: f('uint32_t btf__type_cnt(void *btf)'),
  btf__type_by_id: f('void *btf__type_by_id(void *btf, uint32_t id)'),
  btf__name_by_offset: f('const char *btf__name_by_offset(void *btf, uint32_t off)'),
  btf__resolve_size: f('int64_t btf__resolve_size(void *btf, uint32_t id)'),
  btf__resolve_type: f('int btf__resolve_type(void *btf, uint32_t id)'),
  btf__fd: f('int btf__fd(void *btf)'),
  // probes and misc
  libbpf_probe_bpf_prog_type: f('int libbpf_probe_bpf_prog_type(int type, void *opts)'),
  libbpf_probe_bpf_map_type: f('int libbpf_probe_bpf_map_type(int type, void *opts)'),
  libbpf_probe_bpf_helper: f('int libbpf_probe_bpf_helper(int prog_type, int helper, void *opts)'),
  libbpf_num_possible_cpus: f('int libbpf_num_possible_cpus(void)'),
  libbpf_strerror: f('int libbpf_strerror(int err, _Out_ uint8_t *buf, size_t size)'),
  libbpf_set_print: f('void *libbpf_set_print(void *fn)'),
  libbpf_major_version: f('uint32_t libbpf_major_version(void)'),
  libbpf_minor_version: f('uint32_t libbpf_minor_version(void)'),
};

export const libcRaw = {
  setns: c('int setns(int fd, int nstype)'),
  // Variadic: each argument is passed as a (type, value) pair, e.g. syscall(434, 'int', pid, 'uint', 0).
  syscall: c('long syscall(long nr, ...)'),
  socket: c('int socket(int domain, int type, int protocol)'),
  close: c('int close(int fd)'),
  getsockopt: c('int getsockopt(int fd, int level, int name, _Out_ uint8_t *val, _Inout_ uint32_t *len)'),
  setsockopt: c('int setsockopt(int fd, int level, int name, void *val, uint32_t len)'),
  if_nametoindex: c('uint32_t if_nametoindex(const char *name)'),
  if_indextoname: c('void *if_indextoname(uint32_t index, _Out_ uint8_t *name)'),
  vsnprintf: c('int vsnprintf(_Out_ uint8_t *buf, size_t size, void *fmt, void *ap)'),
  clock_gettime: c('int clock_gettime(int clk, _Out_ uint8_t *ts)'),
  // AF_UNIX SOCK_SEQPACKET for ZDS (src/zds/transport.ts); structs (msghdr, sockaddr_un) as Buffers.
  bind: c('int bind(int fd, void *addr, uint32_t len)'),
  listen: c('int listen(int fd, int backlog)'),
  accept4: c('int accept4(int fd, void *addr, void *len, int flags)'),
  connect: c('int connect(int fd, void *addr, uint32_t len)'),
  sendmsg: c('long sendmsg(int fd, void *msg, int flags)'),
  recvmsg: c('long recvmsg(int fd, void *msg, int flags)'),
  shutdown: c('int shutdown(int fd, int how)'),
  eventfd: c('int eventfd(unsigned int initval, int flags)'),
  read: c('long read(int fd, void *buf, size_t len)'),
  write: c('long write(int fd, void *buf, size_t len)'),
  // The loader's idle trim (src/libbpf/memory.ts): glibc's free heap pages, and clean file pages.
  malloc_trim: c('int malloc_trim(size_t pad)'),
  madvise: c('int madvise(void *addr, size_t len, int advice)'),
};

/** poll(2), called with `.async` on libuv's pool by src/zds/reactor.ts (the main thread never blocks in it). */
export const libcPoll = libc.func('int poll(void *fds, unsigned long nfds, int timeout)');

/** errno of the last failing call; read it right after the call, before anything else runs. */
export function lastErrno(): number {
  return koffi.errno();
}

/** The address of a Buffer's memory, for pointer fields inside structs (e.g. bpf_prog_info.map_ids). */
export function addressOf(buf: Buffer): bigint {
  return koffi.address(buf);
}

/** Read a NUL-terminated C string at a pointer (null stays null). */
export function cString(ptr: unknown): string | null {
  if (ptr === null || ptr === undefined) return null;
  if (typeof ptr === 'string') return ptr;
  return koffi.decode(ptr, 'char', -1) as string;
}

/** Copy `len` bytes from native memory at `ptr` (e.g. a btf_type record) into a Buffer. */
export function readBytes(ptr: Ptr, len: number): Buffer {
  return Buffer.from(koffi.view(ptr, len).slice(0));
}

export { koffi };
