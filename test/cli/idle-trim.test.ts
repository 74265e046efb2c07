// The loader's idle trim: when src/cli/idle-trim.ts decides to give memory back (on an injected clock
// and timer), and what src/libbpf/memory.ts gives back, for real, in this process.
import t from 'tap';
import { readFileSync, readlinkSync } from 'node:fs';
import { IdleTrim } from '../../src/cli/idle-trim.ts';
import { cleanFileMappings, releaseUnusedMemory } from '../../src/libbpf/memory.ts';

function harness(quietMs = 5000): {
  trim: IdleTrim;
  state: { passes: number; now: number; trims: number; fn?: () => void; ms: number; cancelled: boolean };
} {
  const state = {
    passes: 0,
    now: 1_000_000,
    trims: 0,
    fn: undefined as (() => void) | undefined,
    ms: 0,
    cancelled: false,
  };
  const trim = new IdleTrim({
    activity: () => state.passes,
    trim: () => state.trims++,
    quietMs,
    now: () => state.now,
    every: (fn, ms) => {
      state.fn = fn;
      state.ms = ms;
      return { cancel: () => (state.cancelled = true) };
    },
  });
  return { trim, state };
}

t.test('trims at start, then once after passes, when they stood still for quietMs', async (t) => {
  const { trim, state } = harness();
  trim.start();
  t.equal(state.trims, 1, 'startup is over: trimmed at once');
  t.equal(state.ms, 2500, 'checks every half quiet period');
  for (let i = 0; i < 10; i++) {
    state.now += 2500;
    state.fn!();
  }
  t.equal(state.trims, 1, 'no pass since: no second trim');
  state.passes++; // a ZDS snapshot's passes land
  state.now += 2500;
  state.fn!();
  t.equal(state.trims, 1, 'a pass restarts the quiet period');
  state.now += 2500;
  state.fn!();
  t.equal(state.trims, 1, 'not before quietMs');
  state.now += 2500;
  state.fn!();
  t.equal(state.trims, 2, 'quiet for 5 s after the last pass: trimmed');
  for (let i = 0; i < 10; i++) {
    state.now += 2500;
    state.fn!();
  }
  t.equal(state.trims, 2, 'nothing happened since: no third trim');
  trim.stop();
  t.ok(state.cancelled);
});

t.test('each burst of passes earns one trim once it is over, none while it lasts', async (t) => {
  const { trim, state } = harness(1000);
  trim.start();
  t.equal(trim.trims, 1, 'startup');
  for (let i = 0; i < 20; i++) {
    state.passes++;
    state.now += 500;
    trim.check();
  }
  t.equal(trim.trims, 1, 'a pass every check: busy, never trimmed');
  state.now += 500;
  trim.check();
  state.now += 500;
  trim.check();
  t.equal(trim.trims, 2, 'the burst ended: trimmed once');
  state.now += 60_000;
  trim.check();
  t.equal(trim.trims, 2);
});

t.test('cleanFileMappings keeps only read-only file mappings without copy-on-write pages', async (t) => {
  const smaps = [
    '00400000-00746000 r--p 00000000 fe:00 5366100    /usr/bin/node',
    'Rss:                3352 kB',
    'Anonymous:             0 kB',
    '0074a000-03044000 r-xp 0034a000 fe:00 5366100    /usr/bin/node',
    'Anonymous:             0 kB',
    '06b52000-06b56000 r--p 06751000 fe:00 5366100    /usr/bin/node',
    'Anonymous:            16 kB',
    '06b56000-06b7d000 rw-p 06755000 fe:00 5366100    /usr/bin/node',
    'Anonymous:            40 kB',
    '13824000-140f2000 rw-p 00000000 00:00 0          [heap]',
    'Anonymous:          8828 kB',
    '7fa00fd93000-7fa00fdf9000 r--s 00000000 00:0f 1234       anon_inode:bpf-map',
    'Anonymous:             0 kB',
    '7fa00fe00000-7fa00fe10000 r-xp 00000000 fe:00 99         /tmp/gone.so (deleted)',
    'Anonymous:             0 kB',
    '7fa02fd00000-7fa02ff05000 r-xp 01627000 fe:00 5366100    /usr/bin/node',
    'Anonymous:             0 kB',
  ].join('\n');
  t.same(
    cleanFileMappings(smaps).map((m) => [m.start.toString(16), m.end.toString(16)]),
    [
      ['400000', '746000'],
      ['74a000', '3044000'],
      ['7fa02fd00000', '7fa02ff05000'],
    ],
    'text, read-only data and the remapped builtins; not RELRO, .data, the heap, a BPF map or a deleted file',
  );
});

t.test('releaseUnusedMemory drops the binary pages this process is not using, and it keeps running', async (t) => {
  const exe = readlinkSync('/proc/self/exe');
  const exeRssKiB = (): number => {
    let sum = 0;
    let mine = false;
    for (const line of readFileSync('/proc/self/smaps', 'utf8').split('\n')) {
      const head = /^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \d+\s*(.*)$/.exec(line);
      if (head) mine = head[1] === exe;
      const rss = /^Rss:\s+(\d+) kB$/.exec(line);
      if (rss && mine) sum += Number(rss[1]);
    }
    return sum;
  };
  const before = exeRssKiB();
  const r = releaseUnusedMemory();
  const after = exeRssKiB();
  t.ok(r.mappings > 0, `dropped ${r.mappings} mappings`);
  t.equal(r.failed, 0, 'every madvise succeeded');
  t.ok(after < before, `node's own resident pages: ${before} -> ${after} KiB`);
  t.ok(r.rssAfterKiB < r.rssBeforeKiB, `VmRSS ${r.rssBeforeKiB} -> ${r.rssAfterKiB} KiB`);
  // Everything faults back in: JSON, regexps, a fresh function, a dynamic import.
  const { createHash } = await import('node:crypto');
  t.equal(
    createHash('sha256')
      .update(JSON.stringify({ a: [1, 2] }))
      .digest('hex').length,
    64,
  );
  t.match(new Function('x', 'return `v${x}`')(42), /^v42$/);
});
