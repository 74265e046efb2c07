// `map dump|lookup|getnext`: bpftool's map_dump, do_lookup, do_getnext and their entry printers
// (raw hex without BTF, BTF-formatted with it, per-CPU values, lookup errors inside a dump).
import type { Btf } from './btf.ts';
import { dumpBtfType, type BtfDumper } from './btf-dumper.ts';
import { isPrefix, type InspectContext } from './context.ts';
import { formatHex, parseByteWord, writeHexJson } from './hex.ts';
import { JsonWriter } from './json-writer.ts';
import { carryOverMapInfo, isErrno, type InspectKernel, type MapInfo } from './kernel-types.ts';
import { mapHeaderJson, mapHeaderPlain } from './map-show.ts';
import { mapIsMapOfMaps, mapIsPerCpu, mapTypeName, MAP_TYPE } from './names.ts';
import { Args, mapParseFd, mapParseFds } from './selectors.ts';
import { strerror } from './strerror.ts';
import { ERRNO } from '../errors.ts';

const { ENOENT, ENOSPC } = ERRNO;

const roundUp8 = (n: number): number => Math.ceil(n / 8) * 8;

function valueBufSize(k: InspectKernel, info: MapInfo): number {
  return mapIsPerCpu(info.type) ? roundUp8(info.valueSize) * k.possibleCpus() : info.valueSize;
}

/** do_dump_btf: {"key": .., "value": ..} or per-CPU {"key": .., "values": [{cpu, value}]}. */
function dumpBtf(k: InspectKernel, d: BtfDumper, info: MapInfo, key: Uint8Array, value: Uint8Array): number {
  let ret = 0;
  d.jw.startObject();
  if (info.btfKeyTypeId) {
    d.jw.name('key');
    ret = dumpBtfType(d, info.btfKeyTypeId, key);
    if (ret) {
      d.jw.endObject();
      return ret;
    }
  }
  const valueId = info.btfVmlinuxValueTypeId || info.btfValueTypeId;
  if (!mapIsPerCpu(info.type)) {
    d.jw.name('value');
    ret = dumpBtfType(d, valueId, value);
  } else {
    d.jw.name('values');
    d.jw.startArray();
    const n = k.possibleCpus();
    const step = roundUp8(info.valueSize);
    for (let i = 0; i < n; i++) {
      d.jw.startObject();
      d.jw.intField('cpu', i);
      d.jw.name('value');
      ret = dumpBtfType(d, valueId, value, i * step);
      d.jw.endObject();
      if (ret) break;
    }
    d.jw.endArray();
  }
  d.jw.endObject();
  return ret;
}

function entryJson(
  ctx: InspectContext,
  k: InspectKernel,
  info: MapInfo,
  key: Uint8Array,
  value: Uint8Array,
  btf: Btf | null,
): void {
  const w = ctx.w;
  w.startObject();
  w.name('key');
  writeHexJson(w, key);
  if (!mapIsPerCpu(info.type)) {
    w.name('value');
    writeHexJson(w, value.subarray(0, info.valueSize));
  } else {
    const n = k.possibleCpus();
    const step = roundUp8(info.valueSize);
    w.name('values');
    w.startArray();
    for (let i = 0; i < n; i++) {
      w.startObject();
      w.intField('cpu', i);
      w.name('value');
      writeHexJson(w, value.subarray(i * step, i * step + info.valueSize));
      w.endObject();
    }
    w.endArray();
  }
  if (btf) {
    w.name('formatted');
    dumpBtf(k, { btf, jw: w, plainText: false }, info, key, value);
  }
  w.endObject();
}

function entryPlain(ctx: InspectContext, k: InspectKernel, info: MapInfo, key: Uint8Array, value: Uint8Array): void {
  let s = '';
  if (!mapIsPerCpu(info.type)) {
    const breakNames = info.keySize > 16 || info.valueSize > 16;
    const singleLine = info.keySize + info.valueSize <= 24 && !breakNames;
    if (info.keySize) {
      s += `key:${breakNames ? '\n' : ' '}${formatHex(key)}${singleLine ? '  ' : '\n'}`;
    }
    if (info.valueSize) s += `value:${breakNames ? '\n' : ' '}${formatHex(value.subarray(0, info.valueSize))}`;
    s += '\n';
  } else {
    const n = k.possibleCpus();
    const step = roundUp8(info.valueSize);
    if (info.keySize) s += `key:\n${formatHex(key)}\n`;
    if (info.valueSize) {
      for (let i = 0; i < n; i++) {
        s += `value (CPU ${String(i).padStart(2, '0')}):${info.valueSize > 16 ? '\n' : ' '}`;
        s += formatHex(value.subarray(i * step, i * step + info.valueSize)) + '\n';
      }
    }
  }
  ctx.out(s);
}

