// `map show|list [MAP]`: bpftool's do_show / show_map_close_plain / show_map_close_json.
// Field order and spacing are bpftool v7.1's. This bpftool is built without skeletons, so it prints
// no `pids` (which processes hold the map); neither do we.
import type { InspectContext } from './context.ts';
import type { JsonWriter } from './json-writer.ts';
import { carryOverMapInfo, isErrno, type InspectKernel, type MapInfo } from './kernel-types.ts';
import { mapTypeName, MAP_TYPE, progTypeName } from './names.ts';
import { atoll, fdinfoValue } from './procfs.ts';
import { buildPinnedTable, mapParseFds, type Args } from './selectors.ts';
import { strerror } from './strerror.ts';
import { devJson, devPlain } from './offload.ts';
import { ERRNO } from '../errors.ts';

const { ENOENT, EINVAL } = ERRNO;

/** `1: hash  name foo  flags 0x0` (also the header of a multi-map plain dump). */
export function mapHeaderPlain(info: MapInfo): string {
  const t = mapTypeName(info.type);
  let s = `${info.id}: ${t !== undefined ? `${t}  ` : `type ${info.type}  `}`;
  if (info.name) s += `name ${info.name}  `;
  s += `flags 0x${info.mapFlags.toString(16)}`;
  s += devPlain(info.ifindex, info.netnsDev, info.netnsIno);
  return s + '\n';
}

/** id, type, name, flags: the first JSON fields of `map show` and of a multi-map dump. */
export function mapHeaderJson(w: JsonWriter, info: MapInfo): void {
  w.intField('id', info.id);
  const t = mapTypeName(info.type);
  if (t !== undefined) w.stringField('type', t);
  else w.intField('type', info.type);
  if (info.name) w.stringField('name', info.name);
  w.name('flags');
  w.raw(String(info.mapFlags | 0)); // printed with %d
}

function showPlain(ctx: InspectContext, fd: number, info: MapInfo, pinned: Map<number, string[]> | null): void {
  const memlock = fdinfoValue(fd, 'memlock');
  const frozenStr = fdinfoValue(fd, 'frozen');
  let s = mapHeaderPlain(info);
  s += `\tkey ${info.keySize}B  value ${info.valueSize}B  max_entries ${info.maxEntries}`;
  if (memlock !== undefined) s += `  memlock ${memlock}B`;
  if (info.type === MAP_TYPE.PROG_ARRAY) {
    const ownerType = fdinfoValue(fd, 'owner_prog_type');
    const ownerJited = fdinfoValue(fd, 'owner_jited');
    if (ownerType !== undefined || ownerJited !== undefined) s += '\n\t';
    if (ownerType !== undefined) {
      const n = Number(atoll(ownerType));
      const name = progTypeName(n);
      s += name !== undefined ? `owner_prog_type ${name}  ` : `owner_prog_type ${n}  `;
    }
    if (ownerJited !== undefined) s += `owner${atoll(ownerJited) ? '' : ' not'} jited`;
  }
  if (pinned && pinned.size > 0) {
    for (const path of pinned.get(info.id) ?? []) s += `\n\tpinned ${path}`;
  }
  const frozen = frozenStr !== undefined ? Number(atoll(frozenStr)) : 0;
  if (info.btfId || frozen) s += '\n\t';
  if (info.btfId) s += `btf_id ${info.btfId}`;
  if (frozen) s += `${info.btfId ? '  ' : ''}frozen`;
  ctx.out(s + '\n');
}

