// BpfMap: a BPF map, either one of a BpfObject's maps (libbpf owns its fd; configure before load)
// or a standalone map we hold an fd to (created, opened from a pin, or by id).
import { unlinkSync } from 'node:fs';
import { raw, cString, type Ptr } from './ffi.ts';
import { LibbpfError, MapFullError, check } from './errors.ts';
import { Handle, closeFd } from './handle.ts';
import { AmbpfError, ERRNO } from '../errors.ts';
import { MAP_TYPES, BPF_ANY, nameOf, type MapTypeName } from './constants.ts';
import { bpf_map_create_opts, optsBuffer } from './structs.ts';
import { mapInfoByFd, fdinfo, fdById, kindOfFd, openPinnedFd, pinFd, type MapInfo } from './info.ts';

const PERCPU_TYPES: ReadonlySet<number> = new Set([
  MAP_TYPES.percpu_hash,
  MAP_TYPES.percpu_array,
  MAP_TYPES.lru_percpu_hash,
  MAP_TYPES.percpu_cgroup_storage,
]);

let possibleCpus: number | undefined;
/** Number of possible CPUs: per-CPU map values hold one 8-byte-aligned slot for each. */
export function numPossibleCpus(): number {
  if (possibleCpus === undefined)
    possibleCpus = check('libbpf_num_possible_cpus', raw.libbpf_num_possible_cpus() as number);
  return possibleCpus;
}

export interface MapCreateOptions {
  name?: string;
  flags?: number;
  btfFd?: number;
  btfKeyTypeId?: number;
  btfValueTypeId?: number;
  innerMapFd?: number;
  mapExtra?: bigint;
}

/** Hooks a BpfObject gives its maps: whether the object is still open, and loaded. */
export interface MapOwner {
  readonly objectName: string;
  readonly closed: boolean;
  readonly loaded: boolean;
}

export class BpfMap extends Handle {
  readonly #ptr: Ptr | null;
  readonly #owner: MapOwner | null;
  #fd: number;
  #info: MapInfo | null = null;
  #pinnedPath: string | null = null;

  private constructor(ptr: Ptr | null, owner: MapOwner | null, fd: number) {
    super();
    this.#ptr = ptr;
    this.#owner = owner;
    this.#fd = fd;
  }

  /** @internal Wrap one of a BpfObject's maps (libbpf owns it). */
  static fromObject(ptr: Ptr, owner: MapOwner): BpfMap {
    return new BpfMap(ptr, owner, -1);
  }

  /** Take ownership of a map fd. */
  static fromFd(fd: number): BpfMap {
    return new BpfMap(null, null, fd);
  }

  /** Create a standalone map (bpf_map_create). */
  static create(
    type: MapTypeName | number,
    keySize: number,
    valueSize: number,
    maxEntries: number,
    opts: MapCreateOptions = {},
  ): BpfMap {
    const typeNum = typeof type === 'number' ? type : MAP_TYPES[type];
    const o = optsBuffer(bpf_map_create_opts, {
      map_flags: opts.flags ?? 0,
      btf_fd: opts.btfFd ?? 0,
      btf_key_type_id: opts.btfKeyTypeId ?? 0,
      btf_value_type_id: opts.btfValueTypeId ?? 0,
      inner_map_fd: opts.innerMapFd ?? 0,
      map_extra: opts.mapExtra ?? 0n,
    });
    const fd = raw.bpf_map_create(typeNum, opts.name ?? null, keySize, valueSize, maxEntries, o) as number;
    if (fd < 0) throw new LibbpfError('bpf_map_create', -fd, { map: opts.name ?? nameOf(MAP_TYPES, typeNum) });
    return BpfMap.fromFd(fd);
  }

  /** Open the map pinned at path (bpf_obj_get); a missing pin or a non-map pin is a clear error. */
  static openPinned(path: string): BpfMap {
    const fd = openPinnedFd(path);
    if (kindOfFd(fd) !== 'map') {
      closeFd(fd);
      throw new LibbpfError('bpf_obj_get', ERRNO.EINVAL, { path, hint: `${path} is not a pinned BPF map` });
    }
    const m = BpfMap.fromFd(fd);
    m.#pinnedPath = path;
    return m;
  }

  /** Open a map by its kernel id. */
  static fromId(id: number): BpfMap {
    return BpfMap.fromFd(fdById('map', id));
  }

  protected describe(): string {
    return `map ${this.#nameNoCheck()}`;
  }