function entryError(ctx: InspectContext, info: MapInfo, key: Uint8Array, errno: number): void {
  // Arrays of maps/programs: a failed lookup just means an empty slot.
  if ((mapIsMapOfMaps(info.type) || info.type === MAP_TYPE.PROG_ARRAY) && errno === ENOENT) return;
  if (ctx.json) {
    const w = ctx.w;
    w.startObject();
    w.name('key');
    writeHexJson(w, key);
    w.name('value');
    w.startObject();
    w.stringField('error', strerror(errno));
    w.endObject();
    w.endObject();
    return;
  }
  let msg = strerror(errno);
  if (errno === ENOENT) msg = '<no entry>';
  else if (errno === ENOSPC && info.type === MAP_TYPE.REUSEPORT_SOCKARRAY) msg = '<cannot read>';
  const breakNames = info.keySize > 16 || msg.length > 16;
  const singleLine = info.keySize + msg.length <= 24 && !breakNames;
  ctx.out(
    `key:${breakNames ? '\n' : ' '}${formatHex(key)}${singleLine ? '  ' : '\n'}value:${breakNames ? '\n' : ' '}${msg}\n`,
  );
}

/** get_map_kv_btf: the map's BTF when it has a value type; null without; undefined after an error. */
function mapKvBtf(ctx: InspectContext, k: InspectKernel, info: MapInfo): Btf | null | undefined {
  if (info.btfVmlinuxValueTypeId) {
    // struct_ops maps: values typed by vmlinux BTF. Not something ambpf makes; bpftool would load
    // vmlinux BTF here. Report it the way bpftool reports a BTF failure.
    ctx.err('failed to get kernel btf');
    return undefined;
  }
  if (!info.btfValueTypeId) return null;
  const btf = k.btfById(info.btfId);
  if (isErrno(btf)) {
    ctx.err('failed to get btf');
    return undefined;
  }
  return btf;
}

/** One map's elements. `wtr` is the -j writer, the plain-BTF writer, or null for raw hex. */
function dumpOne(
  ctx: InspectContext,
  k: InspectKernel,
  fd: number,
  info: MapInfo,
  wtr: JsonWriter | null,
  showHeader: boolean,
): number {
  let btf: Btf | null = null;
  if (wtr) {
    const b = mapKvBtf(ctx, k, info);
    if (b === undefined) {
      k.close(fd);
      return -1;
    }
    btf = b;
    if (showHeader) {
      wtr.startObject();
      mapHeaderJson(wtr, info);
      wtr.name('elements');
    }
    wtr.startArray();
  } else if (showHeader) {
    ctx.out(mapHeaderPlain(info));
  }
  if (info.type === MAP_TYPE.REUSEPORT_SOCKARRAY && info.valueSize !== 8) {
    ctx.info(`Warning: cannot read values from ${mapTypeName(info.type)} map with value_size != 8`);
  }
  let count = 0;
  let err = 0;
  let prev: Uint8Array | null = null;
  const valueSize = valueBufSize(k, info);
  for (;;) {
    const key = k.getNextKey(fd, prev, info.keySize);
    if (isErrno(key)) {
      err = -key === ENOENT ? 0 : key;
      break;
    }
    const value = k.lookup(fd, key, valueSize);
    if (isErrno(value)) {
      entryError(ctx, info, key, -value);
    } else {
      if (ctx.json) entryJson(ctx, k, info, key, value, btf);
      else if (btf && wtr) dumpBtf(k, { btf, jw: wtr, plainText: true }, info, key, value);
      else entryPlain(ctx, k, info, key, value);
      count++;
    }
    prev = key;
  }
  if (wtr) {
    wtr.endArray();
    if (showHeader) wtr.endObject();
  } else {
    ctx.out(`Found ${count} element${count !== 1 ? 's' : ''}\n`);
  }
  k.close(fd);
  return err;
}

export function mapDump(ctx: InspectContext, k: InspectKernel, args: Args, usage: () => never): number {
  if (args.count !== 2) usage();
  const fds = mapParseFds(ctx, k, args);
  if (!fds || fds.length < 1) return -1;
  let wtr: JsonWriter | null = null;
  let btfWtr: JsonWriter | null = null;
  if (ctx.json) {
    wtr = ctx.w;
  } else {
    // maps_have_btf: plain BTF output only when every selected map has BTF.
    let allBtf = true;
    let prev: MapInfo | null = null;
    for (const fd of fds) {
      const got = k.mapInfo(fd);
      const info = isErrno(got) ? got : (prev = carryOverMapInfo(prev, got));
      if (isErrno(info)) {
        ctx.err(`can't get map info: ${strerror(-info)}`);
        for (const f of fds) k.close(f);
        return -1;
      }
      if (!info.btfId) {
        allBtf = false;
        break;
      }
    }
    if (allBtf) {
      btfWtr = new JsonWriter(ctx.stdout, true);
      wtr = btfWtr;
    }
  }
  let err = -1;
  let i = 0;
  let prev: MapInfo | null = null;
  if (wtr && fds.length > 1) wtr.startArray();
  for (; i < fds.length; i++) {
    const got = k.mapInfo(fds[i]!);
    const info = isErrno(got) ? got : (prev = carryOverMapInfo(prev, got));
    if (isErrno(info)) {
      ctx.err(`can't get map info: ${strerror(-info)}`);
      break;
    }
    err = dumpOne(ctx, k, fds[i]!, info, wtr, fds.length > 1);
    if (!wtr && i !== fds.length - 1) ctx.out('\n');
    if (err) {
      i++;
      break;
    }
  }
  if (wtr && fds.length > 1) wtr.endArray();
  btfWtr?.destroy();
  for (; i < fds.length; i++) k.close(fds[i]!);
  return err;
}

