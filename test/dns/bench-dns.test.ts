// `ambpf bench --workloads dns` (src/bench/dns.ts): dnsperf's summary is read right, and one quick
// inpod run measures every path with answers. The redirected paths ask an address where nothing
// listens, so a path whose capture failed loses its queries and fails here. Never speeds.
import t from 'tap';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { removeByPrefix, effectivePrefix } from '../../src/testbed/index.ts';
import { parseDnsperf } from '../../src/bench/dns.ts';
import type { BenchResults, PathName } from '../../src/bench/types.ts';
import { testPrefix } from '../helpers/prefix.ts';

const run = promisify(execFile);
const AMBPF = fileURLToPath(new URL('../../bin/ambpf', import.meta.url));

const DNSPERF_OUT = `[Status] Testing complete (time limit)

Statistics:

  Queries sent:         41803
  Queries completed:    41790 (99.97%)
  Queries lost:         13 (0.03%)

  Response codes:       NOERROR 41790 (100.00%)
  Average packet size:  request 28, response 44
  Run time (s):         1.001934
  Queries per second:   41709.335445

  Average Latency (s):  0.001251 (min 0.000031, max 0.021118)
  Latency StdDev (s):   0.000612
`;

t.test("dnsperf's summary", async (t) => {
  t.same(parseDnsperf(DNSPERF_OUT), {
    sent: 41803,
    completed: 41790,
    noerror: 41790,
    lost: 13,
    qps: 41709.335445,
    avgUs: 1251,
  });
  t.equal(parseDnsperf('[Status] Sending queries'), undefined, 'no summary: undefined, not zeros');
});

t.test('a quick inpod DNS run: every path answered', { timeout: 90_000 }, async (t) => {
  const prefix = testPrefix();
  const out = mkdtempSync(join(tmpdir(), 'ambpf-bench-dns-'));
  t.teardown(async () => {
    await removeByPrefix(effectivePrefix(prefix));
    rmSync(out, { recursive: true, force: true });
  });
  const paths: PathName[] = ['direct', 'iptables', 'ebpf'];
  const argv = [
    'bench',
    '--quick',
    '--topology',
    'inpod',
    '--paths',
    paths.join(','),
    '--workloads',
    'dns',
    '--no-e2e',
    '--no-control-plane',
    '--out',
    out,
    '--prefix',
    prefix,
  ];
  await run(AMBPF, argv, { timeout: 80_000, env: { ...process.env, AMBPF_LOG_LEVEL: 'warn' }, maxBuffer: 16 << 20 });
  t.ok(existsSync(join(out, 'bench-dns.svg')), 'the DNS chart');
  const res = JSON.parse(readFileSync(join(out, 'results.json'), 'utf8')) as BenchResults;
  for (const path of paths) {
    const cells = res.samples.filter((s) => s.workload === 'dns' && s.path === path);
    t.equal(cells.length, 1, `${path}: one cell`);
    const qps = cells[0]?.metrics['qps'] ?? Number.NaN;
    t.ok(Number.isFinite(qps) && qps > 0, `${path}: ${qps} queries/s`);
    // A loaded machine may time out a handful of queries; a missed capture loses every one.
    t.ok((cells[0]?.errors ?? Infinity) < 0.01 * qps, `${path}: lost queries (${cells[0]?.errors}) under 1%`);
  }
  t.match(
    readFileSync(join(out, 'results.md'), 'utf8'),
    /\| sink \| same-node \| dns \| qps/,
    'results.md has the row',
  );
});