function showJson(ctx: InspectContext, fd: number, info: MapInfo, pinned: Map<number, string[]> | null): void {
  const w = ctx.w;
  const memlock = fdinfoValue(fd, 'memlock');
  const frozenStr = fdinfoValue(fd, 'frozen');
  w.startObject();
  mapHeaderJson(w, info);
  devJson(ctx, info.ifindex, info.netnsDev, info.netnsIno);
  w.intField('bytes_key', info.keySize);
  w.intField('bytes_value', info.valueSize);
  w.intField('max_entries', info.maxEntries);
  if (memlock !== undefined) w.intField('bytes_memlock', atoll(memlock));
  if (info.type === MAP_TYPE.PROG_ARRAY) {
    const ownerType = fdinfoValue(fd, 'owner_prog_type');
    const ownerJited = fdinfoValue(fd, 'owner_jited');
    if (ownerType !== undefined) {
      const n = Number(atoll(ownerType)) >>> 0;
      const name = progTypeName(n);
      if (name !== undefined) w.stringField('owner_prog_type', name);
      else w.intField('owner_prog_type', n);
    }
    if (ownerJited !== undefined) w.boolField('owner_jited', atoll(ownerJited) !== 0n);
  }
  w.intField('frozen', frozenStr !== undefined ? Number(atoll(frozenStr)) | 0 : 0);
  if (info.btfId) w.intField('btf_id', info.btfId);
  if (pinned && pinned.size > 0) {
    w.name('pinned');
    w.startArray();
    for (const path of pinned.get(info.id) ?? []) w.string(path);
    w.endArray();
  }
  w.endObject();
}

function showOne(ctx: InspectContext, fd: number, info: MapInfo, pinned: Map<number, string[]> | null): void {
  if (ctx.json) showJson(ctx, fd, info, pinned);
  else showPlain(ctx, fd, info, pinned);
}

/** bpftool's BAD_ARG(): "what is 'X'?" */
export function badArg(ctx: InspectContext, args: Args): number {
  ctx.err(`what is '${args.peek() ?? ''}'?`);
  return -1;
}

/** `map show [MAP]`: returns bpftool's return value (0 or -1). */
export function mapShow(ctx: InspectContext, k: InspectKernel, args: Args): number {
  const pinned = ctx.opts.showPinned ? buildPinnedTable(k, 'map') : null;
  if (args.count === 2) {
    const fds = mapParseFds(ctx, k, args);
    if (!fds || fds.length < 1) return -1;
    let err = -1;
    let prev: MapInfo | null = null;
    if (ctx.json && fds.length > 1) ctx.w.startArray();
    for (let i = 0; i < fds.length; i++) {
      const fd = fds[i]!;
      const got = k.mapInfo(fd);
      const info = isErrno(got) ? got : (prev = carryOverMapInfo(prev, got));
      if (isErrno(info)) {
        ctx.err(`can't get map info: ${strerror(-info)}`);
        for (; i < fds.length; i++) k.close(fds[i]!);
        err = -1;
        break;
      }
      err = 0;
      showOne(ctx, fd, info, pinned);
      k.close(fd);
    }
    if (ctx.json && fds.length > 1) ctx.w.endArray();
    return err;
  }
  if (args.count) return badArg(ctx, args);

  if (ctx.json) ctx.w.startArray();
  let id = 0;
  let lastErrno = 0;
  let prev: MapInfo | null = null;
  for (;;) {
    const next = k.mapGetNextId(id);
    if (next < 0) {
      lastErrno = -next;
      if (lastErrno !== ENOENT)
        ctx.err(`can't get next map: ${strerror(lastErrno)}${lastErrno === EINVAL ? ' -- kernel too old?' : ''}`);
      break;
    }
    id = next;
    const fd = k.mapFdById(id);
    if (fd < 0) {
      if (-fd === ENOENT) continue; // the map went away between the two calls
      lastErrno = -fd;
      ctx.err(`can't get map by id (${id}): ${strerror(-fd)}`);
      break;
    }
    const got = k.mapInfo(fd);
    const info = isErrno(got) ? got : (prev = carryOverMapInfo(prev, got));
    if (isErrno(info)) {
      lastErrno = -info;
      ctx.err(`can't get map info: ${strerror(-info)}`);
      k.close(fd);
      break;
    }
    showOne(ctx, fd, info, pinned);
    k.close(fd);
  }
  if (ctx.json) ctx.w.endArray();
  return lastErrno === ENOENT ? 0 : -1;
}
