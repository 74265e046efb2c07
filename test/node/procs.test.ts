import t, { type Test } from 'tap';
import { mkdir, mkdtemp, rm, writeFile, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { findPodProcesses, podCgroupMarkers } from '../../src/node/procs.ts';

// A fake /proc tree: this tests the matching logic only; the loader tests find real processes on
// the testbed.
async function fakeProc(t: Test, procs: Record<number, string>): Promise<string> {
  const root = await mkdtemp(join(tmpdir(), 'ambpf-proc-'));
  t.teardown(() => rm(root, { recursive: true, force: true }));
  for (const [pid, cgroup] of Object.entries(procs)) {
    await mkdir(join(root, pid, 'ns'), { recursive: true });
    await writeFile(join(root, pid, 'cgroup'), cgroup);
    await symlink(`net:[40265${pid}]`, join(root, pid, 'ns', 'net'));
  }
  await mkdir(join(root, 'self'));
  return root;
}

t.test('finds pods under the cgroupfs and systemd drivers, whole components only', async (t) => {
  const uid = '1b2c3d4e-0000-4000-8000-00000000000a';
  const root = await fakeProc(t, {
    10: `0::/kubepods/besteffort/pod${uid}/ctr1\n`,
    11: `12:cpu:/x\n0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod${uid.replaceAll('-', '_')}.slice/cri-containerd-1.scope\n`,
    12: `0::/kubepods/besteffort/pod${uid}0/ctr\n`,
    13: `0::/user.slice\n`,
  });
  const found = await findPodProcesses([uid, 'other'], root);
  t.same(
    found.get(uid)?.map((p) => p.pid),
    [10, 11],
  );
  t.equal(found.get(uid)?.[0]?.netnsId, 'net:[4026510]');
  t.equal(found.get(uid)?.[0]?.cgroup, `/kubepods/besteffort/pod${uid}/ctr1`);
  t.notOk(found.has('other'));
  t.same(podCgroupMarkers('a-b'), ['poda-b', 'poda_b']);
});

t.test('oldest process first, not lowest pid (a process started after a pid wrap)', async (t) => {
  const uid = '1b2c3d4e-0000-4000-8000-00000000000b';
  const cg = `0::/kubepods/besteffort/pod${uid}/ctr\n`;
  const root = await fakeProc(t, { 300: cg, 31000: cg, 31001: cg });
  // starttime is field 22; the command may hold spaces and parentheses.
  const stat = (pid: number, started: number): string =>
    `${pid} (a) b) S ${Array.from({ length: 18 }, (_, i) => i + 4).join(' ')} ${started} 0 0\n`;
  await writeFile(join(root, '31000', 'stat'), stat(31000, 100));
  await writeFile(join(root, '31001', 'stat'), stat(31001, 200));
  await writeFile(join(root, '300', 'stat'), stat(300, 900));
  const found = await findPodProcesses([uid], root);
  t.same(
    found.get(uid)?.map((p) => [p.pid, p.started]),
    [
      [31000, 100],
      [31001, 200],
      [300, 900],
    ],
  );
});
