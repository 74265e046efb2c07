// dist/ (src/cli/build-js.ts): bin/ambpf runs the prebuilt JavaScript only while it was built from exactly
// the sources in src/; an edited, added or removed source file makes it run the sources, never the stale
// build. Every test works on its own copy of bin/ and src/ in a temp dir (node_modules linked), removed in
// teardown. Which tree ran is told apart by a marker written into dist/cli/main.js after the build: the
// sources never carry it.
import t from 'tap';
import {
  appendFileSync,
  cpSync,
  mkdtempSync,
  readFileSync,
  realpathSync,
  rmSync,
  symlinkSync,
  unlinkSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { buildJs, distIsFresh, sourcesListing, toJavaScript } from '../../src/cli/build-js.ts';
import { COMMANDS } from '../../src/cli/registry.ts';

const run = promisify(execFile);
const REPO_ROOT = realpathSync(new URL('../..', import.meta.url));
const NODE = join(REPO_ROOT, 'node_modules/node/bin/node');
const DIST_MARK = 'ambpf 0.1.0 (from dist)';

/**
 * The children's environment: tap's coverage off (bin/ambpf runs the sources under coverage, and the
 * sandbox's files must not enter the report), no override.
 */
const ENV: NodeJS.ProcessEnv = { ...process.env, _TAPJS_PROCESSINFO_COVERAGE_: '0' };
delete ENV['AMBPF_FROM_SOURCE'];

function sandbox(t: { teardown: (fn: () => void) => void }): string {
  const root = mkdtempSync(join(tmpdir(), 'ambpf-dist-test-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  for (const d of ['bin', 'src']) cpSync(join(REPO_ROOT, d), join(root, d), { recursive: true });
  symlinkSync(realpathSync(join(REPO_ROOT, 'node_modules')), join(root, 'node_modules'));
  return root;
}

/** Builds dist/ and marks its main.js (after 'ambpf 0.1.0'), so `version` says which tree ran. */
function buildMarked(root: string): void {
  buildJs(root);
  const main = join(root, 'dist/cli/main.js');
  writeFileSync(main, readFileSync(main, 'utf8').replace("'ambpf 0.1.0", `'${DIST_MARK}`));
}

async function version(root: string, env: NodeJS.ProcessEnv = ENV): Promise<string> {
  const { stdout, stderr } = await run(join(root, 'bin/ambpf'), ['version'], { env, timeout: 60_000 });
  // Choosing between dist/ and the sources says nothing (it once leaked xargs' SIGPIPE complaint).
  if (stderr.trim() !== '') throw new Error(`bin/ambpf version wrote to stderr: ${stderr.trim()}`);
  // distIsFresh (what the bench reports) must say what bin/ambpf just chose.
  const fromDist = stdout.startsWith(DIST_MARK);
  if (distIsFresh(root, env) !== fromDist)
    throw new Error(`distIsFresh says ${!fromDist} but bin/ambpf ran ${fromDist ? 'dist/' : 'the sources'}`);
  return stdout.trim();
}

t.test('a fresh build runs; an edit, an addition or a removal in src/ runs the sources', async (t) => {
  const root = sandbox(t);
  t.equal(await version(root), 'ambpf 0.1.0', 'no dist/: the sources');
  buildMarked(root);
  t.equal(await version(root), DIST_MARK, 'fresh dist/: the build');

  const ip = join(root, 'src/ip.ts');
  const original = readFileSync(ip);
  appendFileSync(ip, '\n// edited\n');
  t.equal(await version(root), 'ambpf 0.1.0', 'a source edited: the sources');
  writeFileSync(ip, original);
  utimesSync(ip, new Date(), new Date());
  t.equal(await version(root), DIST_MARK, 'the same bytes again (newer mtime): the build, by content');

  writeFileSync(join(root, 'src/added.ts'), 'export const x = 1;\n');
  t.equal(await version(root), 'ambpf 0.1.0', 'a source added: the sources');
  unlinkSync(join(root, 'src/added.ts'));
  t.equal(await version(root), DIST_MARK);

  const readme = join(root, 'src/zds/README.md');
  const text = readFileSync(readme);
  unlinkSync(readme);
  t.equal(await version(root), 'ambpf 0.1.0', 'a file removed: the sources');
  writeFileSync(readme, text);
  t.equal(await version(root), DIST_MARK);

  t.equal(await version(root, { ...ENV, AMBPF_FROM_SOURCE: '1' }), 'ambpf 0.1.0', 'AMBPF_FROM_SOURCE=1: the sources');
  t.equal(
    await version(root, { ...ENV, _TAPJS_PROCESSINFO_COVERAGE_: '1' }),
    'ambpf 0.1.0',
    "under tap's coverage: the sources",
  );
  writeFileSync(join(root, 'dist/.sources'), sourcesListing(root).slice(0, -80));
  t.equal(await version(root), 'ambpf 0.1.0', 'a damaged stamp: the sources');
});

t.test('a rebuild takes the edit; building a current tree writes nothing', async (t) => {
  const root = sandbox(t);
  t.equal(buildJs(root), true, 'first build writes');
  t.equal(buildJs(root), false, 'second build: up to date');
  const main = join(root, 'src/cli/main.ts');
  writeFileSync(main, readFileSync(main, 'utf8').replace("'ambpf 0.1.0\\n'", "'ambpf 0.1.0-edited\\n'"));
  t.equal(await version(root), 'ambpf 0.1.0-edited', 'stale: the sources');
  buildMarked(root);
  t.equal(await version(root), `${DIST_MARK}-edited`, 'rebuilt: the build again, with the edit');
});

t.test('dist/ loads no TypeScript: every command starts with type stripping off', async (t) => {
  const root = sandbox(t);
  buildJs(root);
  // A .ts import left in dist/ fails here (ERR_UNKNOWN_FILE_EXTENSION), so every command's module graph
  // (its static imports, what `--help` loads) is checked to be JavaScript only.
  for (const c of COMMANDS) {
    const { stdout } = await run(
      NODE,
      ['--no-experimental-strip-types', join(root, 'dist/cli/main.js'), c.name, '--help'],
      { env: ENV, timeout: 60_000 },
    );
    t.match(stdout, /Usage: ambpf/, `${c.name} --help from dist/`);
  }
});

t.test('the transform keeps every line where it was and rewrites relative .ts paths only', async (t) => {
  const file = join(REPO_ROOT, 'src/cli/main.ts');
  const src = readFileSync(file, 'utf8');
  const js = toJavaScript(src, file);
  t.equal(js.split('\n').length, src.split('\n').length, 'same line count');
  t.match(js, /from '\.\/registry\.js'/);
  t.notMatch(js, /'\.\.?\/[^']*\.ts'/, 'no relative .ts path left');
  t.match(js, /from 'node:fs'/, 'builtins untouched');
  t.throws(() => toJavaScript("import { x } from './nowhere.ts';\n", file), /nowhere\.ts' is not a source file/);
});

t.test('the image builds dist/ in its app stage, from what that stage copies', async (t) => {
  const dockerfile = readFileSync(join(REPO_ROOT, 'Dockerfile'), 'utf8');
  const app = dockerfile.slice(dockerfile.indexOf(' AS app'), dockerfile.indexOf(' AS bpf'));
  const cmd = /^RUN (node .*src\/cli\/build-js\.ts.*)$/m.exec(app)?.[1];
  if (!cmd) return t.fail('the app stage does not run src/cli/build-js.ts');
  t.ok(app.indexOf('COPY src') < app.indexOf(cmd), 'after the sources are copied');
  const root = mkdtempSync(join(tmpdir(), 'ambpf-dist-image-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  for (const d of ['bin', 'src']) cpSync(join(REPO_ROOT, d), join(root, d), { recursive: true });
  symlinkSync(realpathSync(join(REPO_ROOT, 'node_modules')), join(root, 'node_modules'));
  const [bin, ...args] = cmd.split(' ');
  await run(bin === 'node' ? NODE : bin!, args, { cwd: root, env: ENV, timeout: 60_000 });
  t.equal(readFileSync(join(root, 'dist/.sources'), 'utf8'), sourcesListing(root), 'dist/ current in the image');
});
