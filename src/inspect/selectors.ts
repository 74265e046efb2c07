// Object selectors, as bpftool's common.c parses them: `id N`, `pinned PATH`, `name NAME` for maps
// and programs, `tag TAG` for programs; and the -f table of pin paths per object id.
// Each parser consumes its words from `args` and returns the fds it opened (the caller closes them),
// or null after printing bpftool's error.
import { opendirSync, readFileSync, statfsSync } from 'node:fs';
import { posix } from 'node:path';
import { isPrefix, type InspectContext } from './context.ts';
import { strtoul } from './hex.ts';
import { isErrno, type InspectKernel, type ObjType } from './kernel-types.ts';
import { fdType } from './procfs.ts';
import { strerror } from './strerror.ts';
import { ERRNO } from '../errors.ts';

const { EACCES, ENOENT } = ERRNO;
const BPF_FS_MAGIC = 0xcafe4a11;
const BPF_OBJ_NAME_LEN = 16;
/** bpftool's MAX_PROG_FULL_NAME */
const MAX_PROG_FULL_NAME = 128;

/** Arguments consumed left to right, like bpftool's argc/argv with NEXT_ARG(). */
export class Args {
  private readonly words: readonly string[];
  private pos = 0;
  constructor(words: readonly string[]) {
    this.words = words;
  }
  get count(): number {
    return this.words.length - this.pos;
  }
  peek(offset = 0): string | undefined {
    return this.words[this.pos + offset];
  }
  next(): string | undefined {
    return this.words[this.pos++];
  }
  rest(): readonly string[] {
    return this.words.slice(this.pos);
  }
}

function isBpffs(path: string): boolean {
  try {
    return Number(statfsSync(path).type) === BPF_FS_MAGIC;
  } catch {
    return false;
  }
}

/** bpftool's open_obj_pinned: BPF_OBJ_GET, with its message (note: on EACCES it names the directory). */
export function openObjPinned(ctx: InspectContext, k: InspectKernel, path: string, quiet: boolean): number {
  const fd = k.objGet(path);
  if (fd < 0) {
    if (!quiet) {
      const errno = -fd;
      // bpftool calls dirname() on its copy of the path while building the message, so on EACCES the
      // path it prints is the directory.
      if (errno === EACCES) {
        const dir = posix.dirname(path);
        ctx.err(`bpf obj get (${dir}): ${isBpffs(dir) ? strerror(errno) : 'directory not in bpf file system (bpffs)'}`);
      } else {
        ctx.err(`bpf obj get (${path}): ${strerror(errno)}`);
      }
    }
    return -1;
  }
  return fd;
}

function openObjPinnedAny(ctx: InspectContext, k: InspectKernel, path: string, expected: ObjType): number {
  const fd = openObjPinned(ctx, k, path, false);
  if (fd < 0) return -1;
  const type = fdType(fd);
  if (typeof type !== 'string') {
    ctx.err(`can't read link type: ${type.error}`);
    k.close(fd);
    return -1;
  }
  if (type !== expected) {
    ctx.err(`incorrect object type: ${type}`);
    k.close(fd);
    return -1;
  }
  return fd;
}

function parseId(ctx: InspectContext, word: string): number | null {
  const v = strtoul(word, 0);
  if (v === undefined) {
    ctx.err(`can't parse ${word} as ID`);
    return null;
  }
  return Number(v & 0xffffffffn); // unsigned int id = strtoul(...)
}

/**
 * map_fd_by_name / prog_fd_by_nametag: walk every id of `kind`, keep the fds whose info matches.
 * Any failure on the way closes what was kept and reports it as bpftool does.
 */
