// InspectKernel over libbpf-ts. libbpf-ts throws LibbpfError; bpftool's messages need the errno, so
// each call is turned back into "value or -errno" here.
// BTF comes from libbpf-ts's Btf (btf-libbpf.ts).
import {
  BpfMap,
  LibbpfError,
  bootEpochParts,
  fdById,
  listIds,
  mapInfoByFd,
  numPossibleCpus,
  openPinnedFd,
  progFuncInfo,
  progInfoByFd,
} from '../libbpf/index.ts';
import { closeSync } from 'node:fs';
import type { Btf } from './btf.ts';
import { loadKernelBtf } from './btf-libbpf.ts';
import type { Clocks, Errno, InspectKernel, MapInfo, ProgInfo } from './kernel-types.ts';

/** Run a libbpf-ts call; its LibbpfError becomes -errno. */
function errnoOf<T>(fn: () => T): T | Errno {
  try {
    return fn();
  } catch (e) {
    if (e instanceof LibbpfError) return -e.errno;
    throw e;
  }
}

/** The next id after `start` from a sorted id list, or -ENOENT at the end. */
function nextId(ids: readonly number[], start: number): Errno {
  for (const id of ids) if (id > start) return id;
  return -2;
}

export class LibbpfKernel implements InspectKernel {
  private readonly btfCache = new Map<number, Btf | Errno>();

  // bpftool walks ids one get_next_id call at a time; libbpf-ts lists them all. A walk starts at 0,
  // so the list is taken then and reused for the rest of that walk.
  private ids: { map: number[] | Errno; prog: number[] | Errno } = { map: [], prog: [] };

  private walk(kind: 'map' | 'prog', start: number): Errno {
    if (start === 0) this.ids[kind] = errnoOf(() => listIds(kind));
    const ids = this.ids[kind];
    return typeof ids === 'number' ? ids : nextId(ids, start);
  }

  mapGetNextId(start: number): Errno {
    return this.walk('map', start);
  }

  progGetNextId(start: number): Errno {
    return this.walk('prog', start);
  }

  mapFdById(id: number): Errno {
    return errnoOf(() => fdById('map', id));
  }

  progFdById(id: number): Errno {
    return errnoOf(() => fdById('prog', id));
  }

  objGet(path: string): Errno {
    return errnoOf(() => openPinnedFd(path));
  }

  close(fd: number): void {
    try {
      closeSync(fd);
    } catch {
      // already closed
    }
  }

  mapInfo(fd: number): MapInfo | Errno {
    const r = errnoOf(() => mapInfoByFd(fd));
    if (typeof r === 'number') return r;
    return { ...r, mapFlags: r.flags };
  }

  progInfo(fd: number): ProgInfo | Errno {
    const r = errnoOf(() => progInfoByFd(fd));
    if (typeof r === 'number') return r;
    return { ...r, tag: Buffer.from(r.tag, 'hex') };
  }

  progMapIds(fd: number): number[] | Errno {
    const r = errnoOf(() => progInfoByFd(fd));
    return typeof r === 'number' ? r : r.mapIds;
  }

  progFirstFuncTypeId(fd: number): Errno {
    const recs = errnoOf(() => progFuncInfo(fd, 1));
    if (typeof recs === 'number') return recs;
    return recs[0]?.typeId ?? -2;
  }

  lookup(fd: number, key: Uint8Array | null): Uint8Array | Errno {
    // BpfMap.fromFd would close our fd with itself; it is only a view here, never closed.
    const m = BpfMap.fromFd(fd);
    const v = errnoOf(() => m.lookup(key ?? new Uint8Array(0)));
    return v === undefined ? -2 : v;
  }

  getNextKey(fd: number, key: Uint8Array | null): Uint8Array | Errno {
    const m = BpfMap.fromFd(fd);
    const v = errnoOf(() => m.nextKey(key));
    return v === undefined ? -2 : v;
  }

  btfById(id: number): Btf | Errno {
    const cached = this.btfCache.get(id);
    if (cached !== undefined) return cached;
    // Kept open for the command's lifetime (a CLI run): the dumper reads types lazily.
    const loaded = loadKernelBtf(id);
    const result = typeof loaded === 'number' ? loaded : loaded.btf;
    this.btfCache.set(id, result);
    return result;
  }

  possibleCpus(): number {
    return numPossibleCpus();
  }

  clocks(): Clocks {
    return bootEpochParts();
  }
}
