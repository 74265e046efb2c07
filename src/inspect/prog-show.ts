// `prog show|list [PROG]`: bpftool v7.1's do_show / print_prog_plain / print_prog_json, with the
// `metadata` of programs that carry bpf_metadata_* read-only globals. No `pids`: this bpftool is
// built without skeletons.
import { dumpBtfType } from './btf-dumper.ts';
import { BTF_KIND } from './btf.ts';
import type { InspectContext } from './context.ts';
import { formatHex } from './hex.ts';
import { JsonWriter } from './json-writer.ts';
import { isErrno, type Clocks, type InspectKernel, type ProgInfo } from './kernel-types.ts';
import { badArg } from './map-show.ts';
import { progTypeName } from './names.ts';
import { devJson, devPlain } from './offload.ts';
import { atoll, fdinfoValue } from './procfs.ts';
import { buildPinnedTable, progFullName, progParseFds, type Args } from './selectors.ts';
import { strerror } from './strerror.ts';
import { ERRNO } from '../errors.ts';

const { ENOENT, EINVAL } = ERRNO;
const METADATA_PREFIX = 'bpf_metadata_';

/** print_boot_time: seconds since the epoch of a load_time (ns since boot), as bpftool computes it. */
export function loadEpochSeconds(loadTimeNs: bigint, c: Clocks): bigint {
  // C integer division truncates toward zero, as BigInt division does.
  return c.realSec - c.bootSec + (c.realNsec - c.bootNsec + loadTimeNs) / 1_000_000_000n;
}

/** strftime("%FT%T%z") in local time, e.g. 2026-11-25T17:29:24+0000. */
export function formatLocalTime(epochSeconds: bigint): string {
  const d = new Date(Number(epochSeconds) * 1000);
  const p = (n: number, w = 2): string => String(n).padStart(w, '0');
  const off = -d.getTimezoneOffset();
  const sign = off < 0 ? '-' : '+';
  const a = Math.abs(off);
  return `${p(d.getFullYear(), 4)}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}${sign}${p(Math.floor(a / 60))}${p(a % 60)}`;
}

function tagHex(info: ProgInfo): string {
  return formatHex(info.tag, '');
}

function mapIds(k: InspectKernel, fd: number, info: ProgInfo): number[] {
  if (!info.nrMapIds) return [];
  const ids = k.progMapIds(fd, info.nrMapIds);
  return isErrno(ids) ? [] : ids;
}

/** find_metadata + the BTF of its .rodata map: the bpf_metadata_* variables and their bytes. */
function findMetadata(
  k: InspectKernel,
  ids: readonly number[],
): { vars: { name: string; type: number; offset: number }[]; value: Uint8Array; btfId: number } | null {
  for (const id of ids) {
    const mfd = k.mapFdById(id);
    if (mfd < 0) return null;
    const mi = k.mapInfo(mfd);
    if (isErrno(mi)) {
      k.close(mfd);
      return null;
    }
    if (
      mi.type !== 2 /* array */ ||
      mi.keySize !== 4 ||
      mi.maxEntries !== 1 ||
      !mi.btfValueTypeId ||
      !mi.name.includes('.rodata')
    ) {
      k.close(mfd);
      continue;
    }
    const value = k.lookup(mfd, new Uint8Array(4), mi.valueSize);
    k.close(mfd);
    if (isErrno(value)) return null;
    const btf = k.btfById(mi.btfId);
    if (isErrno(btf)) return null;
    const sec = btf.typeById(mi.btfValueTypeId);
    if (!sec || sec.kind !== BTF_KIND.DATASEC) return null;
    const vars: { name: string; type: number; offset: number }[] = [];
    for (const vsi of sec.secinfos ?? []) {
      const v = btf.typeById(vsi.type);
      if (v && v.name.startsWith(METADATA_PREFIX))
        vars.push({ name: v.name.slice(METADATA_PREFIX.length), type: v.sizeOrType, offset: vsi.offset });
    }
    return { vars, value, btfId: mi.btfId };
  }
  return null;
}

function showMetadata(ctx: InspectContext, k: InspectKernel, ids: readonly number[]): void {
  if (!ids.length) return;
  const md = findMetadata(k, ids);
  if (!md || !md.vars.length) return;
  const btf = k.btfById(md.btfId);
  if (isErrno(btf)) return;
  if (ctx.json) {
    const w = ctx.w;
    w.name('metadata');
    w.startObject();
    for (const v of md.vars) {
      w.name(v.name);
      const err = dumpBtfType({ btf, jw: w, plainText: false }, v.type, md.value, v.offset);
      if (err) {
        ctx.err(`btf dump failed: ${err}`);
        break;
      }
    }
    w.endObject();
  } else {
    ctx.out('\tmetadata:');
    const w = new JsonWriter(ctx.stdout, false);
    for (const v of md.vars) {
      ctx.out(`\n\t\t${v.name} = `);
      w.reset();
      const err = dumpBtfType({ btf, jw: w, plainText: true }, v.type, md.value, v.offset);
      if (err) {
        ctx.err(`btf dump failed: ${err}`);
        break;
      }
    }
    w.destroy();
  }
}