  protected release(): void {
    // Object maps are freed with their object; a standalone map's fd is ours.
    if (!this.#ptr) closeFd(this.#fd);
  }

  #nameNoCheck(): string {
    if (this.#ptr && !this.#owner?.closed) return cString(raw.bpf_map__name(this.#ptr)) ?? '?';
    return this.#info?.name ?? `fd ${this.#fd}`;
  }

  protected override ensureOpen(): void {
    super.ensureOpen();
    if (this.#owner?.closed) this.close();
    super.ensureOpen();
  }

  #objPtr(): Ptr {
    this.ensureOpen();
    return this.#ptr as Ptr;
  }

  #ensureNotLoaded(op: string): Ptr {
    const p = this.#objPtr();
    if (!this.#ptr)
      throw new LibbpfError(op, ERRNO.EINVAL, {
        map: this.name,
        hint: `${op} applies only to a map of a BpfObject before load()`,
      });
    if (this.#owner?.loaded)
      throw new LibbpfError(op, ERRNO.EBUSY, { map: this.name, hint: `${op} must be called before load()` });
    return p;
  }

  /** Cached kernel info (standalone maps) — the static properties never change after creation. */
  #kinfo(): MapInfo {
    if (!this.#info) this.#info = mapInfoByFd(this.fd);
    return this.#info;
  }

  get name(): string {
    this.ensureOpen();
    return this.#ptr ? this.#nameNoCheck() : this.#kinfo().name;
  }

  get type(): number {
    return this.#ptr ? (raw.bpf_map__type(this.#objPtr()) as number) : this.#kinfo().type;
  }

  get typeName(): string {
    return nameOf(MAP_TYPES, this.type);
  }

  get keySize(): number {
    return this.#ptr ? (raw.bpf_map__key_size(this.#objPtr()) as number) : this.#kinfo().keySize;
  }

  get valueSize(): number {
    return this.#ptr ? (raw.bpf_map__value_size(this.#objPtr()) as number) : this.#kinfo().valueSize;
  }

  get maxEntries(): number {
    return this.#ptr ? (raw.bpf_map__max_entries(this.#objPtr()) as number) : this.#kinfo().maxEntries;
  }

  get flags(): number {
    return this.#ptr ? (raw.bpf_map__map_flags(this.#objPtr()) as number) : this.#kinfo().flags;
  }

  get isPerCpu(): boolean {
    return PERCPU_TYPES.has(this.type);
  }

  /** Bytes of one lookup/update value: per-CPU maps hold round_up(value_size, 8) per possible CPU. */
  get valueBufferSize(): number {
    const vs = this.valueSize;
    return this.isPerCpu ? Math.ceil(vs / 8) * 8 * numPossibleCpus() : vs;
  }

  /** The map's fd (object maps: valid after load()). */
  get fd(): number {
    this.ensureOpen();
    if (this.#ptr) {
      const fd = raw.bpf_map__fd(this.#ptr) as number;
      if (fd < 0)
        throw new LibbpfError('bpf_map__fd', -fd, {
          map: this.name,
          hint: 'the map has no fd until its object is loaded',
        });
      return fd;
    }
    return this.#fd;
  }

  /** Full kernel info (always fresh). */
  info(): MapInfo {
    return mapInfoByFd(this.fd);
  }

  get id(): number {
    return this.info().id;
  }

  /** Whether the map is frozen (read-only for user space), from fdinfo as bpftool reads it. */
  get frozen(): boolean {
    return fdinfo(this.fd)['frozen'] === '1';
  }

  // ---- before load (object maps) ----

  /** Pin path libbpf uses at load: reuses a compatible map pinned there, else pins the new one. */
  setPinPath(path: string): void {
    const p = this.#ensureNotLoaded('bpf_map__set_pin_path');
    check('bpf_map__set_pin_path', raw.bpf_map__set_pin_path(p, path) as number, { map: this.name, path });
  }

  get pinPath(): string | null {
    return this.#ptr ? cString(raw.bpf_map__pin_path(this.#objPtr())) : this.#pinnedPath;
  }

  /**
   * Reuse the map pinned at path instead of creating one (restart-safe maps). Returns false when
   * nothing is pinned there, so the caller creates and pins a fresh map.
   */
  reusePinnedMap(path: string): boolean {
    const p = this.#ensureNotLoaded('bpf_map__reuse_fd');
    const fd = raw.bpf_obj_get(path) as number;
    if (fd === -ERRNO.ENOENT) return false;
    if (fd < 0) throw new LibbpfError('bpf_obj_get', -fd, { map: this.name, path });
    try {
      // reuse_fd dups the fd, so ours is closed either way.
      check('bpf_map__reuse_fd', raw.bpf_map__reuse_fd(p, fd) as number, { map: this.name, path });
    } finally {
      closeFd(fd);
    }
    return true;
  }

  setMaxEntries(n: number): void {
    const p = this.#ensureNotLoaded('bpf_map__set_max_entries');
    check('bpf_map__set_max_entries', raw.bpf_map__set_max_entries(p, n) as number, { map: this.name });
  }

  // ---- data ----

  #checkSize(what: string, got: number, want: number): void {
    if (got !== want)
      throw new AmbpfError(`map ${this.name}: the ${what} is ${got} bytes, the map wants ${want}`, {
        map: this.name,
        what,
        got,
        want,
      });
  }

  /** Value for key, or undefined when absent. Per-CPU maps return all CPUs' slots concatenated. */
  lookup(key: Uint8Array): Uint8Array | undefined {
    this.#checkSize('key', key.length, this.keySize);
    const value = Buffer.alloc(this.valueBufferSize);
    const rc = raw.bpf_map_lookup_elem(this.fd, key, value) as number;
    if (rc === -ERRNO.ENOENT) return undefined;
    check('bpf_map_lookup_elem', rc, { map: this.name });
    return new Uint8Array(value.buffer, value.byteOffset, value.length);
  }

  /** Per-CPU maps: one value_size slice per possible CPU. */
  lookupPerCpu(key: Uint8Array): Uint8Array[] | undefined {
    const all = this.lookup(key);
    if (!all) return undefined;
    const vs = this.valueSize;
    const stride = Math.ceil(vs / 8) * 8;
    return Array.from({ length: numPossibleCpus() }, (_, i) => all.slice(i * stride, i * stride + vs));
  }

  /** Insert or replace (flags: BPF_ANY/BPF_NOEXIST/BPF_EXIST). A full map raises MapFullError. */
  update(key: Uint8Array, value: Uint8Array, flags: number = BPF_ANY): void {
    this.#checkSize('key', key.length, this.keySize);
    this.#checkSize('value', value.length, this.valueBufferSize);
    const rc = raw.bpf_map_update_elem(this.fd, key, value, flags) as number;
    if (rc === -ERRNO.E2BIG) throw new MapFullError(this.name, this.maxEntries);
    check('bpf_map_update_elem', rc, { map: this.name });
  }

  /** Delete key; false when it was absent. */
  delete(key: Uint8Array): boolean {
    this.#checkSize('key', key.length, this.keySize);
    const rc = raw.bpf_map_delete_elem(this.fd, key) as number;
    if (rc === -ERRNO.ENOENT) return false;
    check('bpf_map_delete_elem', rc, { map: this.name });
    return true;
  }

  /** The key after `key` (or the first key when null); undefined at the end. */
  nextKey(key: Uint8Array | null): Uint8Array | undefined {
    const next = Buffer.alloc(this.keySize);
    const rc = raw.bpf_map_get_next_key(this.fd, key, next) as number;
    if (rc === -ERRNO.ENOENT) return undefined;
    check('bpf_map_get_next_key', rc, { map: this.name });
    return new Uint8Array(next.buffer, next.byteOffset, next.length);
  }

  /** Iterate keys (bpf_map_get_next_key). Bounded by max_entries so a map mutated meanwhile cannot loop forever. */
  *keys(): Generator<Uint8Array> {
    let key: Uint8Array | null = null;
    const limit = this.maxEntries + 1;
    for (let i = 0; i < limit; i++) {
      const next = this.nextKey(key);
      if (!next) return;
      yield next;
      key = next;
    }
  }

  *entries(): Generator<[Uint8Array, Uint8Array]> {
    for (const k of this.keys()) {
      const v = this.lookup(k);
      if (v) yield [k, v];
    }
  }

  freeze(): void {
    check('bpf_map_freeze', raw.bpf_map_freeze(this.fd) as number, { map: this.name });
  }

  // ---- pinning ----

  pin(path: string): void {
    pinFd(this.fd, path, { map: this.name });
    this.#pinnedPath = path;
  }

  /** Remove the pin (the map lives on while fds or programs hold it). */
  unpin(path: string | null = this.pinPath): void {
    this.ensureOpen();
    if (!path) throw new LibbpfError('unpin', ERRNO.EINVAL, { map: this.name, hint: 'the map has no pin path' });
    try {
      unlinkSync(path);
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      throw new LibbpfError('unlink', e.errno ? -e.errno : ERRNO.ENOENT, { map: this.name, path });
    }
    if (path === this.#pinnedPath) this.#pinnedPath = null;
  }
}
