// The libbpf-ts test fixtures (test/fixtures/bpf), compiled through the same build cache as
// ambpf's own objects, into build/test-bpf (gitignored, shared by concurrent runs: entries are
// renamed into place atomically).
import { execFileSync } from 'node:child_process';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ensureObjects } from '../../src/bpf/build.ts';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const FIXTURE_SRC = join(ROOT, 'test/fixtures/bpf');
export const FIXTURE_CACHE = join(ROOT, 'build/test-bpf');

export async function fixtureObject(name: 'basic' | 'rejected'): Promise<string> {
  const { objects } = await ensureObjects({ srcDir: FIXTURE_SRC, cacheDir: FIXTURE_CACHE });
  const p = objects[name];
  if (!p) throw new Error(`fixture ${name} missing`);
  return p;
}

/** Run a command, return stdout (throws with stderr on failure). */
export function sh(cmd: string, args: readonly string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 30_000 });
}

/** Best-effort command for teardown: never throws. */
export function shQuiet(cmd: string, args: readonly string[]): void {
  try {
    execFileSync(cmd, args, { stdio: 'ignore', timeout: 30_000 });
  } catch {
    // teardown of something that may already be gone
  }
}

/** `bpftool map dump -j pinned PATH` as [key bytes hex, value bytes hex] pairs. */
export function bpftoolDump(pin: string): Array<[string, string]> {
  const out = JSON.parse(sh('bpftool', ['map', 'dump', '-j', 'pinned', pin])) as Array<{
    key: string[];
    value: string[];
  }>;
  const hex = (a: string[]): string => a.map((b) => b.replace(/^0x/, '')).join('');
  return out.map((e) => [hex(e.key), hex(e.value)] as [string, string]).sort();
}

export const u32 = (n: number): Uint8Array => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return new Uint8Array(b);
};
export const u64 = (n: bigint | number): Uint8Array => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n));
  return new Uint8Array(b);
};
export const readU64 = (a: Uint8Array): bigint => Buffer.from(a).readBigUInt64LE(0);
export const hexOf = (a: Uint8Array): string => Buffer.from(a).toString('hex');

/** A network namespace made for a test (named with the run prefix), deleted by remove(). */
export function makeNetns(name: string): { name: string; path: string; remove: () => void } {
  sh('ip', ['netns', 'add', name]);
  sh('ip', ['-n', name, 'link', 'set', 'lo', 'up']);
  return { name, path: `/run/netns/${name}`, remove: () => shQuiet('ip', ['netns', 'del', name]) };
}

/** Run a command inside a netns, keeping /sys intact (unlike `ip netns exec`). */
export function nsArgs(ns: string, cmd: readonly string[]): string[] {
  return ['--net=/run/netns/' + ns, ...cmd];
}
