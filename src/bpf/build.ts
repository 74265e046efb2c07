// The BPF build cache: every <src>/*.bpf.c compiled by clang into
// <cache>/<srchash>-<clanghash>/NAME.bpf.o, keyed by the hash of all sources and headers under
// <src>, the flags and `clang --version`. A hit compiles nothing; a miss compiles into a temp dir
// renamed into place (atomic: concurrent builds never see half a cache entry). Without clang a warm
// entry for the same sources (built by any clang) is used; a cold cache is a clear error.
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync } from 'node:fs';
import { join, relative, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { AmbpfError } from '../errors.ts';
import { logger } from '../log.ts';

const run = promisify(execFile);
const log = logger('bpf-build');

const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
/** ambpf's own BPF sources. */
export const DEFAULT_SRC_DIR = join(REPO_ROOT, 'bpf');

/**
 * Flags (the include dir is relative to the source dir, so the key does not depend on where the
 * checkout lives). -mcpu=v3: 32-bit jumps and ALU32, supported by every kernel ambpf targets.
 */
export const BPF_CFLAGS: readonly string[] = [
  '-O2',
  '-g',
  '-target',
  'bpf',
  '-mcpu=v3',
  '-D__TARGET_ARCH_x86',
  '-Wall',
  '-Wno-unused-function',
];
const SYS_INCLUDE = '/usr/include/x86_64-linux-gnu';

export class BpfBuildError extends AmbpfError {
  override readonly name: string = 'BpfBuildError';
  readonly stderr: string;
  constructor(message: string, context: Record<string, string> = {}, stderr = '') {
    super(message, context);
    this.stderr = stderr;
  }
}

export interface BuildOptions {
  /** Directory of *.bpf.c (default: the repo's bpf/). */
  srcDir?: string;
  /** Cache root (default: $AMBPF_CACHE_DIR, else <repo>/build/bpf). */
  cacheDir?: string;
  /** clang binary (default: $AMBPF_CLANG, else `clang` on PATH). */
  clang?: string;
}

export interface BuildResult {
  /** The cache entry directory. */
  dir: string;
  /** NAME (file name without .bpf.c) -> absolute object path. */
  objects: Record<string, string>;
  /** true when nothing had to be compiled. */
  cached: boolean;
  /** clang version line used for this entry (null: no clang, a warm entry was reused). */
  clangVersion: string | null;
}

export function defaultCacheDir(): string {
  return process.env['AMBPF_CACHE_DIR'] || join(REPO_ROOT, 'build', 'bpf');
}

function sha(data: string | Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

function listFiles(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...listFiles(p));
    else if (/\.(c|h)$/.test(e.name)) out.push(p);
  }
  return out.sort();
}

/** Names of the programs to build: every top-level *.bpf.c. */
export function sourceNames(srcDir: string): string[] {
  return readdirSync(srcDir)
    .filter((f) => f.endsWith('.bpf.c'))
    .map((f) => f.slice(0, -'.bpf.c'.length))
    .sort();
}

/** Hash of every .c/.h under srcDir (paths and contents) and the flags. */
export function sourceHash(srcDir: string): string {
  const h = createHash('sha256');
  h.update(JSON.stringify(BPF_CFLAGS));
  for (const f of listFiles(srcDir)) {
    h.update(relative(srcDir, f)).update('\0').update(readFileSync(f)).update('\0');
  }
  return h.digest('hex').slice(0, 16);
}

/** `clang --version` first line, or null when clang cannot run. */
export async function clangVersion(clang: string): Promise<string | null> {
  try {
    const { stdout } = await run(clang, ['--version'], { timeout: 30_000 });
    return stdout.split('\n')[0]?.trim() || stdout.trim();
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'ENOENT' || e.code === 'EACCES') return null;
    throw new BpfBuildError(`${clang} --version failed: ${e.message}`, { clang });
  }
}

function entryComplete(dir: string, names: readonly string[]): boolean {
  return names.every((n) => existsSync(join(dir, `${n}.bpf.o`)));
}

function result(dir: string, names: readonly string[], cached: boolean, version: string | null): BuildResult {
  return {
    dir,
    objects: Object.fromEntries(names.map((n) => [n, join(dir, `${n}.bpf.o`)])),
    cached,
    clangVersion: version,
  };
}

