// The Dockerfile, checked without a Docker engine: parsed into stages, its base images and packages
// named and pinned, and its build replayed here: the files its app stage copies are copied into a
// scratch root, the clang stage's command runs there, and the runtime stage's view (no clang, the
// copied cache dir) must find every object without compiling. The flags come from src/bpf/build.ts,
// so a Dockerfile that ran clang by hand with other flags would fail here.
import t from 'tap';
import { cpSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { BPF_CFLAGS, sourceHash, sourceNames } from '../../src/bpf/build.ts';
import { REPO_ROOT, type Json } from './manifests.ts';

const run = promisify(execFile);

interface Instruction {
  readonly op: string;
  readonly args: string;
}
interface Stage {
  readonly from: string;
  readonly name: string | undefined;
  readonly instructions: Instruction[];
}

/** Dockerfile -> stages (comments dropped, `\` continuations joined). */
function parseDockerfile(text: string): Stage[] {
  const lines = text.split('\n').filter((l) => !/^\s*#/.test(l));
  const joined: string[] = [];
  let cur = '';
  for (const line of lines) {
    if (/\\\s*$/.test(line)) cur += line.replace(/\\\s*$/, ' ');
    else {
      cur += line;
      if (cur.trim()) joined.push(cur.trim().replace(/\s+/g, ' '));
      cur = '';
    }
  }
  const stages: Stage[] = [];
  for (const l of joined) {
    const [op = '', ...rest] = l.split(' ');
    const args = rest.join(' ');
    if (op.toUpperCase() === 'FROM') {
      const m = /^(?:--platform=\S+ )?(\S+)(?: AS (\S+))?$/i.exec(args);
      if (!m) throw new Error(`cannot parse FROM ${args}`);
      stages.push({ from: m[1]!, name: m[2], instructions: [] });
    } else {
      const stage = stages.at(-1);
      if (!stage) throw new Error(`${op} before FROM`);
      stage.instructions.push({ op: op.toUpperCase(), args });
    }
  }
  return stages;
}

function envOf(stage: Stage): Record<string, string> {
  const env: Record<string, string> = {};
  for (const i of stage.instructions.filter((i) => i.op === 'ENV')) {
    for (const [, k, v] of i.args.matchAll(/(\w+)=(\S+)/g)) env[k!] = v!;
  }
  return env;
}

const aptPackages = (stage: Stage): string[] =>
  stage.instructions
    .filter((i) => i.op === 'RUN')
    .flatMap((i) =>
      [...i.args.matchAll(/apt-get install ([^&;|]+)/g)].flatMap((m) =>
        m[1]!.split(' ').filter((w) => w && !w.startsWith('-')),
      ),
    );

const copies = (stage: Stage): Array<{ from: string | undefined; src: string[]; dest: string }> =>
  stage.instructions
    .filter((i) => i.op === 'COPY')
    .map((i) => {
      const words = i.args.split(' ');
      const from = words.find((w) => w.startsWith('--from='))?.slice('--from='.length);
      const paths = words.filter((w) => !w.startsWith('--'));
      return { from, src: paths.slice(0, -1), dest: paths.at(-1)! };
    });

const dockerfile = readFileSync(join(REPO_ROOT, 'Dockerfile'), 'utf8');
const stages = parseDockerfile(dockerfile);
const runtime = stages.at(-1)!;
const clangStage = stages.find((s) => aptPackages(s).includes('clang'));
const appStage = stages.find((s) => s.instructions.some((i) => i.op === 'RUN' && /npm ci/.test(i.args)));

t.test('multi-stage, every base image pinned by tag', async (t) => {
  t.ok(stages.length >= 2, `${stages.length} stages`);
  const names = new Set(stages.map((s) => s.name).filter(Boolean));
  for (const s of stages) {
    if (names.has(s.from)) continue; // FROM an earlier stage
    const m = /^([^:@\s]+):([^:@\s]+)$/.exec(s.from);
    t.ok(m, `${s.from} names a tag`);
    t.not(m?.[2], 'latest', `${s.from} is not latest`);
  }
  t.equal(runtime.from, 'node:24-bookworm-slim', 'runtime on Node 24 slim');
  t.ok(clangStage, 'a stage installs clang');
  t.equal(clangStage?.from, 'debian:bookworm', 'clang stage on Debian bookworm (same libbpf headers as the runtime)');
  t.not(clangStage, runtime, 'clang is not in the runtime stage');
});

t.test('packages: libbpf1, bpftool, iproute2 at runtime; clang and libbpf-dev only at build', async (t) => {
  const rt = aptPackages(runtime);
  for (const p of ['libbpf1', 'bpftool', 'iproute2']) t.ok(rt.includes(p), `runtime installs ${p}`);
  t.notOk(
    rt.some((p) => /clang|llvm|-dev$/.test(p)),
    `no compiler or headers at runtime (${rt.join(' ')})`,
  );
  const build = clangStage ? aptPackages(clangStage) : [];
  for (const p of ['clang', 'libbpf-dev']) t.ok(build.includes(p), `build stage installs ${p}`);
  t.ok(
    appStage?.instructions.some((i) => i.op === 'RUN' && /npm ci .*--omit=dev/.test(i.args)),
    'npm ci --omit=dev: node@24 (a devDependency) stays out',
  );
  for (const s of stages) {
    for (const i of s.instructions.filter((i) => i.op === 'RUN' && /apt-get install/.test(i.args))) {
      t.match(i.args, /--no-install-recommends/, `${s.name ?? 'runtime'}: no recommends`);
      t.match(i.args, /rm -rf \/var\/lib\/apt\/lists/, `${s.name ?? 'runtime'}: apt lists removed in the same layer`);
    }
  }
});

t.test('entrypoint is ambpf, default command `run --in-cluster`', async (t) => {
  const entry = runtime.instructions.filter((i) => i.op === 'ENTRYPOINT');
  t.equal(entry.length, 1, 'one ENTRYPOINT');
  t.same(JSON.parse(entry[0]?.args ?? 'null'), ['/opt/ambpf/bin/ambpf'], 'exec form: signals reach the loader');
  const cmd = runtime.instructions.filter((i) => i.op === 'CMD');
  t.same(JSON.parse(cmd[0]?.args ?? 'null'), ['run', '--in-cluster']);
});

t.test('the clang stage compiles with the flags of src/bpf/build.ts', async (t) => {
  if (!clangStage) return t.fail('no clang stage');
  const runs = clangStage.instructions.filter((i) => i.op === 'RUN').map((i) => i.args);
  // Commands of each RUN (split at && ; ||) that are a clang invocation, not an apt-get naming it.
  const direct = runs
    .flatMap((r) => r.split(/&&|;|\|\|/).map((c) => c.trim()))
    .filter((c) => /^(\S*\/)?clang(-\d+)?\s/.test(c));
  const viaAmbpf = runs.filter((r) => /bin\/ambpf build/.test(r));
  t.ok(direct.length + viaAmbpf.length > 0, 'the stage compiles the objects');
  // Running clang by hand would need every flag build.ts uses (they are part of the cache key too).
  for (const c of direct) for (const flag of BPF_CFLAGS) t.ok(c.split(' ').includes(flag), `clang is given ${flag}`);
  if (viaAmbpf.length) t.pass('`ambpf build` compiles with BPF_CFLAGS by construction (replayed below)');
});

t.test('the runtime gets the cache entry where the loader looks for it', async (t) => {
  if (!clangStage) return t.fail('no clang stage');
  const buildCache = envOf(clangStage)['AMBPF_CACHE_DIR'];
  const runtimeCache = envOf(runtime)['AMBPF_CACHE_DIR'];
  t.ok(buildCache, 'the clang stage sets AMBPF_CACHE_DIR');
  t.equal(runtimeCache, buildCache, 'the runtime looks in the same place');
  const fromBpf = copies(runtime).find((c) => c.from === clangStage.name && c.src.includes(buildCache ?? '?'));
  t.equal(fromBpf?.dest, runtimeCache, 'the cache dir is copied from the clang stage to that place');
  // The loader hashes bpf/ to find the entry: the sources must ship too.
  const appCopies = appStage ? copies(appStage).flatMap((c) => c.src) : [];
  t.ok(
    appCopies.some((s) => s.replace(/\/$/, '') === 'bpf'),
    'bpf/ is copied into the image',
  );
  t.ok(
    copies(runtime).some((c) => c.from === appStage?.name),
    'the runtime takes the app tree',
  );
});

t.test('.dockerignore keeps the build context small but never hides what the Dockerfile copies', async (t) => {
  const ignore = readFileSync(join(REPO_ROOT, '.dockerignore'), 'utf8')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'));
  for (const p of ['node_modules', '.git', 'build']) t.ok(ignore.includes(p), `${p} is ignored`);
  const contextSources = stages.flatMap((s) =>
    copies(s)
      .filter((c) => c.from === undefined)
      .flatMap((c) => c.src),
  );
  for (const src of contextSources) {
    const top = src.replace(/^\.\//, '').split('/')[0]!;
    t.notOk(
      ignore.some((p) => p === top || p === `${top}/`),
      `${src} is in the build context`,
    );
    t.ok(existsSync(join(REPO_ROOT, src)), `${src} exists`);
  }
});

t.test('replayed: the clang stage builds every object; the runtime, without clang, finds them all', async (t) => {
  if (!clangStage || !appStage) return t.fail('missing stages');
  // The image's /opt/ambpf: exactly what the app stage copies from the context, plus node_modules.
  const root = mkdtempSync(join(tmpdir(), 'ambpf-image-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  for (const c of copies(appStage).filter((c) => c.from === undefined)) {
    for (const src of c.src)
      cpSync(join(REPO_ROOT, src), join(root, c.dest === './' ? src : c.dest), { recursive: true });
  }
  symlinkSync(join(REPO_ROOT, 'node_modules'), join(root, 'node_modules'));
  const cache = join(root, 'build', 'bpf');
  const buildCmd = clangStage.instructions
    .filter((i) => i.op === 'RUN')
    .map((i) => i.args)
    .find((r) => r.startsWith('bin/ambpf build'));
  if (!buildCmd) return t.fail('the clang stage does not run bin/ambpf build (a hand-run clang is checked above)');
  const env = { ...process.env, AMBPF_CACHE_DIR: cache, AMBPF_LOG_LEVEL: 'warn' };
  const argv = buildCmd.split(' ');
  await run(join(root, argv[0]!), [...argv.slice(1)], { cwd: root, env, timeout: 240_000 });

  const names = sourceNames(join(root, 'bpf'));
  const entries = readdirSync(cache).filter((d) => !d.startsWith('.'));
  t.equal(entries.length, 1, 'one cache entry');
  t.ok(entries[0]?.startsWith(`${sourceHash(join(REPO_ROOT, 'bpf'))}-`), 'keyed by the hash of bpf/ and BPF_CFLAGS');
  for (const n of names) t.ok(existsSync(join(cache, entries[0]!, `${n}.bpf.o`)), `${n}.bpf.o built`);

  // Runtime: no clang anywhere (AMBPF_CLANG points nowhere), same cache dir.
  const { stdout } = await run(join(root, 'bin/ambpf'), ['build', '--json'], {
    cwd: root,
    env: { ...env, AMBPF_CLANG: join(root, 'no-clang-here') },
    timeout: 60_000,
  });
  const result = JSON.parse(stdout) as {
    cached: boolean;
    clangVersion: string | null;
    objects: Record<string, string>;
  };
  t.equal(result.cached, true, 'nothing compiled at runtime');
  t.equal(result.clangVersion, null, 'clang really was absent');
  t.same(Object.keys(result.objects).sort(), names, 'every object found');
});

const gccStage = stages.find((s) => aptPackages(s).includes('gcc'));
const PLUGIN_IN_IMAGE = '/opt/ambpf/build/cni/ambpf-cni';

t.test('the CNI plugin: built as `make cni` builds it, shipped alone, no compiler at runtime', async (t) => {
  if (!gccStage) return t.fail('no stage installs gcc');
  t.not(gccStage, runtime, 'gcc is not in the runtime stage');
  t.notOk(aptPackages(runtime).includes('gcc'), 'no gcc at runtime');
  // The Makefile's recipe, with $@ and $< filled in, is the command the stage runs.
  const makefile = readFileSync(join(REPO_ROOT, 'Makefile'), 'utf8');
  const recipe = /^build\/cni\/ambpf-cni: (\S+)\n(?:\t.*\n)*?\t(gcc .*)$/m.exec(makefile);
  t.ok(recipe, 'the Makefile has the build/cni/ambpf-cni rule');
  const expected = recipe?.[2]?.replace('$@', 'build/cni/ambpf-cni').replace('$<', recipe[1]!) ?? '?';
  const gccRuns = gccStage.instructions
    .filter((i) => i.op === 'RUN')
    .flatMap((i) => i.args.split(/&&|;/).map((c) => c.trim()))
    .filter((c) => c.startsWith('gcc '));
  t.same(gccRuns, [expected], `the stage runs the Makefile's recipe: ${expected}`);
  t.match(expected, /(^| )-static( |$)/, 'static: the host runs it with its own libc or none');
  // Only the plugin's source enters that stage; only its binary leaves it.
  t.same(
    copies(gccStage)
      .filter((c) => c.from === undefined)
      .flatMap((c) => c.src),
    [recipe?.[1]],
    'the stage copies only the source',
  );
  const shipped = copies(runtime).filter((c) => c.from === gccStage.name);
  t.same(
    shipped.map((c) => [c.src, c.dest]),
    [[[`${PLUGIN_IN_IMAGE}`], PLUGIN_IN_IMAGE]],
    `the runtime gets only ${PLUGIN_IN_IMAGE}`,
  );
  // The image's content rules: nothing from the build context reaches the runtime directly, and no
  // stage copies the tests (their ZDS stand-ins, CNI fixtures, fake plugins).
  t.same(
    copies(runtime).filter((c) => c.from === undefined),
    [],
    'the runtime copies nothing from the context',
  );
  for (const s of stages) {
    for (const c of copies(s).filter((c) => c.from === undefined)) {
      t.notOk(
        c.src.some((p) => /^(\.\/)?test(\/|$)/.test(p)),
        `${s.name ?? 'runtime'}: ${c.src.join(' ')} is not test/`,
      );
    }
  }
});

t.test("replayed: the CNI stage's command builds a static plugin from the repo's source", async (t) => {
  if (!gccStage) return t.fail('no stage installs gcc');
  const root = mkdtempSync(join(tmpdir(), 'ambpf-image-cni-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  for (const c of copies(gccStage).filter((c) => c.from === undefined)) {
    for (const src of c.src)
      cpSync(join(REPO_ROOT, src), join(root, c.dest.replace(/^\.\//, ''), basename(src)), { recursive: true });
  }
  for (const i of gccStage.instructions.filter((i) => i.op === 'RUN' && !/apt-get/.test(i.args))) {
    await run('/bin/sh', ['-c', i.args], { cwd: root, timeout: 120_000 });
  }
  const bin = join(root, PLUGIN_IN_IMAGE.replace('/opt/ambpf/', ''));
  t.ok(existsSync(bin), 'the plugin is where the runtime copies it from');
  const elf = readFileSync(bin);
  // A dynamically linked ELF has a PT_INTERP program header; `-static` leaves none.
  t.notOk(elf.includes('/lib64/ld-linux') || elf.includes('/lib/ld-linux'), 'no dynamic loader named: static');
  // It answers VERSION itself (docs/cni.md), with no agent anywhere.
  const version = run(bin, [], { env: { CNI_COMMAND: 'VERSION' }, timeout: 10_000 });
  version.child.stdin?.end('{"cniVersion":"1.0.0"}');
  const { stdout } = await version;
  // The exact list is test/cni's business; here: it runs, and speaks the spec's VERSION answer.
  const versions = (JSON.parse(stdout) as Json)['supportedVersions'];
  t.ok(
    Array.isArray(versions) && versions.includes('1.0.0'),
    `supportedVersions ${JSON.stringify(versions)} includes 1.0.0`,
  );
});
