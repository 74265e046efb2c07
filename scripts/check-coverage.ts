// tap 18+ fails below 100% coverage or not at all; it has no thresholds. This holds the suite to
// honest floors (a little under what it measures today) from the json-summary tap writes.
import { readFileSync } from 'node:fs';

const FLOORS = { lines: 85, statements: 85, functions: 70, branches: 65 } as const;

type Metric = keyof typeof FLOORS;
const summary = JSON.parse(readFileSync('.tap/report/coverage-summary.json', 'utf8')) as {
  total: Record<Metric, { pct: number }>;
};
const failed = (Object.keys(FLOORS) as Metric[]).filter((m) => summary.total[m].pct < FLOORS[m]);
for (const m of Object.keys(FLOORS) as Metric[]) {
  process.stdout.write(
    `coverage ${m.padEnd(10)} ${summary.total[m].pct.toFixed(1).padStart(5)}%  (floor ${FLOORS[m]}%)\n`,
  );
}
if (failed.length > 0) {
  process.stderr.write(`coverage below the floor for ${failed.join(', ')}\n`);
  process.exit(1);
}
