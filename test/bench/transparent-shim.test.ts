// The sinks' preload library, on loopback: iperf3 keeps ONE listening socket across tests (without
// the library it closes and re-creates it per test, which would drop it from ambpf's listener map),
// and the extra listener appears in the same process.
import t from 'tap';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildTransparentShim } from '../../src/bench/transparent-shim.ts';
import { run } from '../../src/testbed/run.ts';
import { eventually } from '../helpers/wait.ts';

/** Inodes of the sockets listening on 127.0.0.1:port, by owning pid. */
async function listeners(port: number): Promise<Array<{ pid: number; inode: string }>> {
  const r = await run(['ss', '-Hltnpe', `sport = :${port}`]);
  return r.stdout
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => ({ pid: Number(/pid=(\d+)/.exec(l)?.[1]), inode: /ino:(\d+)/.exec(l)?.[1] ?? '' }));
}

async function waitListening(port: number): Promise<void> {
  await eventually(async () => (await listeners(port)).length > 0, 10_000, `a listener on port ${port}`);
}

t.test('iperf3 under the library keeps its listener across tests; the extra listener shares its process', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ambpf-shim-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const so = await buildTransparentShim(dir);
  const port = 20000 + Math.floor(Math.random() * 20000);
  const extra = port + 1;
  const server = spawn('iperf3', ['-s', '-B', '127.0.0.1', '-p', String(port)], {
    stdio: 'ignore',
    env: { ...process.env, LD_PRELOAD: so, AMBPF_BENCH_EXTRA_LISTEN: String(extra) },
  });
  t.teardown(() => {
    server.kill('SIGKILL');
  });
  await waitListening(port);
  const first = await listeners(port);
  t.equal(first.length, 1);
  t.equal(first[0]?.pid, server.pid, 'iperf3 itself listens');
  const ex = await listeners(extra);
  t.equal(ex[0]?.pid, server.pid, 'the extra listener lives in the same process');

  for (let i = 0; i < 2; i++) {
    const c = await run(
      ['iperf3', '-c', '127.0.0.1', '-p', String(port), '-n', '1M', '-J', '--connect-timeout', '3000'],
      { check: false, timeoutMs: 15_000 },
    );
    t.equal(c.code, 0, `test ${i + 1} ran`);
    await waitListening(port);
  }
  const after = await listeners(port);
  t.equal(after.length, 1);
  t.equal(after[0]?.inode, first[0]?.inode, 'the same listening socket serves every test');
});
