// System facts for `ambpf doctor` that do not need BPF: kernel release, mounts (from /proc/mounts,
// never assumed), the kernel's BTF, clang.
import { existsSync, readFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';

export interface Mount {
  source: string;
  target: string;
  fstype: string;
  options: string;
}

/** Octal escapes of /proc/mounts and mountinfo (\040 for a space) decoded. */
const unescape = (s: string): string =>
  s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));

/** /proc/mounts parsed (octal escapes such as \040 for spaces decoded). */
export function readMounts(text = readFileSync('/proc/mounts', 'utf8')): Mount[] {
  return text
    .split('\n')
    .map((l) => l.split(' '))
    .filter((f) => f.length >= 4)
    .map(([source, target, fstype, options]) => ({
      source: unescape(source!),
      target: unescape(target!),
      fstype: fstype!,
      options: options!,
    }));
}

export interface MountInfo extends Mount {
  /** What of the filesystem is mounted (mountinfo field 4). For cgroup2: that cgroup's path relative
   * to the reader's cgroup namespace, `/..`-style when it lies above it. */
  root: string;
}

/** /proc/self/mountinfo parsed: like readMounts, plus each mount's root. */
export function readMountInfo(text = readFileSync('/proc/self/mountinfo', 'utf8')): MountInfo[] {
  return text.split('\n').flatMap((l) => {
    const f = l.split(' ');
    const sep = f.indexOf('-', 6);
    if (f.length < 5 || sep < 0 || f.length < sep + 3) return [];
    return [
      {
        source: unescape(f[sep + 2]!),
        target: unescape(f[4]!),
        fstype: f[sep + 1]!,
        options: f[5] ?? '',
        root: unescape(f[3]!),
      },
    ];
  });
}

/** Mount points of a filesystem type, in mount order. */
export function mountsOf(fstype: string, mounts: readonly Mount[] = readMounts()): string[] {
  return mounts.filter((m) => m.fstype === fstype).map((m) => m.target);
}

/** Kernel release (uname -r), e.g. "6.18.0-1-amd64". */
export function kernelRelease(): string {
  return readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim();
}

/** "6.18.0-1-amd64" -> [6, 18]; compare with versionAtLeast. */
export function parseVersion(v: string): [number, number] {
  const m = /^(\d+)\.(\d+)/.exec(v);
  return m ? [Number(m[1]), Number(m[2])] : [0, 0];
}

export function versionAtLeast(have: string, want: string): boolean {
  const [a, b] = parseVersion(have);
  const [c, d] = parseVersion(want);
  return a > c || (a === c && b >= d);
}

export const VMLINUX_BTF = '/sys/kernel/btf/vmlinux';

export function hasKernelBtf(): boolean {
  return existsSync(VMLINUX_BTF);
}

/** clang's version line, or null when it is not installed (clang path: $AMBPF_CLANG or clang). */
export function clangVersion(clang = process.env['AMBPF_CLANG'] || 'clang'): string | null {
  try {
    return execFileSync(clang, ['--version'], {
      encoding: 'utf8',
      timeout: 30_000,
      stdio: ['ignore', 'pipe', 'ignore'],
    })
      .split('\n')[0]!
      .trim();
  } catch {
    return null;
  }
}