/** parse_bytes: `[hex] BYTES`, exactly `n` of them. */
function parseBytes(ctx: InspectContext, args: Args, name: string, n: number): Uint8Array | null {
  const out = new Uint8Array(n);
  let base: 0 | 16 = 0;
  if (isPrefix(args.peek(), 'hex')) {
    base = 16;
    args.next();
  }
  let i = 0;
  while (i < n && args.peek() !== undefined) {
    const word = args.next()!;
    const b = parseByteWord(word, base);
    if (b === undefined) {
      ctx.err(`error parsing byte: ${word}`);
      return null;
    }
    out[i++] = b;
  }
  if (i !== n) {
    ctx.err(`${name} expected ${n} bytes got ${i}`);
    return null;
  }
  return out;
}

/** parse_elem for the commands that take only a key (lookup, getnext). */
function parseKey(ctx: InspectContext, args: Args, info: MapInfo, keyBuffer: boolean): Uint8Array | null {
  // bpftool passes a NULL key buffer for zero-size keys in lookup (queues, stacks): nothing to parse.
  let key: Uint8Array | null = keyBuffer ? null : new Uint8Array(0);
  for (;;) {
    const word = args.peek();
    if (word === undefined) {
      if (key) return key;
      ctx.err('did not find key');
      return null;
    }
    if (isPrefix(word, 'key')) {
      if (key) {
        ctx.err(info.keySize ? 'duplicate key' : 'unnecessary key');
        return null;
      }
      args.next();
      key = parseBytes(ctx, args, 'key', info.keySize);
      if (!key) return null;
      continue;
    }
    if (isPrefix(word, 'value')) {
      ctx.err('unnecessary value');
      return null;
    }
    if (isPrefix(word, 'any') || isPrefix(word, 'noexist') || isPrefix(word, 'exist')) {
      ctx.err(`flags specified multiple times: ${word}`);
      return null;
    }
    ctx.err(`expected key or value, got: ${word}`);
    return null;
  }
}

function openMapWithInfo(ctx: InspectContext, k: InspectKernel, args: Args): { fd: number; info: MapInfo } | number {
  const fd = mapParseFd(ctx, k, args);
  if (fd < 0) return -1;
  const info = k.mapInfo(fd);
  if (isErrno(info)) {
    ctx.err(`can't get map info: ${strerror(-info)}`);
    k.close(fd);
    return info;
  }
  return { fd, info };
}

export function mapLookup(ctx: InspectContext, k: InspectKernel, args: Args, usage: () => never): number {
  if (args.count < 2) usage();
  const opened = openMapWithInfo(ctx, k, args);
  if (typeof opened === 'number') return opened;
  const { fd, info } = opened;
  try {
    const key = parseKey(ctx, args, info, info.keySize > 0);
    if (!key) return -1;
    const value = k.lookup(fd, key, valueBufSize(k, info));
    if (isErrno(value)) {
      if (-value === ENOENT) {
        if (ctx.json) ctx.w.null();
        else ctx.out(`key:\n${formatHex(key)}\n\nNot found\n`);
      } else {
        ctx.err(`lookup failed: ${strerror(-value)}`);
      }
      return value;
    }
    // print_key_value
    const btf = mapKvBtf(ctx, k, info);
    if (btf === undefined) return 0;
    if (ctx.json) {
      entryJson(ctx, k, info, key, value, btf);
    } else if (btf) {
      const w = new JsonWriter(ctx.stdout, true);
      dumpBtf(k, { btf, jw: w, plainText: true }, info, key, value);
      w.destroy();
    } else {
      entryPlain(ctx, k, info, key, value);
    }
    return 0;
  } finally {
    k.close(fd);
  }
}

export function mapGetNext(ctx: InspectContext, k: InspectKernel, args: Args, usage: () => never): number {
  if (args.count < 2) usage();
  const opened = openMapWithInfo(ctx, k, args);
  if (typeof opened === 'number') return opened;
  const { fd, info } = opened;
  try {
    let key: Uint8Array | null = null;
    if (args.count) {
      key = parseKey(ctx, args, info, true);
      if (!key) return -1;
    }
    const next = k.getNextKey(fd, key, info.keySize);
    if (isErrno(next)) {
      ctx.err(`can't get next key: ${strerror(-next)}`);
      return next;
    }
    if (ctx.json) {
      const w = ctx.w;
      w.startObject();
      if (key) {
        w.name('key');
        writeHexJson(w, key);
      } else {
        w.nullField('key');
      }
      w.name('next_key');
      writeHexJson(w, next);
      w.endObject();
    } else {
      ctx.out(key ? `key:\n${formatHex(key)}\n` : 'key: None\n');
      ctx.out(`next key:\n${formatHex(next)}\n`);
    }
    return 0;
  } finally {
    k.close(fd);
  }
}
