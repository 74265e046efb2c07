import type { Command } from '../command.ts';
import { UsageError } from '../../errors.ts';

export const command: Command = {
  summary: 'compile the BPF objects into the cache (what `make bpf` runs)',
  usage: [
    'Usage: ambpf build [--src DIR] [--cache-dir DIR] [-j|--json]',
    '',
    'Compiles every DIR/*.bpf.c (default: the bpf/ directory of this checkout) with clang into the',
    'object cache build/bpf/<sources hash>-<clang hash>/ (or $AMBPF_CACHE_DIR). Nothing is compiled',
    'when the cache already holds these sources; without clang a warm cache entry is used.',
    '',
    '  --src DIR         BPF sources (default: bpf/)',
    '  --cache-dir DIR   cache root (default: $AMBPF_CACHE_DIR or build/bpf)',
    '  -j, --json        print the result as JSON',
  ].join('\n'),
  async run(argv) {
    const args = [...argv];
    let srcDir: string | undefined;
    let cacheDir: string | undefined;
    let json = false;
    while (args.length) {
      const a = args.shift()!;
      if (a === '-j' || a === '--json') json = true;
      else if (a === '--src' || a === '--cache-dir') {
        const v = args.shift();
        if (!v) throw new UsageError(`ambpf build ${a} needs a directory`);
        if (a === '--src') srcDir = v;
        else cacheDir = v;
      } else throw new UsageError(`unknown argument ${a} for ambpf build; see ambpf build --help`);
    }
    const { ensureObjects } = await import('../../bpf/build.ts');
    const r = await ensureObjects({ ...(srcDir ? { srcDir } : {}), ...(cacheDir ? { cacheDir } : {}) });
    if (json) process.stdout.write(JSON.stringify(r, null, 2) + '\n');
    else {
      process.stdout.write(`${r.cached ? 'up to date' : 'compiled'}: ${r.dir}\n`);
      for (const [name, path] of Object.entries(r.objects)) process.stdout.write(`  ${name}  ${path}\n`);
    }
    return 0;
  },
};
