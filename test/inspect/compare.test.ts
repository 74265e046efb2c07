// `ambpf map|prog` against the real bpftool on a zoo of maps and programs this test makes itself:
// a BTF-typed object (test/inspect/fixtures/zoo.bpf.c: chars and char arrays, enums, nested
// structs, unions, bitfields, arrays, pointers, bools, __int128; hash, array, per-CPU hash/array,
// LRU, sockhash, wide keys) loaded through libbpf-ts, plus maps without BTF made with
// bpf_map_create (one-line and broken layouts, per-CPU, prog_array, frozen, two maps sharing a
// name). Every case runs both tools with the same words in plain, -j and -p and requires the same
// stdout bytes and exit code.
//
// Dynamic fields: `loaded_at` is computed by both tools from the same load_time and the clocks at
// their own run; they agree unless a run straddles a clock adjustment. run_time_ns/run_cnt appear
// only with kernel.bpf_stats_enabled and our programs never run. Full listings (`map`, `prog` with
// no selector) include other engineers' objects, which may change between the two runs: those are
// retried up to three times and must match on one attempt.
import t from 'tap';
import { mkdirSync, rmSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BpfMap, BpfObject, numPossibleCpus, pinFd } from '../../src/libbpf/index.ts';
import { ensureObjects } from '../../src/bpf/build.ts';
import { testPrefix } from '../helpers/prefix.ts';
import { ambpf, bpftool, hasBpftool, same } from './oracle.ts';

const FIXTURES = fileURLToPath(new URL('./fixtures', import.meta.url));
const MODES: readonly (readonly string[])[] = [[], ['-j'], ['-p']];

/** zoo_value bytes (112, layout from the fixture's BTF: see the offsets in zoo.bpf.c's order). */
function zooValue(v: {
  u64: bigint;
  s64: bigint;
  s32: number;
  s16: number;
  u8: number;
  flag: number;
  color: number;
  small: number;
  bits: number;
  port: number;
  delta: number;
  tag: number;
  u32: number;
  counts: number[];
  label: Uint8Array;
  raw: number[];
  ptr: bigint;
  big: bigint;
}): Uint8Array {
  const b = Buffer.alloc(112);
  b.writeBigUInt64LE(v.u64, 0);
  b.writeBigInt64LE(v.s64, 8);
  b.writeInt32LE(v.s32, 16);
  b.writeInt16LE(v.s16, 20);
  b.writeUInt8(v.u8, 22);
  b.writeUInt8(v.flag, 23);
  b.writeInt32LE(v.color, 24);
  b.writeUInt8(v.small, 28);
  b.writeUIntLE(v.bits, 29, 3); // bits_a:3 bits_b:13 bits_c:7 from bit 232
  const inner = (off: number, k: number): void => {
    b.writeUInt16LE((v.port + k) & 0xffff, off);
    b.writeInt8(v.delta, off + 2);
    b.writeUInt8(v.tag, off + 3);
    b.writeUInt32LE((v.u32 + k) >>> 0, off + 4);
  };
  inner(32, 0);
  inner(40, 1);
  inner(48, 2);
  v.counts.forEach((c, i) => b.writeUInt32LE(c >>> 0, 56 + 4 * i));
  Buffer.from(v.label).copy(b, 68, 0, 12);
  v.raw.forEach((c, i) => b.writeUInt8(c, 80 + i));
  b.writeBigUInt64LE(v.ptr, 88);
  b.writeBigUInt64LE(v.big & 0xffffffffffffffffn, 96);
  b.writeBigUInt64LE(v.big >> 64n, 104);
  return b;
}

function zooKey(name: Uint8Array, id: number): Uint8Array {
  const b = Buffer.alloc(12);
  Buffer.from(name).copy(b, 0, 0, 8);
  b.writeUInt32LE(id, 8);
  return b;
}

const str = (s: string): Uint8Array => Buffer.from(s + '\0', 'latin1');
const u32 = (n: number): Uint8Array => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n >>> 0);
  return b;
};
const pattern = (n: number, seed: number): Uint8Array =>
  Uint8Array.from({ length: n }, (_, i) => (i * 37 + seed * 11 + 5) & 0xff);

