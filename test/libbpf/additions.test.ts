// libbpf-ts additions on the real kernel: BpfLink.update swaps a cgroup link's program in place
// (a real connect() tells which program runs), with BPF_F_REPLACE guarding against a stale swap;
// progFuncInfo recovers a long program name from BTF; ProgInfo carries func_info_rec_size and
// nr_map_ids; the boot clock agrees with /proc/uptime. Only a cgroup this test makes is attached to.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmdirSync } from 'node:fs';
import { join } from 'node:path';
import {
  ATTACH_TYPES,
  BpfLink,
  BpfMap,
  BpfObject,
  Btf,
  LibbpfError,
  RawProgram,
  MOV64_IMM,
  EXIT,
  attachedProgIds,
  bootEpochParts,
  bootTimeNs,
  clockGettime,
  ifIndex,
  ifName,
  progFuncInfo,
} from '../../src/libbpf/index.ts';
import { cgroup2Root, makeCgroup } from '../../src/testbed/cgroup.ts';
import { testPrefix } from '../helpers/prefix.ts';
import { fixtureObject } from './fixture.ts';
import { ensureObjects } from '../../src/bpf/build.ts';
import { ensurePinnedLink } from '../../src/bpf/datapath-links.ts';
import { mkdirSync, rmSync, statSync } from 'node:fs';

const basicPath = await fixtureObject('basic');

/** UDP connect() from a process inside `cgroup`: 'ok', or the errno name python saw. */
function connectFrom(cgroup: string): string {
  const py =
    'import socket,errno\ntry:\n  s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.connect(("127.0.0.1",9)); print("ok")\n' +
    'except OSError as e:\n  print(errno.errorcode[e.errno])';
  const r = spawnSync('sh', ['-c', `echo $$ > ${join(cgroup, 'cgroup.procs')} && exec python3 -c '${py}'`], {
    encoding: 'utf8',
    timeout: 30_000,
  });
  return r.stdout.trim() || `failed: ${r.stderr}`;
}

t.test('BpfLink.update swaps the program of a cgroup link in place', async (t) => {
  const cgroup = join(cgroup2Root(), `${testPrefix()}-lu`);
  makeCgroup(cgroup);
  using obj = BpfObject.open(basicPath);
  obj.load();
  const allow = obj.program('rewrite_connect4'); // no rule set: returns 1 for every connect
  using deny = RawProgram.load('cgroup_sock_addr', [MOV64_IMM(0, 0), EXIT()]); // 0: connect() fails with EPERM
  const link = allow.attachCgroup(cgroup);
  t.teardown(() => {
    link.close(); // unpinned: closing detaches
    for (let i = 0; i < 50 && existsSync(cgroup); i++) {
      try {
        rmdirSync(cgroup);
      } catch {
        spawnSync('sleep', ['0.1']);
      }
    }
  });
  const allowId = allow.id;
  t.equal(link.info().progId, allowId);
  t.equal(connectFrom(cgroup), 'ok', 'the attached program lets connect() through');

  link.update(deny);
  t.not(link.info().progId, allowId, 'the link now runs the other program');
  t.equal(connectFrom(cgroup), 'EPERM', 'the swapped-in program refuses connect()');

  const stale = t.throws(() => link.update(allow, allow)) as LibbpfError;
  t.equal(stale.code, 'EPERM', 'BPF_F_REPLACE with the wrong old program is refused (EPERM)');
  t.match(stale.message, /bpf_link_update failed .*link .*EPERM.*no longer runs the expected program/);
  t.equal(connectFrom(cgroup), 'EPERM', 'a refused update changes nothing');

  link.update(allow, deny);
  t.equal(link.info().progId, allowId, 'guarded update with the right old program succeeds');
  t.equal(connectFrom(cgroup), 'ok');
});

t.test('progFuncInfo gives the BTF FUNC of a program; ProgInfo carries rec size and map count', async (t) => {
  using obj = BpfObject.open(basicPath);
  obj.load();
  const prog = obj.program('rewrite_connect4');
  const info = prog.info();
  t.equal(info.funcInfoRecSize, 8, 'sizeof(struct bpf_func_info)');
  t.ok(info.nrFuncInfo >= 1);
  t.equal(info.nrMapIds, info.mapIds.length, 'nr_map_ids agrees with the ids read');
  t.ok(info.nrMapIds >= 2, 'the program uses rule and counters');

  const all = progFuncInfo(prog.fd);
  t.equal(all.length, info.nrFuncInfo);
  t.equal(all[0]?.insnOff, 0, 'the main function starts at instruction 0');
  const first = progFuncInfo(prog.fd, 1);
  t.same(first, all.slice(0, 1), 'a limit reads only the first records');
  using btf = Btf.loadFromKernelById(info.btfId);
  const fn = btf.type(first[0]!.typeId);
  t.equal(fn.kind, 'func');
  t.equal(fn.name, 'rewrite_connect4', 'the full name the kernel cut to 15 bytes');

  using bare = RawProgram.load('cgroup_sock_addr', [MOV64_IMM(0, 1), EXIT()]);
  t.same(progFuncInfo(bare.fd), [], 'a program loaded without BTF has no func_info');
});

