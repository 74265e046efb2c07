// libbpf-ts on the real kernel: objects, programs, maps (checked against bpftool), pins, errors.
import t from 'tap';
import { mkdirSync, rmSync, existsSync } from 'node:fs';
import {
  BpfObject,
  BpfMap,
  BpfObjectFileError,
  LibbpfError,
  MapFullError,
  UnknownNameError,
  ClosedHandleError,
  BPF_NOEXIST,
  listIds,
  fdinfo,
} from '../../src/libbpf/index.ts';
import { testPrefix } from '../helpers/prefix.ts';
import { fixtureObject, bpftoolDump, u32, u64, readU64, hexOf } from './fixture.ts';

const prefix = testPrefix();
const pinDir = `/sys/fs/bpf/${prefix}`;
mkdirSync(pinDir, { recursive: true });
t.teardown(() => rmSync(pinDir, { recursive: true, force: true }));

const basicPath = await fixtureObject('basic');

t.test('open lists programs and maps; load gives fds, ids and info', async (t) => {
  using obj = BpfObject.open(basicPath);
  t.equal(obj.name, 'basic');
  t.same(obj.programs.map((p) => p.name).sort(), [
    'count_packets',
    'rewrite_connect4',
    'sklookup_pass',
    'skmsg_pass',
    'sockops_noop',
  ]);
  const conn = obj.program('rewrite_connect4');
  t.equal(conn.section, 'cgroup/connect4');
  t.equal(conn.typeName, 'cgroup_sock_addr');
  const kv = obj.map('kv');
  t.equal(kv.typeName, 'hash');
  t.equal(kv.keySize, 4);
  t.equal(kv.valueSize, 8);
  t.equal(kv.maxEntries, 4);
  obj.load();
  const info = conn.info();
  t.equal(info.name, 'rewrite_connect', 'the kernel keeps 15 bytes of the name');
  t.match(info.tag, /^[0-9a-f]{16}$/);
  t.ok(info.mapIds.includes(obj.map('rule').id), 'program info lists the maps it uses');
  t.ok(listIds('prog').includes(info.id), 'the program id is in the kernel list');
  t.equal(fdinfo(conn.fd)['prog_tag'], info.tag, 'tag agrees with fdinfo');
  const minfo = kv.info();
  t.equal(minfo.name, 'kv');
  t.equal(minfo.typeName, 'hash');
  t.ok(minfo.btfId > 0 && minfo.btfKeyTypeId > 0 && minfo.btfValueTypeId > 0, 'map carries BTF ids');
});

t.test('map CRUD agrees with bpftool on the same pinned map; a full map is MapFullError', async (t) => {
  using obj = BpfObject.open(basicPath);
  obj.load();
  const kv = obj.map('kv');
  const pin = `${pinDir}/kv`;
  kv.pin(pin);
  t.teardown(() => rmSync(pin, { force: true }));
  t.equal(kv.lookup(u32(1)), undefined, 'absent key is undefined');
  kv.update(u32(1), u64(100));
  kv.update(u32(2), u64(200));
  kv.update(u32(3), u64(300));
  kv.update(u32(2), u64(222));
  t.equal(kv.delete(u32(3)), true);
  t.equal(kv.delete(u32(3)), false, 'deleting an absent key says so');
  t.equal(readU64(kv.lookup(u32(2))!), 222n);
  const ours = [...kv.entries()].map(([k, v]) => [hexOf(k), hexOf(v)] as [string, string]).sort();
  t.same(ours, bpftoolDump(pin), 'entries() == bpftool map dump');
  t.same(ours, [
    [hexOf(u32(1)), hexOf(u64(100))],
    [hexOf(u32(2)), hexOf(u64(222))],
  ]);
  t.throws(() => kv.update(u32(1), u64(1), BPF_NOEXIST), LibbpfError, 'NOEXIST on an existing key fails');
  kv.update(u32(3), u64(3));
  kv.update(u32(4), u64(4));
  const err = t.throws(() => kv.update(u32(5), u64(5))) as unknown;
  t.type(err, MapFullError);
  t.match((err as MapFullError).message, /map kv is full \(max_entries 4\).*E2BIG/);
  t.equal(bpftoolDump(pin).length, 4);
  t.throws(() => kv.lookup(new Uint8Array(3)), /map kv: the key is 3 bytes, the map wants 4/);
});

t.test('standalone maps: create, pin, open pinned, by id, per-CPU values, unpin', async (t) => {
  const pin = `${pinDir}/standalone`;
  t.teardown(() => rmSync(pin, { force: true }));
  using m = BpfMap.create('percpu_array', 4, 8, 2, { name: `${prefix}_pc` });
  t.equal(m.name, `${prefix}_pc`);
  t.equal(m.isPerCpu, true);
  const slots = m.lookupPerCpu(u32(0))!;
  t.equal(slots.length, m.valueBufferSize / 8, 'one slot per possible CPU');
  const all = new Uint8Array(m.valueBufferSize);
  all.set(u64(7), 0);
  m.update(u32(1), all);
  t.equal(readU64(m.lookupPerCpu(u32(1))![0]!), 7n);
  m.pin(pin);
  using again = BpfMap.openPinned(pin);
  t.equal(again.id, m.id, 'the pin resolves to the same map');
  t.equal(again.typeName, 'percpu_array');
  using byId = BpfMap.fromId(m.id);
  t.equal(byId.maxEntries, 2);
  t.equal([...byId.keys()].length, 2, 'array keys are all indexes');
  again.unpin();
  t.notOk(existsSync(pin), 'unpin removed the pin');
});

