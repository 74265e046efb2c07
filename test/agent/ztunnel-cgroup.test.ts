// A ztunnel running outside the cgroup ambpf attaches to is reported, one inside is not: a real ZDS
// handoff (src/agent/handoff.ts) and real ZDS clients, each started in a real cgroup this test makes
// under its own per-run cgroup (never the machine's root). What the loader's log, the report file,
// `ambpf status`, `ambpf doctor` and /metrics then say.
import t from 'tap';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ZdsHandoff } from '../../src/agent/handoff.ts';
import {
  ZtunnelCgroupWatch,
  readZtunnelCgroupReport,
  ztunnelCgroupFile,
  type ZtunnelCgroupCheck,
} from '../../src/agent/ztunnel-cgroup.ts';
import { renderZtunnelCgroup } from '../../src/status/status.ts';
import { ztunnelCgroupCheck } from '../../src/doctor/node.ts';
import { createMetricsRegistry } from '../../src/metrics/registry.ts';
import type { ReconcileStats } from '../../src/reconcile/reconciler.ts';
import { cgroup2Root, killSubtree, makeCgroup, removeTree } from '../../src/testbed/cgroup.ts';
import { captureLog, ERROR } from '../zds/helpers.ts';
import { testPrefix } from '../helpers/prefix.ts';
import { eventually } from '../helpers/wait.ts';

const PEER = join(import.meta.dirname, 'fixtures', 'zds-peer.ts');
const CHECK = join(import.meta.dirname, 'fixtures', 'check-cgroup.ts');

const run = join(cgroup2Root(), `${testPrefix()}-zc`);
const attach = join(run, 'kubepods');
const inside = join(attach, 'besteffort', 'podzt', 'ztunnel');
// A sibling whose name starts with the attach cgroup's: outside all the same.
const outside = join(run, 'kubepods-system', 'ztunnel');
const dir = mkdtempSync(join(tmpdir(), 'ambpf-zc-'));
const stateFile = join(dir, 'state.json');
const socketPath = join(dir, 'ztunnel.sock');
const children: ChildProcess[] = [];

t.teardown(async () => {
  for (const c of children) c.kill('SIGKILL');
  await killSubtree(run);
  removeTree(run);
  rmSync(dir, { recursive: true, force: true });
});

/** The shell moves itself into `cgroup`, then execs the command: the process is there from its start. */
const IN_CGROUP = 'cg=$1; shift; echo $$ > "$cg/cgroup.procs" && exec "$@"';

