// `make js`: the sources as plain JavaScript in dist/, so the processes bin/ambpf starts (the long-lived
// loader above all) never load Node's TypeScript stripper: amaro, swc compiled to WebAssembly, costs ~17
// MiB of resident memory in every process that imports a .ts file (issue 20: loader RSS at 250 pods).
//
// The transform is Node's own (module.stripTypeScriptTypes, mode 'strip', the one `node file.ts` applies
// when it loads a file): types become blanks, so every line and column stays where it was in src/ and a
// stack trace from dist/ points at the right place in the source. dist/ mirrors src/ at the same depth
// (dist/cli/main.js for src/cli/main.ts), so paths resolved from import.meta.url ('../../bin/ambpf')
// reach the same files; relative '.ts' string literals (imports, the command registry, the helper
// scripts spawned by path) become '.js'.
//
// dist/.sources lists every file under src/ with its SHA-256, in the format of
// `find src -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum`; bin/ambpf runs dist/ only when that
// command prints exactly this file, so a source edited, added or removed after the build makes it run
// the sources again, never the stale build. The new tree is written beside dist/ and swapped in whole.
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { stripTypeScriptTypes } from 'node:module';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

/** A relative path to a TypeScript file in quotes (src/ has none in template literals). */
const RELATIVE_TS = /(['"])(\.\.?\/[A-Za-z0-9_./-]+)\.ts\1/g;

/** Every regular file under `dir` (symlinks skipped, as `find -type f` does), as paths relative to `root`. */
function filesUnder(root: string, dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(join(root, dir), { withFileTypes: true })) {
    const path = `${dir}/${e.name}`;
    if (e.isDirectory()) out.push(...filesUnder(root, path));
    else if (e.isFile()) out.push(path);
  }
  return out;
}

/** What `find src -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum` prints in `root`. */
export function sourcesListing(root: string): string {
  const files = filesUnder(root, 'src').sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
  const sha256 = (f: string): string =>
    createHash('sha256')
      .update(readFileSync(join(root, f)))
      .digest('hex');
  return files.map((f) => `${sha256(f)}  ${f}\n`).join('');
}

/**
 * Whether bin/ambpf, started now with this environment, would run dist/ (its dist_is_fresh): dist/.sources
 * is exactly the sources' listing and neither AMBPF_FROM_SOURCE nor tap's coverage asks for the sources.
 * Otherwise every process it starts pays Node's TypeScript stripper (the bench says so beside its RSS).
 */
export function distIsFresh(root: string, env: NodeJS.ProcessEnv = process.env): boolean {
  if (env['AMBPF_FROM_SOURCE'] || env['_TAPJS_PROCESSINFO_COVERAGE_'] === '1') return false;
  const listed = join(root, 'dist', '.sources');
  return existsSync(listed) && readFileSync(listed, 'utf8') === sourcesListing(root);
}

/** One source file as dist/ holds it; throws when a rewritten path names no source file. */
export function toJavaScript(source: string, file: string): string {
  const code = stripTypeScriptTypes(source, { mode: 'strip' });
  return code.replace(RELATIVE_TS, (_m, quote: string, path: string) => {
    if (!existsSync(resolve(dirname(file), `${path}.ts`)))
      throw new Error(`${file}: '${path}.ts' is not a source file; dist/ would point nowhere`);
    return `${quote}${path}.js${quote}`;
  });
}

/** Builds `root`/dist from `root`/src unless it is current; returns whether it wrote anything. */
export function buildJs(root: string): boolean {
  const dist = join(root, 'dist');
  const listing = sourcesListing(root);
  if (existsSync(join(dist, '.sources')) && readFileSync(join(dist, '.sources'), 'utf8') === listing) return false;
  const tmp = `${dist}.tmp-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  try {
    for (const f of filesUnder(root, 'src').filter((p) => p.endsWith('.ts'))) {
      const out = join(tmp, relative('src', f).replace(/\.ts$/, '.js'));
      mkdirSync(dirname(out), { recursive: true });
      writeFileSync(out, toJavaScript(readFileSync(join(root, f), 'utf8'), join(root, f)));
    }
    // The listing is taken before the transform: a source changed while it ran makes the stamp not match.
    writeFileSync(join(tmp, '.sources'), listing);
    const old = `${dist}.old-${process.pid}`;
    if (existsSync(dist)) renameSync(dist, old);
    renameSync(tmp, dist);
    rmSync(old, { recursive: true, force: true });
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  return true;
}

if (import.meta.main) {
  const root = process.argv[2] ? resolve(process.argv[2]) : ROOT;
  process.stdout.write(buildJs(root) ? `dist/ built from src/ in ${root}\n` : `dist/ is up to date in ${root}\n`);
}
