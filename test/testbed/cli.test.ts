// `ambpf testbed` by hand: up leaves a running cluster and prints its handle, down removes it, and a
// testbed whose owner crashed is found and removed.
import t from 'tap';
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { testPrefix } from '../helpers/prefix.ts';
import { snapshot } from './leak-check.ts';
import { liveOwner, removeByPrefix, type TestbedInfo } from '../../src/testbed/index.ts';
import { inNetns } from '../../src/testbed/run.ts';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const AMBPF = join(ROOT, 'bin/ambpf');
const run = promisify(execFile);

async function ambpf(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await run(AMBPF, args, { timeout: 60_000, env: { ...process.env, AMBPF_LOG_LEVEL: 'warn' } });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (e) {
    const err = e as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof err.code === 'number' ? err.code : -1, stdout: err.stdout ?? '', stderr: err.stderr ?? '' };
  }
}

t.test('up prints the handle and leaves the cluster running; down removes it', async (t) => {
  const prefix = testPrefix();
  const full = `ambtb${prefix}`;
  t.teardown(() => removeByPrefix(full));
  const before = await snapshot(prefix);
  const listFile = join('/tmp', `${full}-pods.json`);
  t.teardown(() => run('rm', ['-f', listFile]));
  const up = await ambpf('testbed', 'up', '--topology', 'inpod', '--prefix', prefix, '--pods-list', listFile);
  t.equal(up.code, 0, up.stderr);
  const info = JSON.parse(up.stdout) as TestbedInfo;
  t.equal(info.prefix, full);
  t.equal(info.topology, 'inpod');
  t.equal(info.pods.length, 8);
  t.equal(liveOwner(full), undefined, 'a CLI testbed is detached: no owner');
  const mesh = info.pods.find((p) => p.name === 'app1-node1');
  t.ok(mesh && existsSync(`/proc/${mesh.pausePid}`), 'pause process outlived the CLI');
  const ss = await inNetns(mesh?.netnsPath ?? '', ['ss', '-Hltn']);
  t.match(ss.stdout, ':15001 ', 'inpod stand-in listens inside the mesh pod after the CLI exited');
  const list = JSON.parse(readFileSync(listFile, 'utf8')) as { kind: string; items: unknown[] };
  t.equal(list.kind, 'List');
  t.match((await ambpf('testbed', 'list')).stdout, full);
  const down = await ambpf('testbed', 'down', prefix);
  t.equal(down.code, 0, down.stderr);
  t.equal(down.stdout, `removed ${full}\n`);
  t.same(await snapshot(prefix), before, 'nothing left');
});

t.test('a testbed whose owner crashed is left behind, found, and removed (down --all in CI)', async (t) => {
  const prefix = testPrefix();
  const full = `ambtb${prefix}`;
  t.teardown(() => removeByPrefix(full));
  const before = await snapshot(prefix);
  const script = `import { startTestbed, defaultSpec } from ${JSON.stringify(join(ROOT, 'src/testbed/index.ts'))};
const tb = await startTestbed(defaultSpec(), { topology: 'node', prefix: ${JSON.stringify(prefix)}, standIn: false });
process.kill(process.pid, 'SIGKILL');`;
  await run(process.execPath, ['--input-type=module', '-e', script], { timeout: 60_000 }).catch(() => undefined);
  t.ok(existsSync(`/run/netns/${full}-node1`), 'the crashed run left its netns');
  t.equal(liveOwner(full), undefined, 'its owner is gone');
  t.match((await ambpf('testbed', 'list')).stdout, full);
  // --all takes every testbed without a live owner (this one, any other crashed run's, and clusters
  // made by hand with `testbed up`), never one whose test is still running. On a developer's machine
  // that could be a colleague's cluster, so --all runs where the machine is ours alone (CI).
  const how = process.env['CI'] ? '--all' : full;
  const down = await ambpf('testbed', 'down', how);
  t.equal(down.code, 0, down.stderr);
  t.match(down.stdout, `removed ${full}\n`, `down ${how} names what it removed`);
  t.same(await snapshot(prefix), before, 'nothing left');
});

t.test('usage errors are sentences with exit code 2', async (t) => {
  const none = await ambpf('testbed');
  t.equal(none.code, 2);
  t.match(none.stderr, 'ambpf testbed needs up, down or list');
  const bad = await ambpf('testbed', 'up', '--topology', 'mesh');
  t.equal(bad.code, 2);
  t.match(bad.stderr, '--topology must be node or inpod, not mesh');
  const noPrefix = await ambpf('testbed', 'down');
  t.equal(noPrefix.code, 2);
});