t.test('the boot clock is CLOCK_BOOTTIME: it agrees with /proc/uptime and dates program loads', async (t) => {
  const uptime = (): number => Number(readFileSync('/proc/uptime', 'utf8').split(' ')[0]);
  const before = uptime();
  const boot = Number(bootTimeNs()) / 1e9;
  const after = uptime();
  t.ok(boot >= before - 0.02 && boot <= after + 0.02, `boot clock ${boot}s within /proc/uptime ${before}..${after}s`);

  using obj = BpfObject.open(basicPath);
  obj.load();
  const loaded = obj.program('rewrite_connect4').info().loadTime;
  t.ok(loaded > 0n && loaded <= bootTimeNs(), 'load_time is on the same clock, and in the past');

  const p = bootEpochParts();
  const bootedAt = p.realSec - p.bootSec;
  const wall = BigInt(Math.floor(Date.now() / 1000));
  t.ok(bootedAt > 0n && bootedAt <= wall, 'realtime - boottime is a moment in the past (the boot)');
  t.ok(clockGettime('realtime').sec >= wall - 1n, 'realtime agrees with Date.now()');
});

t.test('BpfLink.create on a sockhash (sockmap link) and attachedProgIds list what is attached', async (t) => {
  using map = BpfMap.create('sockhash', 4, 4, 1);
  using pass = RawProgram.load('sk_msg', [MOV64_IMM(0, 1), EXIT()]);
  t.same(attachedProgIds(map.fd, ATTACH_TYPES.sk_msg_verdict), [], 'nothing attached yet');
  const link = BpfLink.create(pass.fd, map.fd, 'sk_msg_verdict');
  const info = link.info();
  t.equal(info.typeName, 'sockmap');
  t.equal(info.attachTypeName, 'sk_msg_verdict');
  t.same(
    attachedProgIds(map.fd, ATTACH_TYPES.sk_msg_verdict),
    [info.progId],
    'bpf_prog_query on the map lists the program',
  );
  link.close();
  t.same(attachedProgIds(map.fd, ATTACH_TYPES.sk_msg_verdict), [], 'closing the unpinned link detached it');
  const bad = t.throws(() => BpfLink.create(pass.fd, map.fd, 'cgroup_inet4_connect')) as LibbpfError;
  t.equal(bad.fn, 'bpf_link_create');
  t.match(bad.message, /bpf_link_create failed for link cgroup_inet4_connect on fd \d+/);
});

t.test('ifName is the inverse of ifIndex', async (t) => {
  t.equal(ifName(ifIndex('lo')), 'lo');
  t.equal(ifName(0x7ffffff0), null, 'no such interface');
});

t.test('ensurePinnedLink swaps a new program version into the pinned link in place', async (t) => {
  const prefix = testPrefix();
  const cgroup = join(cgroup2Root(), `${prefix}-ep`);
  const pinDir = `/sys/fs/bpf/${prefix}`;
  makeCgroup(cgroup);
  mkdirSync(pinDir, { recursive: true });
  const pin = join(pinDir, 'links', 'connect4');
  using v1 = BpfObject.open(basicPath);
  v1.load();
  using v2 = BpfObject.open((await ensureObjects()).objects['ambpf_sock']!);
  v2.load();
  t.teardown(() => {
    rmSync(pinDir, { recursive: true, force: true }); // unpinning the last reference detaches
    for (let i = 0; i < 50 && existsSync(cgroup); i++) {
      try {
        rmdirSync(cgroup);
      } catch {
        spawnSync('sleep', ['0.1']);
      }
    }
  });
  const ino = BigInt(statSync(cgroup).ino);
  const ensure = (prog: ReturnType<BpfObject['program']>): string =>
    ensurePinnedLink({
      pin,
      prog,
      attach: () => prog.attachCgroup(cgroup),
      sameTarget: (info) => info.cgroupId === ino,
    });
  const a = v1.program('rewrite_connect4');
  const b = v2.program('ambpf_connect4');
  t.equal(ensure(a), 'created');
  const before = BpfLink.openPinned(pin);
  const linkId = before.info().id;
  before.close();
  t.equal(ensure(a), 'adopted', 'same program: kept as is');
  t.equal(ensure(b), 'replaced', 'another program version');
  using after = BpfLink.openPinned(pin);
  t.equal(after.info().id, linkId, 'the same link: the program was swapped inside it (bpf_link_update)');
  t.equal(after.info().progId, b.id, 'now running the new version');
  t.equal(ensure(b), 'adopted');
});