function fdsMatching<I>(
  ctx: InspectContext,
  kind: 'map' | 'prog',
  nextId: (id: number) => number,
  fdById: (id: number) => number,
  info: (fd: number) => I | number,
  keep: (info: I, fd: number) => boolean,
  close: (fd: number) => void,
): number[] | null {
  const fds: number[] = [];
  const fail = (msg: string): null => {
    ctx.err(msg);
    for (const fd of fds) close(fd);
    return null;
  };
  let id = 0;
  for (;;) {
    const next = nextId(id);
    if (next < 0) return -next === ENOENT ? fds : fail(strerror(-next));
    id = next;
    const fd = fdById(id);
    if (fd < 0) return fail(`can't get ${kind} by id (${id}): ${strerror(-fd)}`);
    const got = info(fd);
    if (typeof got === 'number') {
      close(fd);
      return fail(`can't get ${kind} info (${id}): ${strerror(-got)}`);
    }
    if (keep(got, fd)) fds.push(fd);
    else close(fd);
  }
}

function mapFdsByName(ctx: InspectContext, k: InspectKernel, name: string): number[] | null {
  const want = name.slice(0, BPF_OBJ_NAME_LEN);
  return fdsMatching(
    ctx,
    'map',
    (id) => k.mapGetNextId(id),
    (id) => k.mapFdById(id),
    (fd) => k.mapInfo(fd),
    (info) => info.name === want,
    (fd) => k.close(fd),
  );
}

/** bpftool's map_parse_fds. `args` is positioned on the selector keyword. */
export function mapParseFds(ctx: InspectContext, k: InspectKernel, args: Args): number[] | null {
  const word = args.peek();
  if (isPrefix(word, 'id')) {
    args.next();
    const id = parseId(ctx, args.next() ?? '');
    if (id === null) return null;
    const fd = k.mapFdById(id);
    if (fd < 0) {
      ctx.err(`get map by id (${id}): ${strerror(-fd)}`);
      return null;
    }
    return [fd];
  }
  if (isPrefix(word, 'name')) {
    args.next();
    const name = args.next() ?? '';
    if (Buffer.byteLength(name, 'latin1') > BPF_OBJ_NAME_LEN - 1) {
      ctx.err("can't parse name");
      return null;
    }
    return mapFdsByName(ctx, k, name);
  }
  if (isPrefix(word, 'pinned')) {
    args.next();
    const fd = openObjPinnedAny(ctx, k, args.next() ?? '', 'map');
    return fd < 0 ? null : [fd];
  }
  ctx.err(`expected 'id', 'name' or 'pinned', got: '${word ?? ''}'?`);
  return null;
}

/** bpftool's map_parse_fd: exactly one map. */
export function mapParseFd(ctx: InspectContext, k: InspectKernel, args: Args): number {
  const fds = mapParseFds(ctx, k, args);
  if (!fds || fds.length !== 1) {
    if (fds && fds.length > 1) {
      ctx.err('several maps match this handle');
      for (const fd of fds) k.close(fd);
    }
    return -1;
  }
  return fds[0]!;
}

/**
 * bpftool's get_prog_full_name: the kernel keeps 15 characters of a name; when it is that long,
 * the full name comes from the program's BTF FUNC record.
 */
export function progFullName(
  k: InspectKernel,
  info: { name: string; btfId: number; nrFuncInfo: number; funcInfoRecSize: number },
  fd: number,
): string {
  if (Buffer.byteLength(info.name, 'latin1') < BPF_OBJ_NAME_LEN - 1) return info.name;
  if (!info.btfId || info.nrFuncInfo === 0) return info.name;
  const typeId = k.progFirstFuncTypeId(fd, Math.min(info.funcInfoRecSize, 8));
  if (typeId < 0) return info.name;
  const btf = k.btfById(info.btfId);
  if (isErrno(btf)) return info.name;
  const t = btf.typeById(typeId);
  if (!t || t.kind !== 12 /* FUNC */) return info.name;
  return t.name.slice(0, MAX_PROG_FULL_NAME - 1);
}

function progFdsByNameTag(
  ctx: InspectContext,
  k: InspectKernel,
  match: { tag?: Uint8Array; name?: string },
): number[] | null {
  return fdsMatching(
    ctx,
    'prog',
    (id) => k.progGetNextId(id),
    (id) => k.progFdById(id),
    (fd) => k.progInfo(fd),
    (info, fd) =>
      (!match.tag || Buffer.from(match.tag).equals(Buffer.from(info.tag))) &&
      (match.name === undefined || progFullName(k, info, fd) === match.name),
    (fd) => k.close(fd),
  );
}

