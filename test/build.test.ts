// The BPF build cache: miss compiles, hit compiles nothing, no clang + warm cache uses the entry,
// no clang + cold cache and a compile error are clear errors. Each test works on its own copy of
// the fixture sources and its own cache dir, removed in teardown.
import t from 'tap';
import { cpSync, mkdtempSync, rmSync, statSync, writeFileSync, readdirSync, appendFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { ensureObjects, objectPath, BpfBuildError, sourceHash } from '../src/bpf/build.ts';
import { BpfObject } from '../src/libbpf/index.ts';
import { FIXTURE_SRC } from './libbpf/fixture.ts';

function sandbox(t: { teardown: (fn: () => void) => void }): { src: string; cache: string } {
  const root = mkdtempSync(join(tmpdir(), 'ambpf-build-test-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  const src = join(root, 'src');
  cpSync(FIXTURE_SRC, src, { recursive: true });
  return { src, cache: join(root, 'cache') };
}

t.test('miss compiles, hit compiles nothing, the object loads', async (t) => {
  const { src, cache } = sandbox(t);
  const first = await ensureObjects({ srcDir: src, cacheDir: cache });
  t.equal(first.cached, false);
  t.same(Object.keys(first.objects).sort(), ['basic', 'rejected']);
  t.match(first.dir, new RegExp(`^${cache}/${sourceHash(src)}-[0-9a-f]{12}$`));
  const mtime = statSync(first.objects['basic']!).mtimeMs;
  const second = await ensureObjects({ srcDir: src, cacheDir: cache });
  t.equal(second.cached, true);
  t.equal(second.dir, first.dir);
  t.equal(statSync(second.objects['basic']!).mtimeMs, mtime, 'not rewritten');
  t.equal(readdirSync(cache).filter((d) => d.startsWith('.tmp')).length, 0, 'no temp dirs left');
  using obj = BpfObject.open(await objectPath('basic', { srcDir: src, cacheDir: cache }));
  obj.load();
  t.ok(obj.program('count_packets').fd > 0);
  await t.rejects(
    objectPath('nope', { srcDir: src, cacheDir: cache }),
    /no BPF source nope\.bpf\.c; known: basic, rejected/,
  );
});

t.test('a header change is a miss (new entry)', async (t) => {
  const { src, cache } = sandbox(t);
  const a = await ensureObjects({ srcDir: src, cacheDir: cache });
  appendFileSync(join(src, 'include/fixture.h'), '\n/* changed */\n');
  const b = await ensureObjects({ srcDir: src, cacheDir: cache });
  t.equal(b.cached, false);
  t.not(b.dir, a.dir);
});

t.test('no clang: a warm entry (from any clang) is used; a cold cache is a clear error', async (t) => {
  const { src, cache } = sandbox(t);
  const missing = '/nonexistent/clang';
  const cold = await t.rejects(ensureObjects({ srcDir: src, cacheDir: cache, clang: missing }), BpfBuildError);
  t.ok(cold);
  await t.rejects(
    ensureObjects({ srcDir: src, cacheDir: cache, clang: missing }),
    /clang not found: install clang \(apt-get install clang\) or ship prebuilt objects/,
  );
  const warm = await ensureObjects({ srcDir: src, cacheDir: cache });
  const r = await ensureObjects({ srcDir: src, cacheDir: cache, clang: missing });
  t.equal(r.dir, warm.dir);
  t.equal(r.cached, true);
  t.equal(r.clangVersion, null);
  // The same through PATH: the CLI with no clang on PATH still finds the warm entry.
  const out = execFileSync(process.execPath, ['src/cli/main.ts', 'build', '--src', src, '--cache-dir', cache, '-j'], {
    encoding: 'utf8',
    env: { ...process.env, PATH: '/nonexistent', AMBPF_CLANG: '' },
  });
  t.equal((JSON.parse(out) as { dir: string }).dir, warm.dir);
});

t.test('a compile error carries clang stderr', async (t) => {
  const { src, cache } = sandbox(t);
  writeFileSync(join(src, 'broken.bpf.c'), 'int broken(void) { return undeclared_thing; }\n');
  const err = await t.rejects(ensureObjects({ srcDir: src, cacheDir: cache }), BpfBuildError);
  t.ok(err);
  await t.rejects(
    ensureObjects({ srcDir: src, cacheDir: cache }),
    /clang failed to compile broken\.bpf\.c:[\s\S]*undeclared_thing/,
  );
  t.same(readdirSync(cache), [], 'nothing half-built left in the cache');
});

t.test('AMBPF_CACHE_DIR overrides the cache root', async (t) => {
  const { src, cache } = sandbox(t);
  const saved = process.env['AMBPF_CACHE_DIR'];
  process.env['AMBPF_CACHE_DIR'] = cache;
  t.teardown(() => {
    if (saved === undefined) delete process.env['AMBPF_CACHE_DIR'];
    else process.env['AMBPF_CACHE_DIR'] = saved;
  });
  const r = await ensureObjects({ srcDir: src });
  t.ok(r.dir.startsWith(cache + '/'));
});