t.test('maps pinned by the object are reused on the next load (restart-safe)', async (t) => {
  const dir = `${pinDir}/reuse`;
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  let firstId: number;
  {
    using obj = BpfObject.open(basicPath);
    obj.setPinDir(dir);
    obj.map('kv').setMaxEntries(8);
    obj.load();
    obj.map('kv').update(u32(9), u64(99));
    firstId = obj.map('kv').id;
    t.equal(obj.map('kv').maxEntries, 8);
  }
  t.ok(existsSync(`${dir}/kv`), 'pinned at dir/kv');
  using obj2 = BpfObject.open(basicPath);
  obj2.map('kv').setMaxEntries(8);
  t.equal(obj2.map('kv').reusePinnedMap(`${dir}/kv`), true);
  t.equal(obj2.map('counters').reusePinnedMap(`${dir}/nothing-here`), false, 'no pin => false');
  obj2.load();
  t.equal(obj2.map('kv').id, firstId, 'same kernel map');
  t.equal(readU64(obj2.map('kv').lookup(u32(9))!), 99n, 'its contents survived');
  t.throws(() => obj2.map('kv').setMaxEntries(2), /before load/);
});

t.test('BPF_PROG_TEST_RUN counts a crafted packet in per-CPU and shared counters', async (t) => {
  using obj = BpfObject.open(basicPath);
  obj.load();
  const pkt = new Uint8Array(64);
  pkt[12] = 0x08; // ethertype IPv4
  // Three single runs, not repeat: 3 (see BpfProgram.testRun: a repeat loop can end early with EINTR).
  const runs = [1, 2, 3].map(() => obj.program('count_packets').testRun({ data: pkt }));
  const r = runs[2]!;
  t.equal(r.retval, 0, 'TC_ACT_OK');
  t.equal(r.dataOut.length, 64);
  t.equal(readU64(obj.map('counters').lookup(u32(1))!), 3n);
  t.equal(readU64(obj.map('counters').lookup(u32(2))!), 3n, 'seen as IPv4');
  const per = obj.map('percpu').lookupPerCpu(u32(0))!;
  t.equal(
    per.reduce((s, v) => s + readU64(v), 0n),
    3n,
  );
});

t.test('autoload off skips a program the verifier would reject', async (t) => {
  using obj = BpfObject.open(await fixtureObject('rejected'));
  obj.program('unchecked_deref').setAutoload(false);
  obj.load();
  t.ok(obj.program('fine').fd > 0);
  t.throws(() => obj.program('unchecked_deref').fd, /not loaded/);
});

t.test('a verifier rejection names the program and carries the reason', async (t) => {
  using obj = BpfObject.open(await fixtureObject('rejected'));
  const err = t.throws(() => obj.load()) as unknown;
  t.type(err, LibbpfError);
  const e = err as LibbpfError;
  t.equal(e.program, 'unchecked_deref');
  t.equal(e.code, 'EACCES');
  t.match(e.message, /invalid mem access 'map_value_or_null'/, 'the reason is in the message');
  t.ok(e.verifierLog && e.verifierLog.includes('bpf_map_lookup_elem'), 'the whole log is attached');
  t.ok(e.message.split('\n').length <= 25, 'the message carries only the tail');
});

t.test('clear errors: missing object file, missing pin, unknown names, use after close', async (t) => {
  t.throws(() => BpfObject.open('/nonexistent/x.bpf.o'), BpfObjectFileError);
  t.throws(() => BpfObject.open('/nonexistent/x.bpf.o'), /does not exist.*ambpf build/);
  const e = t.throws(() => BpfMap.openPinned(`${pinDir}/missing`)) as LibbpfError;
  t.equal(e.code, 'ENOENT');
  t.match(e.message, new RegExp(`Nothing is pinned at ${pinDir}/missing`));
  const obj = BpfObject.open(basicPath);
  const unknown = t.throws(() => obj.map('nope')) as unknown;
  t.type(unknown, UnknownNameError);
  t.match((unknown as Error).message, /no map named 'nope'.*kv.*counters|no map named 'nope'.*counters.*kv/);
  t.throws(() => obj.program('nope'), /no program named 'nope'; its programs are: .*rewrite_connect4/);
  const kv = obj.map('kv');
  obj.close();
  obj.close();
  t.pass('double close is safe');
  t.throws(() => obj.programs, ClosedHandleError);
  t.throws(() => kv.lookup(u32(1)), ClosedHandleError, 'a map dies with its object');
});
