// The pure cgroup placement check (src/node/cgroup.ts): path logic on fake /proc trees and mount
// tables. test/agent/ztunnel-cgroup.test.ts runs it on real processes in real cgroups.
import t from 'tap';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cgroup2MountOf, cgroupPlacement, cgroupV2Line, procCgroup } from '../../src/node/cgroup.ts';
import { readMounts } from '../../src/doctor/system.ts';

const MOUNTS = readMounts(
  [
    'sysfs /sys sysfs rw 0 0',
    'tmpfs /sys/fs/cgroup tmpfs rw 0 0',
    'cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nsdelegate 0 0',
    'cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0',
  ].join('\n'),
);
const ROOT = '/sys/fs/cgroup/unified';
const KUBEPODS = `${ROOT}/kubepods`;

t.test('inside, equal, below; a sibling sharing a prefix is outside', async (t) => {
  t.equal(cgroupPlacement(KUBEPODS, `${KUBEPODS}/besteffort/podx/ctr`), 'inside');
  t.equal(cgroupPlacement(KUBEPODS, KUBEPODS), 'inside', 'the attach cgroup itself');
  t.equal(cgroupPlacement(`${KUBEPODS}/`, `${KUBEPODS}/burstable/`), 'inside', 'trailing slashes');
  t.equal(cgroupPlacement(KUBEPODS, `${ROOT}/kubepods-besteffort/pod`), 'outside', 'common prefix, not a parent');
  t.equal(cgroupPlacement(KUBEPODS, `${ROOT}/system.slice/ztunnel.service`), 'outside');
  t.equal(cgroupPlacement(KUBEPODS, ROOT), 'outside', 'the parent is not inside');
  t.equal(cgroupPlacement(KUBEPODS, `${KUBEPODS}/../system.slice`), 'outside', '.. is resolved');
  t.equal(cgroupPlacement(ROOT, `${ROOT}/anything`), 'inside', 'attached at the root holds everything');
  t.equal(cgroupPlacement(KUBEPODS, undefined), 'unknown');
});

t.test('the v2 line of /proc/<pid>/cgroup', async (t) => {
  t.equal(cgroupV2Line('12:cpu,cpuacct:/x\n0::/kubepods/pod1/c\n'), '/kubepods/pod1/c');
  t.equal(cgroupV2Line('0::/\n'), '/');
  t.equal(cgroupV2Line('12:cpu:/x\n'), undefined, 'cgroup v1 only');
});

t.test('the cgroup2 mount holding the attach directory', async (t) => {
  t.equal(cgroup2MountOf(KUBEPODS, MOUNTS), ROOT);
  t.equal(cgroup2MountOf(undefined, MOUNTS), ROOT);
  t.equal(cgroup2MountOf(KUBEPODS, readMounts('cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n')), undefined);
  const two = readMounts(`cgroup2 ${ROOT} cgroup2 rw 0 0\ncgroup2 /run/ctr/cg cgroup2 rw 0 0\n`);
  t.equal(cgroup2MountOf('/run/ctr/cg/kubepods', two), '/run/ctr/cg', 'the mount that holds it, not the first');
});

t.test("a process's placement from a fake /proc: missing entry and no v2 line are unknown, not errors", async (t) => {
  const proc = await mkdtemp(join(tmpdir(), 'ambpf-cg-'));
  t.teardown(() => rm(proc, { recursive: true, force: true }));
  const write = async (pid: number, text: string): Promise<void> => {
    await mkdir(join(proc, String(pid)));
    await writeFile(join(proc, String(pid), 'cgroup'), text);
  };
  await write(10, '0::/kubepods/besteffort/podzt/ctr\n');
  await write(11, '0::/system.slice/ztunnel.service\n');
  await write(12, '0::/kubepods-besteffort/pod\n');
  await write(13, '4:memory:/x\n');
  await write(14, '0::/../../system.slice/ztunnel.service\n');
  const o = { procRoot: proc, mounts: MOUNTS };
  t.same(procCgroup(10, KUBEPODS, o), { dir: `${KUBEPODS}/besteffort/podzt/ctr`, placement: 'inside' });
  t.same(procCgroup(11, KUBEPODS, o), { dir: `${ROOT}/system.slice/ztunnel.service`, placement: 'outside' });
  t.equal(procCgroup(12, KUBEPODS, o).placement, 'outside');
  t.same(procCgroup(13, KUBEPODS, o), { dir: undefined, placement: 'unknown' });
  t.equal(procCgroup(14, KUBEPODS, o).placement, 'outside', 'outside our cgroup namespace');
  t.same(procCgroup(99, KUBEPODS, o), { dir: undefined, placement: 'unknown' }, 'exited: no /proc entry');
  t.same(procCgroup(10, KUBEPODS, { procRoot: proc, mounts: [] }), { dir: undefined, placement: 'unknown' });
});
