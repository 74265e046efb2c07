// The TS codecs must match ambpf.h byte for byte: compile a tiny C program against the real header
// with gcc, print every sizeof/offsetof/enum value, compare with src/bpf/schema.ts.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import * as schema from '../../src/bpf/schema.ts';
import { AddressError, bytesToIp, canonicalIp, ipToBytes } from '../../src/ip.ts';

const HEADER_DIR = resolve(import.meta.dirname, '../../bpf/include');

const HEADER = readFileSync(join(HEADER_DIR, 'ambpf.h'), 'utf8');
/** Every numeric AMBPF_* macro of the header (the include guard aside): the TS side mirrors each one. */
const HEADER_CONSTANTS = [...HEADER.matchAll(/^#define AMBPF_(\w+)[ \t]+\S/gm)]
  .map((m) => m[1]!)
  .filter((c) => !(schema.C_ONLY_CONSTANTS as readonly string[]).includes(c));

function cProgram(): string {
  const lines: string[] = [];
  for (const st of Object.values(schema.STRUCTS)) {
    lines.push(`printf("S ${st.name} %zu\\n", sizeof(struct ${st.name}));`);
    for (const f of Object.values(st.fields) as Array<{ c: string }>) {
      lines.push(`printf("F ${st.name}.${f.c} %zu\\n", offsetof(struct ${st.name}, ${f.c}));`);
      lines.push(`printf("Z ${st.name}.${f.c} %zu\\n", sizeof(((struct ${st.name} *)0)->${f.c}));`);
    }
  }
  schema.STAT_NAMES.forEach((n) => lines.push(`printf("E ${n} %d\\n", (int)AMBPF_STAT_${n.toUpperCase()});`));
  lines.push('printf("E max %d\\n", (int)AMBPF_STAT_MAX);');
  HEADER_CONSTANTS.forEach((c) => lines.push(`printf("C ${c} %lu\\n", (unsigned long)(AMBPF_${c}));`));
  return `#include <stdio.h>\n#include <stddef.h>\n#include "ambpf.h"\nint main(void) {\n${lines.join('\n')}\nreturn 0;\n}\n`;
}

t.test('schema.ts mirrors ambpf.h (gcc sizeof/offsetof/enum)', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ambpf-schema-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'layout.c'), cProgram());
  execFileSync('gcc', ['-Wall', '-Werror', '-I', HEADER_DIR, '-o', join(dir, 'layout'), join(dir, 'layout.c')]);
  const out = execFileSync(join(dir, 'layout'), { encoding: 'utf8' });
  const got = new Map<string, number>();
  for (const line of out.trim().split('\n')) {
    const [kind, name, value] = line.split(' ');
    got.set(`${kind} ${name}`, Number(value));
  }
  // The codecs read and write exactly these fields (src/bpf/layout.ts): offset and width both count.
  for (const st of Object.values(schema.STRUCTS)) {
    t.equal(got.get(`S ${st.name}`), st.size, `sizeof(struct ${st.name})`);
    for (const f of Object.values(st.fields) as Array<{ c: string; offset: number; type: { size: number } }>) {
      t.equal(got.get(`F ${st.name}.${f.c}`), f.offset, `offsetof(${st.name}, ${f.c})`);
      t.equal(got.get(`Z ${st.name}.${f.c}`), f.type.size, `sizeof(${st.name}.${f.c})`);
    }
  }
  t.same(Object.keys(schema.LAYOUT), Object.keys(schema.STRUCTS), 'LAYOUT is derived from STRUCTS');
  schema.STAT_NAMES.forEach((n, i) => t.equal(got.get(`E ${n}`), i, `AMBPF_STAT_${n.toUpperCase()}`));
  t.equal(got.get('E max'), schema.STAT_MAX, 'AMBPF_STAT_MAX: no C counter missing in STAT_NAMES');
  t.ok(HEADER_CONSTANTS.length > 20, "the header's constants were found");
  const tsConst = schema as unknown as Record<string, number>;
  for (const c of HEADER_CONSTANTS) t.equal(tsConst[c], got.get(`C ${c}`), `AMBPF_${c}`);
});

