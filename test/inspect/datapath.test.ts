// `ambpf map|prog` against bpftool on ambpf's own datapath: every object of bpf/ (built by
// ensureObjects) loaded through libbpf-ts with its maps pinned in a per-run bpffs directory (nothing
// attached), every map given entries of its real key/value sizes, then every pinned map, every
// internal map (.rodata, .bss, found through the programs' map_ids) and every program compared in
// plain, -j and -p. Same dynamic-field notes as compare.test.ts.
import t from 'tap';
import { mkdirSync, readdirSync, rmSync } from 'node:fs';
import { BpfMap, BpfObject, numPossibleCpus } from '../../src/libbpf/index.ts';
import { ensureObjects } from '../../src/bpf/build.ts';
import { OBJECTS } from '../../src/bpf/datapath.ts';
import { testPrefix } from '../helpers/prefix.ts';
import { ambpf, bpftool, hasBpftool, same } from './oracle.ts';

const MODES: readonly (readonly string[])[] = [[], ['-j'], ['-p']];
const NO_USER_UPDATE = new Set([18 /* sockhash */, 24 /* sk_storage */, 15 /* sockmap */]);

let cleanup = (): void => {};

async function main(): Promise<void> {
  const prefix = testPrefix();
  const root = `/sys/fs/bpf/${prefix}`;
  const objs: BpfObject[] = [];
  cleanup = () => {
    for (const o of objs.reverse()) o.close();
    rmSync(root, { recursive: true, force: true });
  };
  t.teardown(cleanup);
  mkdirSync(root, { recursive: true });

  const { objects } = await ensureObjects();
  for (const name of OBJECTS) {
    const obj = BpfObject.open(objects[name]!);
    objs.push(obj);
    obj.setPinDir(root);
    obj.load();
  }

  const pinned = readdirSync(root)
    .filter((n) => n.startsWith('ambpf_'))
    .sort();
  t.ok(
    pinned.includes('ambpf_pods') && pinned.includes('ambpf_stats'),
    `the datapath pinned its maps: ${pinned.join(' ')}`,
  );

  // Entries of the right sizes in every map user space may write (bytes are a pattern: the point is
  // the formatting of each map's real BTF types, not meaningful values).
  const cpus = numPossibleCpus();
  for (const name of pinned) {
    const m = BpfMap.openPinned(`${root}/${name}`);
    try {
      const info = m.info();
      if (NO_USER_UPDATE.has(info.type)) continue;
      const key = Uint8Array.from({ length: info.keySize }, (_, i) => (i * 7 + 1) & 0xff);
      if (info.type === 2 || info.type === 6) key.fill(0); // arrays: index 0
      const vs = m.valueBufferSize;
      const value = Uint8Array.from({ length: vs }, (_, i) => (i * 13 + cpus) & 0xff);
      m.update(key, value);
    } finally {
      m.close();
    }
  }

  await t.test('every pinned ambpf map: show and dump', async (t) => {
    for (const name of pinned) {
      for (const mode of MODES) {
        same(t, ['map', 'show', ...mode, 'pinned', `${root}/${name}`]);
        same(t, ['map', 'dump', ...mode, 'pinned', `${root}/${name}`]);
      }
    }
  });

  await t.test('ambpf map dump without a selector = bpftool map dump name ambpf_pods', async (t) => {
    // An ambpf addition (documented in `ambpf map help`): bpftool prints its usage for a bare dump.
    // Other runs on this machine may load or fill their own ambpf_pods meanwhile: up to three tries.
    for (const mode of MODES) {
      let a = bpftool(['map', 'dump', ...mode, 'name', 'ambpf_pods']);
      let b = ambpf(['map', 'dump', ...mode]);
      for (let i = 0; i < 2 && !(a.stdout.equals(b.stdout) && a.code === b.code); i++) {
        a = bpftool(['map', 'dump', ...mode, 'name', 'ambpf_pods']);
        b = ambpf(['map', 'dump', ...mode]);
      }
      t.equal(b.code, a.code, `exit code of a bare dump ${mode.join(' ')}`);
      t.equal(b.stdout.toString('latin1'), a.stdout.toString('latin1'), `output of a bare dump ${mode.join(' ')}`);
      t.equal(b.code, 0);
    }
    const bare = bpftool(['map', 'dump']);
    t.equal(bare.code, 255, 'bpftool itself refuses a bare dump: the default overrides no form it accepts');
    same(t, ['map', 'dump', 'name'], 255);
    same(t, ['map', 'dump', 'pinned', `${root}/ambpf_pods`, 'extra'], 255);
    t.match(ambpf(['map', 'help']).stderr, /`map dump` without MAP dumps\n\s+name ambpf_pods/);
  });

  await t.test('every program (with its .rodata metadata lookup) and the maps it uses', async (t) => {
    const mapIds = new Set<number>();
    for (const obj of objs) {
      for (const p of obj.programs) {
        if (!p.autoload) continue;
        const info = p.info();
        info.mapIds.forEach((id) => mapIds.add(id));
        for (const mode of MODES) same(t, ['prog', 'show', ...mode, 'id', String(info.id)], 0);
      }
    }
    for (const id of mapIds) {
      for (const mode of MODES) {
        same(t, ['map', 'show', ...mode, 'id', String(id)], 0);
        same(t, ['map', 'dump', ...mode, 'id', String(id)]);
      }
    }
  });
}

if (process.getuid?.() !== 0) {
  t.plan(0, 'skipped: needs root, it loads BPF programs');
} else if (!hasBpftool()) {
  // In CI `make test` installs bpftool first: a missing oracle there is a broken setup, not a skip.
  if (process.env['CI']) t.fail('bpftool v7.x is not on PATH in CI: the oracle these tests compare against is missing');
  else t.plan(0, 'skipped: needs bpftool v7.x on PATH, the oracle these tests compare against');
} else {
  try {
    await main();
  } catch (e) {
    cleanup();
    throw e;
  }
}
