// The DaemonSet's mount-bpffs init container, run for real: its exact script (read from the
// manifest), with exactly its capabilities (setpriv bounding set), against a stand-in for the node (a
// process in a private mount namespace, playing the node's PID 1). The bpffs must appear in that
// namespace, a second run must leave it alone, and each capability the manifest adds must be needed.
import t from 'tap';
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { testPrefix } from '../helpers/prefix.ts';
import { waitUntil } from '../helpers/wait.ts';
import { containersOf, loadManifests, only, at } from './manifests.ts';

const run = promisify(execFile);

const ds = only(loadManifests(), 'DaemonSet');
const init = containersOf(ds).init.find((c) => c.name === 'mount-bpffs')!;
const command = init.command ?? [];
const caps = ((at(init, 'securityContext.capabilities.add') ?? []) as string[]).map((c) => c.toLowerCase());

const prefix = testPrefix();
const target = join(tmpdir(), `${prefix}-node`, 'bpf');
let node: ChildProcess | undefined;

/** bpf mounts at `target` in the mount namespace of `pid`. */
function bpfMountsAt(pid: number | 'self'): number {
  return readFileSync(`/proc/${pid}/mountinfo`, 'utf8')
    .split('\n')
    .filter((l) => l.split(' ')[4] === target && / - bpf /.test(l)).length;
}

/** Runs the init container's command with only `withCaps` (as the runtime would grant them). */
async function runInit(withCaps: readonly string[]): Promise<{ code: number; out: string }> {
  const bounding = ['-all', ...withCaps.map((c) => `+${c}`)].join(',');
  const env = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', AMBPF_HOST_PID: String(node!.pid), AMBPF_BPFFS_ROOT: target };
  try {
    const { stdout, stderr } = await run(
      'setpriv',
      [`--bounding-set=${bounding}`, `--inh-caps=${bounding}`, '--', ...command],
      { env, timeout: 20_000 },
    );
    return { code: 0, out: stdout + stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === 'number' ? e.code : -1, out: `${e.stdout ?? ''}${e.stderr ?? ''}` };
  }
}

t.before(async () => {
  mkdirSync(target, { recursive: true });
  // The node: a process alone in a private mount namespace; what is mounted there stays there.
  node = spawn('unshare', ['--mount', '--propagation', 'private', 'sleep', '120'], { stdio: 'ignore' });
  const pid = node.pid;
  const ownNamespace = async (): Promise<boolean> => {
    try {
      const own = (await run('readlink', ['/proc/self/ns/mnt'])).stdout.trim();
      const its = (await run('readlink', [`/proc/${pid}/ns/mnt`])).stdout.trim();
      return its !== '' && its !== own;
    } catch {
      return false; // not started yet
    }
  };
  if (!(await waitUntil(ownNamespace, 5000)))
    throw new Error('the stand-in node process never entered its own mount namespace');
});

t.teardown(async () => {
  if (node && node.exitCode === null) {
    const exited = new Promise((r) => node!.once('exit', r));
    node.kill('SIGKILL');
    await exited; // its mount namespace, and the bpffs mounted in it, go with it
  }
  rmSync(join(tmpdir(), `${prefix}-node`), { recursive: true, force: true });
});

t.test("the manifest runs a shell script that enters the node's mount namespace", async (t) => {
  t.same(command.slice(0, 2), ['/bin/sh', '-c']);
  t.match(command[2] ?? '', /nsenter --mount=/);
  t.same([...caps].sort(), ['sys_admin', 'sys_chroot', 'sys_ptrace']);
});

t.test('without each of its capabilities, the init container fails (each one is needed)', async (t) => {
  for (const missing of caps) {
    const r = await runInit(caps.filter((c) => c !== missing));
    t.not(r.code, 0, `without ${missing}: fails (${r.out.trim().split('\n').at(-1)})`);
    t.equal(bpfMountsAt(node!.pid!), 0, `without ${missing}: nothing mounted`);
  }
});

t.test("with exactly its capabilities it mounts the bpffs in the node's namespace, once", async (t) => {
  const first = await runInit(caps);
  t.equal(first.code, 0, `first run succeeds: ${first.out.trim()}`);
  t.match(first.out, /mounting bpffs/);
  t.equal(bpfMountsAt(node!.pid!), 1, "a bpffs is mounted at the target in the node's mount namespace");
  t.equal(bpfMountsAt('self'), 0, "and not in ours (it is the node's mount, not the container's)");

  const second = await runInit(caps);
  t.equal(second.code, 0);
  t.match(second.out, /already mounted/, 'a second run sees it');
  t.equal(bpfMountsAt(node!.pid!), 1, 'and does not stack another one');
});