/** sscanf(BPF_TAG_FMT) = "%02hhx" x 8: each pair of hex digits (a single digit is accepted too). */
function parseTag(word: string): Uint8Array | null {
  const tag = new Uint8Array(8);
  let p = 0;
  for (let i = 0; i < 8; i++) {
    const m = /^[0-9a-fA-F]{1,2}/.exec(word.slice(p));
    if (!m) return null;
    tag[i] = parseInt(m[0], 16);
    p += m[0].length;
  }
  return tag;
}

/** bpftool's prog_parse_fds. */
export function progParseFds(ctx: InspectContext, k: InspectKernel, args: Args): number[] | null {
  const word = args.peek();
  if (isPrefix(word, 'id')) {
    args.next();
    const id = parseId(ctx, args.next() ?? '');
    if (id === null) return null;
    const fd = k.progFdById(id);
    if (fd < 0) {
      ctx.err(`get by id (${id}): ${strerror(-fd)}`);
      return null;
    }
    return [fd];
  }
  if (isPrefix(word, 'tag')) {
    args.next();
    const tag = parseTag(args.next() ?? '');
    if (!tag) {
      ctx.err("can't parse tag");
      return null;
    }
    return progFdsByNameTag(ctx, k, { tag });
  }
  if (isPrefix(word, 'name')) {
    args.next();
    const name = args.next() ?? '';
    if (Buffer.byteLength(name, 'latin1') > MAX_PROG_FULL_NAME - 1) {
      ctx.err("can't parse name");
      return null;
    }
    return progFdsByNameTag(ctx, k, { name });
  }
  if (isPrefix(word, 'pinned')) {
    args.next();
    const fd = openObjPinnedAny(ctx, k, args.next() ?? '', 'prog');
    return fd < 0 ? null : [fd];
  }
  ctx.err(`expected 'id', 'tag', 'name' or 'pinned', got: '${word ?? ''}'?`);
  return null;
}

/** bpffs mount points from /proc/mounts (type starting with "bpf", as bpftool's strncmp does). */
function bpffsMounts(): string[] {
  let text: string;
  try {
    text = readFileSync('/proc/mounts', 'latin1');
  } catch {
    return [];
  }
  const dirs: string[] = [];
  for (const line of text.split('\n')) {
    const f = line.split(' ');
    if (f.length < 3 || !f[2]!.startsWith('bpf')) continue;
    // /proc/mounts escapes space, tab, newline and backslash as octal.
    dirs.push(f[1]!.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))));
  }
  return dirs;
}

/** Files under `dir` in readdir order, pre-order like nftw(FTW_PHYS); symlinks are not followed. */
function walk(dir: string, visit: (path: string) => void): void {
  let d;
  try {
    d = opendirSync(dir);
  } catch {
    return;
  }
  try {
    for (let e = d.readSync(); e !== null; e = d.readSync()) {
      const path = dir.endsWith('/') ? dir + e.name : `${dir}/${e.name}`;
      if (e.isDirectory()) walk(path, visit);
      else if (e.isFile()) visit(path);
    }
  } finally {
    d.closeSync();
  }
}

/** -f: pin paths of every object of `type` under every bpffs mount, by object id. */
export function buildPinnedTable(k: InspectKernel, type: 'map' | 'prog'): Map<number, string[]> {
  const table = new Map<number, string[]>();
  for (const mount of bpffsMounts()) {
    walk(mount, (path) => {
      const fd = k.objGet(path);
      if (fd < 0) return;
      try {
        if (fdType(fd) !== type) return;
        const info = type === 'map' ? k.mapInfo(fd) : k.progInfo(fd);
        if (isErrno(info)) return;
        // libbpf's hashmap puts a new entry for a key in front of the older ones.
        const paths = table.get(info.id) ?? [];
        paths.unshift(path);
        table.set(info.id, paths);
      } finally {
        k.close(fd);
      }
    });
  }
  return table;
}
