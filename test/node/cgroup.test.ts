// The cgroup placement check (src/node/cgroup.ts) on fake /proc trees, mount tables and cgroup
// directories. test/agent/ztunnel-cgroup.test.ts runs it on real processes in real cgroups.
import t, { type Test } from 'tap';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  cgroup2MountOf,
  cgroupDirOf,
  cgroupPlacement,
  cgroupV2Line,
  findPidCgroup,
  procCgroup,
} from '../../src/node/cgroup.ts';
import { readMountInfo } from '../../src/doctor/system.ts';

const ROOT = '/sys/fs/cgroup/unified';
const KUBEPODS = `${ROOT}/kubepods`;
const MOUNTS = readMountInfo(
  [
    '22 1 0:20 / /sys rw,nosuid shared:7 - sysfs sysfs rw',
    '31 22 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755',
    `41 31 0:38 / ${ROOT} rw,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate`,
    '32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu',
  ].join('\n'),
);

const tmp = (t: Test): string => {
  const dir = mkdtempSync(join(tmpdir(), 'ambpf-cg-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
};

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

t.test('the cgroup2 mount holding the attach directory, and paths under it', async (t) => {
  t.equal(cgroup2MountOf(KUBEPODS, MOUNTS)?.target, ROOT);
  t.equal(cgroup2MountOf(undefined, MOUNTS)?.target, ROOT);
  t.equal(cgroup2MountOf(KUBEPODS, readMountInfo('1 0 0:1 / /c rw - cgroup cgroup rw\n')), undefined);
  const two = readMountInfo(
    `1 0 0:1 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n2 0 0:1 /../.. /host/sys/fs/cgroup rw - cgroup2 cgroup2 rw\n`,
  );
  t.equal(cgroup2MountOf('/host/sys/fs/cgroup/kubepods', two)?.target, '/host/sys/fs/cgroup', 'not the first');
  t.equal(cgroup2MountOf('/host/sys/fs/cgroup/kubepods', two)?.root, '/../..');

  t.equal(cgroupDirOf('/kubepods/pod/c', { target: ROOT, root: '/' }), `${KUBEPODS}/pod/c`);
  t.equal(cgroupDirOf('/', { target: ROOT, root: '/' }), ROOT);
  t.equal(cgroupDirOf('/ctr/sub', { target: '/cg', root: '/ctr' }), '/cg/sub', 'a mount of a subtree');
  t.equal(cgroupDirOf('/other', { target: '/cg', root: '/ctr' }), undefined, 'not shown by that mount');
  t.equal(cgroupDirOf('/../../kubepods/pod', { target: ROOT, root: '/' }), undefined, 'above our namespace');
  t.equal(cgroupDirOf('/kubepods/pod', { target: ROOT, root: '/../..' }), undefined, 'a mount above it');
});

t.test("a process's placement from a fake /proc: missing entry and no v2 line are unknown, not errors", async (t) => {
  const proc = tmp(t);
  const write = (pid: number, text: string): void => {
    mkdirSync(join(proc, String(pid)));
    writeFileSync(join(proc, String(pid), 'cgroup'), text);
  };
  write(10, '0::/kubepods/besteffort/podzt/ctr\n');
  write(11, '0::/system.slice/ztunnel.service\n');
  write(12, '0::/kubepods-besteffort/pod\n');
  write(13, '4:memory:/x\n');
  const o = { procRoot: proc, mounts: MOUNTS };
  t.same(procCgroup(10, KUBEPODS, o), { dir: `${KUBEPODS}/besteffort/podzt/ctr`, placement: 'inside' });
  t.same(procCgroup(11, KUBEPODS, o), { dir: `${ROOT}/system.slice/ztunnel.service`, placement: 'outside' });
  t.equal(procCgroup(12, KUBEPODS, o).placement, 'outside');
  t.same(procCgroup(13, KUBEPODS, o), { dir: undefined, placement: 'unknown' });
  t.same(procCgroup(99, KUBEPODS, o), { dir: undefined, placement: 'unknown' }, 'exited: no /proc entry');
  t.same(procCgroup(10, KUBEPODS, { procRoot: proc, mounts: [] }), { dir: undefined, placement: 'unknown' });
});

t.test('in its own cgroup namespace the loader asks cgroup.procs under the attach cgroup', async (t) => {
  const proc = tmp(t);
  const cg = tmp(t);
  // The node's tree mounted at cg, seen from a namespace two levels down (a container's cgroup).
  const mounts = readMountInfo(`7 1 0:9 /../.. ${cg} rw - cgroup2 cgroup2 rw\n`);
  const attach = join(cg, 'kubepods');
  for (const [dir, procs] of [
    ['kubepods/burstable/podamb/ctr', '5\n'],
    ['kubepods/besteffort/podzt/ctr', '20\n21\n'],
    ['kubepods-besteffort/pod', '22\n'],
    ['system.slice/ztunnel.service', '23\n'],
  ] as const) {
    mkdirSync(join(cg, dir), { recursive: true });
    writeFileSync(join(cg, dir, 'cgroup.procs'), procs);
  }
  for (const [pid, path] of [
    [21, '/../../../besteffort/podzt/ctr'],
    [22, '/../../../../kubepods-besteffort/pod'],
    [23, '/../../../../system.slice/ztunnel.service'],
  ] as const) {
    mkdirSync(join(proc, String(pid)));
    writeFileSync(join(proc, String(pid), 'cgroup'), `0::${path}\n`);
  }
  const o = { procRoot: proc, mounts };
  t.equal(findPidCgroup(attach, 2), undefined, 'whole lines: 2 is not 20 or 21');
  t.same(procCgroup(21, attach, o), { dir: join(attach, 'besteffort/podzt/ctr'), placement: 'inside' });
  t.same(procCgroup(22, attach, o), { dir: '/../../../../kubepods-besteffort/pod', placement: 'outside' });
  t.equal(procCgroup(23, attach, o).placement, 'outside');
});