t.test('codecs round-trip and put bytes where C expects them', async (t) => {
  t.same([...ipToBytes('198.18.0.7')], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 255, 255, 198, 18, 0, 7]);
  t.equal(bytesToIp(ipToBytes('::ffff:198.18.0.7')), '198.18.0.7');
  for (const ip of ['fd16:9254:7127:1337:ffff:ffff:ffff:ffff', '2001:db8::1', '::1', 'fe80::', '1::2:0:0:3']) {
    t.equal(bytesToIp(ipToBytes(ip)), ip, `IPv6 ${ip} round-trips`);
  }
  t.throws(() => ipToBytes('198.18.0.300'), AddressError);
  t.throws(() => ipToBytes('fe80::1%eth0'), AddressError, 'a zone is not an address the maps can hold');
  t.equal(canonicalIp('2001:DB8:0:0::1'), '2001:db8::1');
  t.equal(canonicalIp('::ffff:198.18.0.7'), '198.18.0.7', 'a v4-mapped address is the IPv4 address');
  t.equal(canonicalIp('64:ff9b::198.18.0.7'), '64:ff9b::c612:7');
  t.equal(canonicalIp('198.018.0.1'), undefined);
  t.equal(canonicalIp(''), undefined);

  const pod = { netnsCookie: 0x1122334455667788n, hostIfindex: 42, flags: schema.POD_AMBIENT };
  t.same(schema.decodePod(schema.encodePod(pod)), pod);
  t.equal(Buffer.from(schema.encodePod(pod)).readBigUInt64LE(0), pod.netnsCookie, 'cookie in host order');

  const ns = { podIp: '198.18.1.2', flags: schema.POD_AMBIENT | schema.POD_IS_ZTUNNEL };
  t.same(schema.decodeNetns(schema.encodeNetns(ns)), ns);

  const zt = schema.ztunnelValue({
    ip: '198.18.1.9',
    netnsCookie: 7n,
    hostIfindex: 3,
    mac: '02:00:00:00:00:01',
    hostMac: '02:00:00:00:00:02',
  });
  const ztb = schema.encodeZtunnel(zt);
  t.same(schema.decodeZtunnel(ztb), zt);
  t.equal(Buffer.from(ztb).readUInt16LE(60), 15001, 'port_out_host is host order');
  t.throws(() => schema.encodeZtunnel({ ...zt, ip: '2001:db8::1' }), schema.SchemaError);

  const cfg = schema.defaultConfig({ excludedPorts: [22, 15020], nodeIps: ['198.18.0.1', '2001:db8::5'] });
  const cfgb = schema.encodeConfig(cfg);
  t.same(schema.decodeConfig(cfgb), cfg);
  t.equal(Buffer.from(cfgb).readUInt16BE(40), 22, 'excluded ports are network order');
  t.throws(() => schema.encodeConfig({ ...cfg, excludedPorts: Array<number>(17).fill(1) }), schema.SchemaError);
  t.throws(() => schema.encodeConfig({ ...cfg, excludedPorts: [0] }), schema.SchemaError);

  const tuple = { localIp: '198.18.1.2', localPort: 40000, remoteIp: '198.18.1.9', remotePort: 15001 };
  const tb = schema.encodeTuple(tuple);
  t.same(schema.decodeTuple(tb), tuple);
  t.equal(Buffer.from(tb).readUInt16BE(34), 15001);

  const pair = {
    orig: { ip: '198.18.5.5', port: 80, family: schema.AF_INET },
    spliceFwd: schema.SPLICE_ON,
    spliceRev: schema.SPLICE_OFF,
    ztSeen: 1,
    closed: 1,
  };
  t.same(schema.decodePair(schema.encodePair(pair)), pair);
  t.same(schema.decodeOrig(schema.encodeOrig(pair.orig)), pair.orig);

  const flow = { saddr: '198.18.2.1', daddr: '198.18.1.2', sport: 33333, dport: 8080 };
  t.same(schema.decodeFlow4(schema.encodeFlow4(flow)), flow);
  t.equal(schema.decodeU64Key(schema.encodeU64Key(99n)), 99n);
  t.throws(() => schema.macToBytes('02:00:00'), schema.SchemaError);
  t.throws(() => schema.decodePod(new Uint8Array(3)), schema.SchemaError);

  const a = new Uint8Array(8);
  Buffer.from(a.buffer).writeBigUInt64LE(5n);
  const b = new Uint8Array(8);
  Buffer.from(b.buffer).writeBigUInt64LE(6n);
  t.equal(schema.sumPerCpu([a, b]), 11n);
  t.equal(schema.statIndex('tc_steered'), schema.STAT_NAMES.indexOf('tc_steered'));
});
