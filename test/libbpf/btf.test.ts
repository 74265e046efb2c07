// BTF through libbpf's btf API: the kernel's vmlinux BTF, an object's BTF, and the same BTF once
// loaded in the kernel (by id), walked as plain TS objects.
import t from 'tap';
import { Btf, BpfObject, ClosedHandleError } from '../../src/libbpf/index.ts';
import { fixtureObject } from './fixture.ts';

t.test('vmlinux: structs, bitfields, arrays, ints, enums, typedef resolution', async (t) => {
  using btf = Btf.loadVmlinux();
  t.ok(btf.typeCount > 1000);
  const id = btf.findByName('bpf_sock_addr', 'struct')!;
  const sa = btf.type(id);
  t.equal(sa.kind, 'struct');
  t.equal(btf.resolveSize(id), sa.size);
  const ip4 = sa.members!.find((m) => m.name === 'user_ip4')!;
  t.equal(ip4.bitOffset, 32);
  t.equal(btf.resolveSize(ip4.type), 4);
  const u32 = btf.skipModifiers(ip4.type);
  t.equal(u32.kind, 'int');
  t.equal(u32.int?.bits, 32);
  t.equal(u32.int?.encoding.signed, false);
  t.equal(btf.type(btf.resolveType(ip4.type)).kind, 'int', 'btf__resolve_type strips the typedef');
  const ip6 = btf.skipModifiers(sa.members!.find((m) => m.name === 'user_ip6')!.type);
  t.equal(ip6.kind, 'array');
  t.equal(ip6.array?.nelems, 4);
  const info = btf.type(btf.findByName('bpf_prog_info', 'struct')!);
  t.equal(info.kindFlag, true, 'a struct with bitfields');
  const gpl = info.members!.find((m) => m.name === 'gpl_compatible')!;
  t.equal(gpl.bitfieldSize, 1);
  const mapType = btf.type(btf.findByName('bpf_map_type', 'enum')!);
  t.equal(mapType.enumValues!.find((v) => v.name === 'BPF_MAP_TYPE_HASH')?.value, 1n);
  t.equal(btf.type(0).name, 'void');
  t.throws(() => btf.type(btf.typeCount + 10), /No BTF type id/);
  btf.close();
  t.throws(() => btf.typeCount, ClosedHandleError);
});

t.test("an object's BTF, and the same types from the kernel by the map's btf id", async (t) => {
  using obj = BpfObject.open(await fixtureObject('basic'));
  const local = Btf.fromObject(obj)!;
  const rid = local.findByName('rewrite_rule', 'struct')!;
  const rule = local.type(rid);
  t.same(
    rule.members!.map((m) => [m.name, m.bitOffset]),
    [
      ['from_ip', 0],
      ['from_port', 32],
      ['to_ip', 64],
      ['to_port', 96],
    ],
  );
  t.equal(local.resolveSize(rid), 16);
  obj.load();
  const { btfId, btfValueTypeId } = obj.map('rule').info();
  using kernel = Btf.loadFromKernelById(btfId);
  const v = kernel.type(btfValueTypeId);
  t.equal(v.name, 'rewrite_rule', "the map's value type, from the kernel");
  t.equal(kernel.resolveSize(btfValueTypeId), 16);
  const fn = kernel.type(kernel.findByName('rewrite_connect4', 'func')!);
  t.equal(kernel.type(fn.type!).kind, 'func_proto');
});