async function compileOne(clang: string, srcDir: string, name: string, outDir: string): Promise<void> {
  const args = [
    ...BPF_CFLAGS,
    '-I',
    join(srcDir, 'include'),
    '-idirafter',
    SYS_INCLUDE,
    '-c',
    join(srcDir, `${name}.bpf.c`),
    '-o',
    join(outDir, `${name}.bpf.o`),
  ];
  try {
    await run(clang, args, { timeout: 120_000, maxBuffer: 16 << 20 });
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    const stderr = (e.stderr ?? '').trim();
    throw new BpfBuildError(
      `clang failed to compile ${name}.bpf.c:\n${stderr || e.message}`,
      { source: join(srcDir, `${name}.bpf.c`) },
      stderr,
    );
  }
}

/** A complete cache entry for exactly these sources, built by any clang (what a clang-less image runs on). */
export function findPrebuilt(srcDir = DEFAULT_SRC_DIR, cacheDir = defaultCacheDir()): string | undefined {
  if (!existsSync(cacheDir)) return undefined;
  const names = sourceNames(srcDir);
  const srcHash = sourceHash(srcDir);
  return readdirSync(cacheDir)
    .filter((d) => d.startsWith(`${srcHash}-`))
    .map((d) => join(cacheDir, d))
    .find((d) => entryComplete(d, names));
}

/** Compile (on a miss) and return the cache entry for srcDir. */
export async function ensureObjects(opts: BuildOptions = {}): Promise<BuildResult> {
  const srcDir = resolve(opts.srcDir ?? DEFAULT_SRC_DIR);
  const cacheDir = resolve(opts.cacheDir ?? defaultCacheDir());
  const clang = opts.clang ?? (process.env['AMBPF_CLANG'] || 'clang');
  if (!existsSync(srcDir) || !statSync(srcDir).isDirectory())
    throw new BpfBuildError(`BPF source directory ${srcDir} does not exist`, { srcDir });
  const names = sourceNames(srcDir);
  const srcHash = sourceHash(srcDir);
  const version = await clangVersion(clang);

  if (version === null) {
    // No compiler: any complete entry for these exact sources will do, whichever clang built it.
    const warm = findPrebuilt(srcDir, cacheDir);
    if (warm) {
      log.debug({ dir: warm }, 'clang not found; using prebuilt objects');
      return result(warm, names, true, null);
    }
    throw new BpfBuildError(
      `clang not found: install clang (apt-get install clang) or ship prebuilt objects (no cache entry for these sources under ${cacheDir})`,
      { clang, cacheDir },
    );
  }

  const dir = join(cacheDir, `${srcHash}-${sha(version).slice(0, 12)}`);
  if (entryComplete(dir, names)) return result(dir, names, true, version);

  mkdirSync(cacheDir, { recursive: true });
  const tmp = join(cacheDir, `.tmp-${srcHash}-${process.pid}-${randomBytes(4).toString('hex')}`);
  mkdirSync(tmp);
  try {
    log.info({ srcDir, objects: names.length, clang: version }, 'compiling BPF objects');
    // Two at a time: the build machines have two cores.
    for (let i = 0; i < names.length; i += 2) {
      await Promise.all(names.slice(i, i + 2).map((n) => compileOne(clang, srcDir, n, tmp)));
    }
    try {
      renameSync(tmp, dir);
    } catch (err) {
      // A concurrent build finished first: its entry is identical, keep it.
      const code = (err as NodeJS.ErrnoException).code;
      if ((code !== 'ENOTEMPTY' && code !== 'EEXIST') || !entryComplete(dir, names)) throw err;
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  return result(dir, names, false, version);
}

/** Path of one of ambpf's objects (compiling on a miss). */
export async function objectPath(name: string, opts: BuildOptions = {}): Promise<string> {
  const { objects } = await ensureObjects(opts);
  const p = objects[name];
  if (!p)
    throw new BpfBuildError(`no BPF source ${name}.bpf.c; known: ${Object.keys(objects).join(', ') || '(none)'}`, {
      name,
    });
  return p;
}
