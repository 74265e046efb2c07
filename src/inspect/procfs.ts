// The /proc/self views bpftool reads next to the bpf() syscall: fdinfo lines (memlock, frozen,
// owner_prog_type) and what kind of BPF object an fd is (the anon inode name behind it).
import { readFileSync, readlinkSync } from 'node:fs';
import type { ObjType } from './kernel-types.ts';

/**
 * bpftool's get_fdinfo: the value of the first fdinfo line that *contains* `key` (strstr, so a key
 * matching inside another line's name matches there), i.e. the text after its first tab.
 */
export function fdinfoValue(fd: number, key: string): string | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/self/fdinfo/${fd}`, 'latin1');
  } catch {
    return undefined;
  }
  for (const line of text.split('\n')) {
    if (!line.includes(key)) continue;
    const tab = line.indexOf('\t');
    if (tab < 0 || tab === line.length - 1) return undefined;
    return line.slice(tab + 1);
  }
  return undefined;
}

/** bpftool's get_fd_type: anon_inode:bpf-map / bpf-prog / bpf-link. */
export function fdType(fd: number): ObjType | { error: string } {
  let target: string;
  try {
    target = readlinkSync(`/proc/self/fd/${fd}`);
  } catch (e) {
    return { error: (e as NodeJS.ErrnoException).code ?? String(e) };
  }
  if (target.includes('bpf-map')) return 'map';
  if (target.includes('bpf-prog')) return 'prog';
  if (target.includes('bpf-link')) return 'link';
  return 'unknown';
}

/** C atoll/atoi: leading integer of a string, 0 when there is none. */
export function atoll(s: string): bigint {
  const m = /^[ \t\n\v\f\r]*([+-]?\d+)/.exec(s);
  return m ? BigInt(m[1]!) : 0n;
}
