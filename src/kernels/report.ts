// `kernels/run.sh` ends here: read each kernel's console log, print the matrix, write docs/kernels.md,
// exit 1 when anything is not as it must be (ambpf program failing, self-test off its known answers,
// a guest that never finished).
// usage: report.ts --results DIR --kernels "5.10 6.1 6.12 host" [--write FILE] [--package K=NAME]...
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { parseConsole, type KernelRun } from './results.ts';
import { buildRows, problems } from './verdict.ts';
import { renderMarkdown } from './table.ts';

export interface Matrix {
  readonly runs: KernelRun[];
  readonly markdown: string;
  readonly problems: string[];
}

/** Everything the test and the CLI need from a results directory. */
export function loadMatrix(
  dir: string,
  kernels: readonly string[],
  packages: ReadonlyMap<string, string> = new Map(),
): Matrix {
  const runs = kernels.map((k) => {
    const file = join(dir, `${k}.log`);
    return parseConsole(k, existsSync(file) ? readFileSync(file, 'utf8') : '');
  });
  const rows = buildRows(runs);
  const found = problems(runs, rows);
  return { runs, markdown: renderMarkdown({ runs, rows, packages, problems: found }), problems: found };
}

function main(): number {
  const { values } = parseArgs({
    options: {
      results: { type: 'string' },
      kernels: { type: 'string', default: '5.10 6.1 6.12 host' },
      write: { type: 'string' },
      package: { type: 'string', multiple: true, default: [] },
    },
  });
  if (!values.results) {
    process.stderr.write('report.ts: --results DIR is required\n');
    return 2;
  }
  const packages = new Map<string, string>();
  for (const p of values.package) {
    const [k, ...name] = p.split('=');
    if (k) packages.set(k, name.join('='));
  }
  const m = loadMatrix(values.results, values.kernels.split(/\s+/).filter(Boolean), packages);
  process.stdout.write(m.markdown);
  if (values.write) writeFileSync(values.write, m.markdown);
  return m.problems.length === 0 ? 0 : 1;
}

if (import.meta.main) process.exitCode = main();