/** A ZDS client whose process is in `cgroup` before it connects. */
function startPeer(cgroup: string): ChildProcess {
  makeCgroup(cgroup);
  const child = spawn('sh', ['-c', IN_CGROUP, 'sh', cgroup, process.execPath, PEER, socketPath], {
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  children.push(child);
  return child;
}

const stop = async (child: ChildProcess): Promise<void> => {
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGKILL');
  await exited;
};

const captured = captureLog();
const handoff = await ZdsHandoff.start({
  socketPath,
  log: captured.log,
  onChange: () => undefined,
  cgroup: { attach, file: ztunnelCgroupFile(stateFile) },
});
t.teardown(() => handoff.close());
handoff.sync([]);
const outsideLines = (): number => captured.find(/outside .*Run ztunnel as a pod under/, ERROR).length;

const checkOf = async (pid: number | undefined): Promise<ZtunnelCgroupCheck> =>
  (await eventually(() => handoff.ztunnelCgroups().find((c) => c.pid === pid), 15_000, `ztunnel pid ${pid} checked`))!;

const metrics = createMetricsRegistry({
  maps: () => undefined,
  reconcile: () => ({ passes: 0, errors: 0, mapFull: 0, mapFullByMap: {}, lastDurationMs: 0 }) as ReconcileStats,
  ztunnelCgroups: () => handoff.ztunnelCgroups(),
});
const gauge = async (placement: string): Promise<number | undefined> => {
  const m = await metrics.getSingleMetric('ambpf_ztunnel_processes')?.get();
  return m?.values.find((v) => v.labels['cgroup'] === placement)?.value;
};

t.test('a ztunnel outside the attach cgroup is reported everywhere, once', async (t) => {
  const child = startPeer(outside);
  const c = await checkOf(child.pid);
  t.equal(c.placement, 'outside');
  t.equal(c.cgroup, outside);
  t.equal(outsideLines(), 1, 'one error line with the fix');
  t.match(captured.find(/outside/, ERROR)[0]?.msg, `Run ztunnel as a pod under ${attach}`);

  const report = readZtunnelCgroupReport(stateFile);
  t.same(report?.ztunnels, [c], 'the report beside the state file');
  t.equal(report?.attach, attach);
  const lines = renderZtunnelCgroup(report);
  t.match(lines.join('\n'), `PROBLEM: ztunnel (pid ${child.pid}) runs in cgroup ${outside}, outside ${attach}`);
  const doctor = ztunnelCgroupCheck(stateFile);
  t.equal(doctor.ok, false);
  t.match(doctor.detail, '`ambpf run --cgroup`');
  t.equal(await gauge('outside'), 1);
  t.equal(await gauge('inside'), 0);

  // The same process seen again (a reconnect) is not logged again.
  const watch = new ZtunnelCgroupWatch({ attach, log: captured.log });
  const before = outsideLines();
  watch.update([child.pid!]);
  watch.update([]);
  watch.update([child.pid!]);
  t.equal(outsideLines(), before + 1, 'once per pid');

  await stop(child);
  await eventually(() => handoff.ztunnelCgroups().length === 0, 15_000, 'the report to drop the gone ztunnel');
  t.same(readZtunnelCgroupReport(stateFile)?.ztunnels, []);
  t.equal(await gauge('outside'), 0);
});

t.test('a ztunnel inside the attach cgroup is not reported', async (t) => {
  const before = outsideLines();
  const child = startPeer(inside);
  const c = await checkOf(child.pid);
  t.equal(c.placement, 'inside');
  t.equal(c.cgroup, inside);
  t.equal(outsideLines(), before, 'no error line');
  t.equal(ztunnelCgroupCheck(stateFile).ok, true);
  t.notMatch(renderZtunnelCgroup(readZtunnelCgroupReport(stateFile)).join('\n'), 'PROBLEM');
  t.equal(await gauge('inside'), 1);
  t.equal(await gauge('outside'), 0);
  await stop(child);
});

t.test('from a container with its own cgroup namespace, the verdicts are the same', async (t) => {
  // ztunnel stand-ins that need not connect: the subject here is the checker.
  const out = startPeer(outside);
  const ins = startPeer(inside);
  await eventually(
    () => [out, ins].every((c) => readFileSync(`/proc/${c.pid}/cgroup`, 'utf8').includes(`-zc/`)),
    10_000,
    'both stand-ins in their cgroups',
  );
  // The loader's container: a cgroup of its own, its namespace rooted there; the node's tree mounted
  // as before, so the stand-ins' paths read /../.. from it.
  const loader = join(run, 'ambpf', 'ctr');
  makeCgroup(loader);
  const text = execFileSync(
    'sh',
    ['-c', IN_CGROUP, 'sh', loader, 'unshare', '--cgroup', process.execPath, CHECK, attach, `${out.pid}`, `${ins.pid}`],
    { encoding: 'utf8', timeout: 30_000 },
  );
  const [o, i] = JSON.parse(text) as Array<{ dir?: string; placement: string }>;
  t.equal(o?.placement, 'outside');
  t.match(o?.dir, /^\/\.\.\/.*kubepods-system\/ztunnel$/, 'its path as the namespace shows it');
  t.same(i, { dir: inside, placement: 'inside' }, 'found in cgroup.procs under the attach cgroup');
  await Promise.all([stop(out), stop(ins)]);
});