/** Removes everything main() made; also called when setup itself throws (tap's teardown would not run). */
let cleanup = (): void => {};

async function main(): Promise<void> {
  const prefix = testPrefix();
  const root = `/sys/fs/bpf/${prefix}`;
  const cache = mkdtempSync(join(tmpdir(), `${prefix}-bpf-`));
  const opened: { close(): void }[] = [];
  cleanup = () => {
    for (const o of opened.reverse()) {
      try {
        o.close();
      } catch {
        // already gone
      }
    }
    rmSync(root, { recursive: true, force: true });
    rmSync(cache, { recursive: true, force: true });
  };
  t.teardown(cleanup);
  mkdirSync(`${root}/p`, { recursive: true });

  // ---- the BTF zoo, through libbpf-ts ----
  const { objects } = await ensureObjects({ srcDir: FIXTURES, cacheDir: cache });
  const obj = BpfObject.open(objects['zoo']!);
  opened.push(obj);
  obj.setPinDir(`${root}/m`);
  obj.load();
  for (const p of obj.programs) pinFd(p.fd, `${root}/p/${p.name}`);

  const zooHash = obj.map('zoo_hash');
  zooHash.update(
    zooKey(str('web'), 1),
    zooValue({
      u64: (1n << 64n) - 1n,
      s64: -5n,
      s32: -100000,
      s16: -3,
      u8: 255,
      flag: 1,
      color: 1,
      small: 200,
      bits: 5 | (4000 << 3) | (0x7d << 16),
      port: 15001,
      delta: -1,
      tag: 65,
      u32: 0xdeadbeef,
      counts: [1, 2, 3],
      // a backslash, quotes and a single quote: bpftool escapes the first two its own way
      label: str('he"l\\o\'x'),
      raw: [0x7f, 1, 0x41, 0],
      ptr: 0n,
      big: (1n << 100n) + 5n,
    }),
  );
  zooHash.update(
    zooKey(Uint8Array.from([0x64, 0x62, 0x01, 0x80, 0, 0, 0, 0]), 0xffffffff),
    zooValue({
      u64: 0n,
      s64: -(1n << 63n),
      s32: 2147483647,
      s16: -32768,
      u8: 0,
      flag: 0,
      color: -3,
      small: 7,
      bits: 0xffffff,
      port: 0,
      delta: -128,
      tag: 9,
      u32: 0,
      counts: [0, 0xffffffff, 7],
      label: Buffer.from('twelve chars', 'latin1'),
      raw: [0x20, 0x7e, 0x21, 0x22],
      ptr: 0xffff888812345678n,
      big: 0n,
    }),
  );
  zooHash.update(zooKey(pattern(8, 3), 7), pattern(112, 4));
  const zooArray = obj.map('zoo_array');
  zooArray.update(u32(1), Uint8Array.from([0x99, 0x3a, 0xfe, 0x7a, 0x01, 0x02, 0x03, 0x04]));
  const cpus = numPossibleCpus();
  const perCpu = (size: number, seed: number): Uint8Array => {
    const stride = Math.ceil(size / 8) * 8;
    const b = new Uint8Array(stride * cpus);
    for (let c = 0; c < cpus; c++) b.set(pattern(size, seed + c), c * stride);
    return b;
  };
  obj.map('zoo_pcpu_hash').update(u32(3), perCpu(8, 1));
  obj.map('zoo_pcpu_hash').update(u32(9), perCpu(8, 2));
  obj.map('zoo_pcpu_array').update(u32(0), perCpu(8, 3));
  obj.map('zoo_lru').update(Buffer.from('0102030405060708', 'hex'), u32(7));
  obj.map('zoo_lru').update(Buffer.from('ffffffffffffffff', 'hex'), u32(5));
  obj.map('zoo_wide').update(pattern(20, 5), pattern(40, 6));

  // ---- maps without BTF ----
  const raw = (name: string, type: Parameters<typeof BpfMap.create>[0], k: number, v: number, n: number): BpfMap => {
    const m = BpfMap.create(type, k, v, n, { name: `${prefix}${name}` });
    opened.push(m);
    m.pin(`${root}/${name}`);
    return m;
  };
  const h4 = raw('_h4', 'hash', 4, 8, 16); // one line: 4+8 <= 24
  h4.update(u32(1), pattern(8, 1));
  h4.update(u32(0x01020304), pattern(8, 2));
  raw('_h816', 'hash', 8, 16, 4).update(pattern(8, 3), pattern(16, 4)); // exactly 24: one line
  raw('_h817', 'hash', 8, 17, 4).update(pattern(8, 5), pattern(17, 6)); // value > 16: broken
  raw('_h20', 'hash', 20, 4, 4).update(pattern(20, 7), pattern(4, 8)); // key > 16: broken
  raw('_h40', 'hash', 40, 40, 4).update(pattern(40, 9), pattern(40, 10)); // several hex lines
  raw('_arr', 'array', 4, 12, 3).update(u32(2), pattern(12, 11));
  raw('_pch', 'percpu_hash', 4, 4, 4).update(u32(5), perCpu(4, 12));
  raw('_pca', 'percpu_array', 4, 20, 2).update(u32(1), perCpu(20, 13));
  raw('_lru', 'lru_hash', 2, 2, 8).update(Uint8Array.from([1, 2]), Uint8Array.from([3, 4]));
  raw('_progs', 'prog_array', 4, 4, 4); // empty slots: lookups fail, bpftool prints nothing for them
  const frozen = raw('_frz', 'array', 4, 4, 1);
  frozen.update(u32(0), u32(42));
  frozen.freeze();
  // Two maps with one name: `name` selects both (an array in JSON, a header per map in dumps).
  const twinA = BpfMap.create('hash', 4, 4, 2, { name: `${prefix}_twin` });
  const twinB = BpfMap.create('array', 4, 4, 1, { name: `${prefix}_twin` });
  opened.push(twinA, twinB);
  twinA.update(u32(1), u32(2));

  const zooMaps = [
    'zoo_hash',
    'zoo_array',
    'zoo_pcpu_hash',
    'zoo_pcpu_array',
    'zoo_lru',
    'zoo_sockhash',
    'zoo_wide',
  ].map((n) => `${root}/m/${n}`);
  const rawMaps = ['_h4', '_h816', '_h817', '_h20', '_h40', '_arr', '_pch', '_pca', '_lru', '_progs', '_frz'].map(
    (n) => `${root}/${n}`,
  );

  await t.test('map show and dump: every zoo and raw map, plain/-j/-p', async (t) => {
    for (const path of [...zooMaps, ...rawMaps]) {
      for (const mode of MODES) {
        same(t, ['map', 'show', ...mode, 'pinned', path], 0);
        same(t, ['map', 'dump', ...mode, 'pinned', path], 0);
      }
    }
  });

  await t.test('bin/ambpf end to end (a subset: start-up costs ~0.3 s a run)', async (t) => {
    for (const mode of MODES) {
      same(t, ['map', 'dump', ...mode, 'pinned', `${root}/m/zoo_hash`], 0, 'cli');
      same(t, ['map', 'show', ...mode, 'pinned', `${root}/_pca`], 0, 'cli');
      same(t, ['map', 'lookup', ...mode, 'pinned', `${root}/_h4`, 'key', '7', '7', '7', '7'], 254, 'cli');
      same(t, ['prog', 'show', ...mode, 'pinned', `${root}/p/zoo_connect4_with_a_long_name`], 0, 'cli');
      same(t, ['map', 'show', ...mode, 'id', '2147483646'], 255, 'cli');
      // (a bare `map dump` is ambpf's one addition: test/inspect/datapath.test.ts compares it with
      // `bpftool map dump name ambpf_pods`.)
      same(t, ['map', 'dump', ...mode, 'name'], 255, 'cli');
    }
  });

  await t.test('selectors: id, name, pinned, prefixes, -f, several maps under one name', async (t) => {
    const id = String(zooHash.id);
    for (const mode of MODES) {
      same(t, ['map', 'show', ...mode, 'id', id], 0);
      same(t, ['map', 'list', ...mode, 'name', 'zoo_hash'], 0);
      same(t, ['map', 'sh', ...mode, 'i', `0x${Number(id).toString(16)}`], 0);
      same(t, ['map', 'd', ...mode, 'id', id], 0);
      same(t, ['map', 'show', ...mode, 'name', `${prefix}_twin`], 0);
      same(t, ['map', 'dump', ...mode, 'name', `${prefix}_twin`], 0);
      same(t, ['map', '-f', ...mode, 'show', 'pinned', `${root}/_frz`], 0);
      same(t, ['map', '-f', ...mode, 'show', 'name', `${prefix}_twin`], 0);
    }
    // The twins really are two maps, so the multi-map paths were taken.
    t.match(
      ambpf(['map', 'show', 'name', `${prefix}_twin`]).stdout.toString(),
      new RegExp(`hash  name ${prefix}_twin[^]*array  name ${prefix}_twin`),
    );
  });

  await t.test('lookup and getnext, hex and decimal keys, BTF and raw', async (t) => {
    for (const mode of MODES) {
      same(t, ['map', 'lookup', ...mode, 'pinned', `${root}/_h4`, 'key', '1', '0', '0', '0'], 0);
      same(t, ['map', 'lookup', ...mode, 'pinned', `${root}/_h4`, 'key', 'hex', '04', '03', '02', '01'], 0);
      same(t, ['map', 'lookup', ...mode, 'pinned', `${root}/_h4`, 'key', '0x04', '03', '0x2', '1'], 0);
      same(
        t,
        [
          'map',
          'lookup',
          ...mode,
          'pinned',
          `${root}/m/zoo_hash`,
          'key',
          'hex',
          '77',
          '65',
          '62',
          '00',
          '00',
          '00',
          '00',
          '00',
          '01',
          '00',
          '00',
          '00',
        ],
        0,
      );
      same(t, ['map', 'lookup', ...mode, 'pinned', `${root}/m/zoo_pcpu_hash`, 'key', '3', '0', '0', '0'], 0);
      same(t, ['map', 'lookup', ...mode, 'pinned', `${root}/_pca`, 'key', '1', '0', '0', '0'], 0);
      same(t, ['map', 'lookup', ...mode, 'pinned', `${root}/_h40`, 'key', ...Array.from(pattern(40, 9), String)], 0);
      same(t, ['map', 'getnext', ...mode, 'pinned', `${root}/_h4`], 0);
      same(t, ['map', 'getnext', ...mode, 'pinned', `${root}/m/zoo_array`, 'key', '0', '0', '0', '0'], 0);
      same(t, ['map', 'getnext', ...mode, 'pinned', `${root}/_h4`, 'key', '9', '9', '9', '9'], 0);
      same(t, ['map', 'peek', ...mode, 'pinned', `${root}/_arr`, 'key', '2', '0', '0', '0'], 0);
    }
  });

  await t.test('errors: messages (JSON) and exit codes', async (t) => {
    const h4 = `${root}/_h4`;
    const cases: [string[], number][] = [
      [['map', 'show', 'id', '2147483646'], 255], // unknown id
      [['map', 'dump', 'id', 'abc'], 255],
      [['map', 'show', 'pinned', `${root}/nothing-here`], 255], // bad pin path
      [['map', 'show', 'pinned', `${tmpdir()}/${prefix}-not-bpffs`], 255],
      [['map', 'show', 'pinned', `${root}/p/zoo_sockops`], 255], // a program, not a map
      [['prog', 'show', 'pinned', h4], 255],
      [['map', 'show', 'name', 'aaaaaaaaaaaaaaaaaaaa'], 255],
      [['map', 'show', 'name', `${prefix}_none`], 255],
      [['map', 'show', 'bogus', '1'], 255],
      [['map', 'show', 'id'], 255],
      [['map', 'show', 'pinned', h4, 'extra'], 255],
      [['map', 'lookup', 'pinned', h4, 'key', '1', '0', '0'], 255], // wrong key size
      [['map', 'lookup', 'pinned', h4, 'key', '1', '0', '0', '0', '0'], 255],
      [['map', 'lookup', 'pinned', h4, 'key', 'hex', '01', '00', '00', 'zz'], 255],
      [['map', 'lookup', 'pinned', h4], 255],
      [['map', 'lookup', 'pinned', h4, 'value', '1'], 255],
      [['map', 'lookup', 'pinned', h4, 'key', '7', '7', '7', '7'], 254], // not found: -ENOENT
      [['map', 'getnext', 'pinned', h4, 'key', '4', '3', '2', '1'], 254], // the last key, or the first
      [['map', 'lookup', 'name', `${prefix}_twin`, 'key', '1', '0', '0', '0'], 255], // several maps
      [['map', 'nosuchcommand'], 255],
      [['prog', 'show', 'id', '2147483646'], 255],
      [['prog', 'show', 'tag', 'xyz'], 255],
      [['prog', 'show', 'name', `${prefix}_none`], 255],
    ];
    // In plain mode bpftool says what went wrong on stderr ("Error: ..."): operators read and grep
    // those lines, so ours must be the same lines (help and usage text aside, which name ambpf).
    const errorLines = (stderr: string): string[] => stderr.split('\n').filter((l) => l.startsWith('Error: '));
    for (const [args, code] of cases) {
      // getnext on the last key: which key is last depends on the hash; accept whichever bpftool does.
      const strict = args[1] !== 'getnext';
      for (const mode of MODES) {
        const { oracle, ours } = same(t, [args[0]!, ...mode, ...args.slice(1)], strict ? code : undefined);
        if (mode.length === 0 && strict)
          t.same(errorLines(ours.stderr), errorLines(oracle.stderr), `stderr Error: lines: ${args.join(' ')}`);
      }
    }
  });

  await t.test('prog show: id, name (longer than 15 chars), tag, pinned, -f', async (t) => {
    const c4 = obj.program('zoo_connect4_with_a_long_name');
    for (const mode of MODES) {
      same(t, ['prog', 'show', ...mode, 'id', String(c4.id)], 0);
      same(t, ['prog', 'show', ...mode, 'name', 'zoo_connect4_with_a_long_name'], 0);
      same(t, ['prog', 'show', ...mode, 'tag', c4.tag], 0);
      same(t, ['prog', 'show', ...mode, 'pinned', `${root}/p/zoo_sockops`], 0);
      same(t, ['prog', '-f', ...mode, 'show', 'pinned', `${root}/p/zoo_sockops`], 0);
    }
    t.match(
      ambpf(['prog', 'show', 'id', String(c4.id)]).stdout.toString(),
      /name zoo_connect4_with_a_long_name {2}tag/,
    );
  });

  await t.test('full listings (other objects may come and go: up to three attempts)', async (t) => {
    // Other objects' programs may run between the two tools' reads while another test holds BPF run-time
    // stats on (bench --profile): their counters are the one field allowed to move. Ours never run.
    const steady = (b: Buffer): string =>
      b
        .toString()
        .replace(/run_time_ns \d+ run_cnt \d+/g, 'run_time_ns N run_cnt N')
        .replace(/("run_time_ns": ?)\d+(, ?\s*"run_cnt": ?)\d+/g, '$1N$2N');
    for (const args of [['map'], ['map', '-j'], ['prog', 'show', '-p'], ['prog', 'list']]) {
      let ok = false;
      for (let i = 0; i < 3 && !ok; i++) {
        const a = bpftool(args);
        const b = ambpf(args);
        ok = steady(a.stdout) === steady(b.stdout) && a.code === b.code;
      }
      t.ok(ok, `same output: ${args.join(' ')}`);
    }
  });
}

if (process.getuid?.() !== 0) {
  t.plan(0, 'skipped: needs root, it creates BPF maps and programs');
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