function printPlain(
  ctx: InspectContext,
  k: InspectKernel,
  fd: number,
  info: ProgInfo,
  pinned: Map<number, string[]> | null,
): void {
  const t = progTypeName(info.type);
  let s = `${info.id}: ${t !== undefined ? `${t}  ` : `type ${info.type}  `}`;
  if (info.name) s += `name ${progFullName(k, info, fd)}  `;
  s += `tag ${tagHex(info)}`;
  s += devPlain(info.ifindex, info.netnsDev, info.netnsIno);
  s += info.gplCompatible ? '  gpl' : '';
  if (info.runTimeNs) s += ` run_time_ns ${info.runTimeNs} run_cnt ${info.runCnt}`;
  if (info.recursionMisses) s += ` recursion_misses ${info.recursionMisses}`;
  s += '\n';
  if (info.loadTime) {
    s += `\tloaded_at ${formatLocalTime(loadEpochSeconds(info.loadTime, k.clocks()))}  uid ${info.createdByUid}\n`;
  }
  s += `\txlated ${info.xlatedProgLen}B`;
  s += info.jitedProgLen ? `  jited ${info.jitedProgLen}B` : '  not jited';
  const memlock = fdinfoValue(fd, 'memlock');
  if (memlock !== undefined) s += `  memlock ${memlock}B`;
  const ids = mapIds(k, fd, info);
  if (ids.length) s += `  map_ids ${ids.join(',')}`;
  if (pinned && pinned.size > 0) for (const p of pinned.get(info.id) ?? []) s += `\n\tpinned ${p}`;
  if (info.btfId) s += `\n\tbtf_id ${info.btfId}`;
  ctx.out(s + '\n');
  showMetadata(ctx, k, ids);
}

function printJson(
  ctx: InspectContext,
  k: InspectKernel,
  fd: number,
  info: ProgInfo,
  pinned: Map<number, string[]> | null,
): void {
  const w = ctx.w;
  w.startObject();
  w.intField('id', info.id);
  const t = progTypeName(info.type);
  if (t !== undefined) w.stringField('type', t);
  else w.intField('type', info.type);
  if (info.name) w.stringField('name', progFullName(k, info, fd));
  w.name('tag');
  w.raw(`"${tagHex(info)}"`);
  w.boolField('gpl_compatible', info.gplCompatible);
  if (info.runTimeNs) {
    w.intField('run_time_ns', info.runTimeNs);
    w.intField('run_cnt', info.runCnt);
  }
  if (info.recursionMisses) w.intField('recursion_misses', info.recursionMisses);
  devJson(ctx, info.ifindex, info.netnsDev, info.netnsIno);
  if (info.loadTime) {
    w.name('loaded_at');
    w.raw(String(loadEpochSeconds(info.loadTime, k.clocks())));
    w.intField('uid', info.createdByUid);
  }
  w.intField('bytes_xlated', info.xlatedProgLen);
  if (info.jitedProgLen) {
    w.boolField('jited', true);
    w.intField('bytes_jited', info.jitedProgLen);
  } else {
    w.boolField('jited', false);
  }
  const memlock = fdinfoValue(fd, 'memlock');
  if (memlock !== undefined) w.intField('bytes_memlock', atoll(memlock));
  const ids = mapIds(k, fd, info);
  if (ids.length) {
    w.name('map_ids');
    w.startArray();
    for (const id of ids) w.int(id);
    w.endArray();
  }
  if (info.btfId) w.intField('btf_id', info.btfId);
  if (pinned && pinned.size > 0) {
    w.name('pinned');
    w.startArray();
    for (const p of pinned.get(info.id) ?? []) w.string(p);
    w.endArray();
  }
  showMetadata(ctx, k, ids);
  w.endObject();
}

function showProg(ctx: InspectContext, k: InspectKernel, fd: number, pinned: Map<number, string[]> | null): number {
  const info = k.progInfo(fd);
  if (isErrno(info)) {
    ctx.err(`can't get prog info: ${strerror(-info)}`);
    return -1;
  }
  if (ctx.json) printJson(ctx, k, fd, info, pinned);
  else printPlain(ctx, k, fd, info, pinned);
  return 0;
}

/** `prog show [PROG]`: returns bpftool's return value (0 or -1). */
export function progShow(ctx: InspectContext, k: InspectKernel, args: Args): number {
  const pinned = ctx.opts.showPinned ? buildPinnedTable(k, 'prog') : null;
  if (args.count === 2) {
    const fds = progParseFds(ctx, k, args);
    if (!fds || fds.length < 1) return -1;
    let err = -1;
    if (ctx.json && fds.length > 1) ctx.w.startArray();
    for (let i = 0; i < fds.length; i++) {
      err = showProg(ctx, k, fds[i]!, pinned);
      if (err) {
        for (; i < fds.length; i++) k.close(fds[i]!);
        break;
      }
      k.close(fds[i]!);
    }
    if (ctx.json && fds.length > 1) ctx.w.endArray();
    return err;
  }
  if (args.count) return badArg(ctx, args);

  if (ctx.json) ctx.w.startArray();
  let id = 0;
  let err = 0;
  for (;;) {
    const next = k.progGetNextId(id);
    if (next < 0) {
      if (-next === ENOENT) {
        err = 0;
        break;
      }
      ctx.err(`can't get next program: ${strerror(-next)}${-next === EINVAL ? ' -- kernel too old?' : ''}`);
      err = -1;
      break;
    }
    id = next;
    const fd = k.progFdById(id);
    if (fd < 0) {
      if (-fd === ENOENT) continue;
      ctx.err(`can't get prog by id (${id}): ${strerror(-fd)}`);
      err = -1;
      break;
    }
    err = showProg(ctx, k, fd, pinned);
    k.close(fd);
    if (err) break;
  }
  if (ctx.json) ctx.w.endArray();
  return err;
}
