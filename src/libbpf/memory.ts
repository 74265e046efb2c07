// Giving back the memory a long-lived process touched once and no longer uses (issue 20: the loader's
// RSS at 250 pods). Two kinds, both free to give back:
//  - glibc's free heap pages: malloc keeps what it freed (startup's parsing, the first passes) mapped;
//    malloc_trim(0) returns every whole free page of the heap to the kernel;
//  - clean file-backed pages: the node binary's text and read-only data (V8's compilers, the startup
//    snapshot's deserializer, ICU tables, the module loader) stay mapped, hence counted in RSS, after
//    startup ran them once: ~48 MiB, of which an idle loader uses about a third. MADV_DONTNEED unmaps
//    them; the next use faults them back from the page cache (a minor fault, no I/O). Only mappings
//    that cannot hold private data are touched: not writable and without any copy-on-write page
//    (smaps "Anonymous: 0 kB"), so nothing the process wrote can be lost (the RELRO pages of .got,
//    written by the dynamic linker before they were made read-only, have Anonymous > 0 and stay).
// What this does not change: the page cache itself (the binary's pages stay cached and charged to
// whichever cgroup read them first); it makes RSS say what the process uses, not what it once ran.
import { readFileSync, realpathSync } from 'node:fs';
import { libcRaw, lastErrno } from './ffi.ts';

const MADV_DONTNEED = 4;

export interface MemoryRelease {
  /** VmRSS before and after, KiB. */
  readonly rssBeforeKiB: number;
  readonly rssAfterKiB: number;
  /** File mappings whose pages were dropped, and how many madvise calls failed (errno of the last). */
  readonly mappings: number;
  readonly failed: number;
  readonly lastErrno?: number;
}

/** A mapping of /proc/self/smaps this module may drop: clean, file-backed, read-only or executable. */
export interface CleanFileMapping {
  readonly start: bigint;
  readonly end: bigint;
  readonly path: string;
}

function vmRssKiB(): number {
  const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync('/proc/self/status', 'utf8'));
  return m?.[1] ? Number(m[1]) : Number.NaN;
}

/**
 * The mappings of an smaps text whose resident pages are all clean copies of a file: a path, no write
 * permission, and no anonymous (copy-on-write) page. Anything else (the heap, V8's spaces, .data,
 * RELRO, device or anon_inode mappings such as mmap'd BPF maps) is left out.
 */
export function cleanFileMappings(smaps: string): CleanFileMapping[] {
  const out: CleanFileMapping[] = [];
  let cur: (CleanFileMapping & { readonly perms: string }) | undefined;
  for (const line of smaps.split('\n')) {
    const head = /^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \d+\s*(.*)$/.exec(line);
    if (head) {
      cur = { start: BigInt(`0x${head[1]}`), end: BigInt(`0x${head[2]}`), perms: head[3]!, path: head[4] ?? '' };
      continue;
    }
    const anon = /^Anonymous:\s+(\d+) kB$/.exec(line);
    if (!anon || !cur) continue;
    const fileBacked = cur.path.startsWith('/') && !cur.path.endsWith(' (deleted)');
    if (fileBacked && !cur.perms.includes('w') && Number(anon[1]) === 0)
      out.push({ start: cur.start, end: cur.end, path: cur.path });
    cur = undefined;
  }
  return out;
}

/**
 * Returns glibc's free heap pages and drops the clean pages of the node binary's own mappings (see
 * top). Only the binary's: it stays mapped at the same addresses for the life of the process, so the
 * range read from smaps cannot have become something else (a library unloaded and its range reused for
 * anonymous memory, which MADV_DONTNEED would zero) by the time madvise runs.
 */
export function releaseUnusedMemory(): MemoryRelease {
  const rssBeforeKiB = vmRssKiB();
  libcRaw.malloc_trim(0);
  const binary = realpathSync(process.execPath);
  const mappings = cleanFileMappings(readFileSync('/proc/self/smaps', 'utf8')).filter((m) => m.path === binary);
  let failed = 0;
  let errno: number | undefined;
  for (const m of mappings) {
    // EINVAL/ENOMEM when the mapping changed since smaps was read (a library unloaded): nothing to do.
    if ((libcRaw.madvise(m.start, Number(m.end - m.start), MADV_DONTNEED) as number) !== 0) {
      failed++;
      errno = lastErrno();
    }
  }
  return {
    rssBeforeKiB,
    rssAfterKiB: vmRssKiB(),
    mappings: mappings.length,
    failed,
    ...(errno === undefined ? {} : { lastErrno: errno }),
  };
}
