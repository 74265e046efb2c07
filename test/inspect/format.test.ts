// The pure formatting pieces, without a kernel: bpftool's JSON writer quirks, hex layout, C number
// parsing and the BTF dumper on a hand-built type model. (Byte-identity with the real bpftool is
// checked in compare.test.ts; these pin the quirks down so a refactor cannot lose them silently.)
import t from 'tap';
import { JsonWriter, quote } from '../../src/inspect/json-writer.ts';
import { Collector } from '../../src/inspect/context.ts';
import { formatHex, strtoul } from '../../src/inspect/hex.ts';
import { Btf, BTF_KIND, type BtfType } from '../../src/inspect/btf.ts';
import { dumpBtfType } from '../../src/inspect/btf-dumper.ts';
import { formatLocalTime, loadEpochSeconds } from '../../src/inspect/prog-show.ts';

t.test('json writer: pretty arrays of scalars stay on one line, objects join as },{', async (t) => {
  const out = new Collector();
  const w = new JsonWriter(out, true);
  w.startArray();
  for (const k of [1, 2]) {
    w.startObject();
    w.name('key');
    w.startArray();
    w.raw('"0x01"');
    w.raw(`"0x0${k}"`);
    w.endArray();
    w.endObject();
  }
  w.endArray();
  w.destroy();
  t.equal(
    out.text(),
    '[{\n        "key": ["0x01","0x01"\n        ]\n    },{\n        "key": ["0x01","0x02"\n        ]\n    }\n]\n',
  );
});

t.test('json strings: bpftool escapes a backslash as \\n and leaves single quotes alone', async (t) => {
  t.equal(quote('a\\b"c\'d\te'), '"a\\nb\\"c\'d\\te"');
  t.equal(quote('cut\0here'), '"cut"');
});

t.test('hex: two spaces after 8 bytes, a newline after 16', async (t) => {
  const b = Uint8Array.from({ length: 18 }, (_, i) => i);
  t.equal(formatHex(b), '00 01 02 03 04 05 06 07  08 09 0a 0b 0c 0d 0e 0f\n10 11');
  t.equal(formatHex(Uint8Array.from([0x44, 0x0a]), ''), '440a');
});

t.test('strtoul: base 0 and 16, whole word or nothing', async (t) => {
  t.equal(strtoul('0x1f', 0), 31n);
  t.equal(strtoul('010', 0), 8n);
  t.equal(strtoul('ff', 16), 255n);
  t.equal(strtoul('0xff', 16), 255n);
  t.equal(strtoul('12z', 0), undefined);
  t.equal(strtoul('0x', 0), undefined);
  t.equal(strtoul('-1', 0), (1n << 64n) - 1n);
});

function model(types: Omit<BtfType, 'vlen' | 'kindFlag'>[], kindFlagIds: number[] = []): Btf {
  return new Btf([undefined, ...types.map((x, i) => ({ vlen: 0, kindFlag: kindFlagIds.includes(i + 1), ...x }))]);
}

t.test('btf dumper: ints, chars, enums, bitfields, strings, plain vs JSON', async (t) => {
  const withFlag = model(
    [
      /* 1 */ { kind: BTF_KIND.INT, name: 'int', sizeOrType: 4, intData: (1 << 24) | 32 },
      /* 2 */ { kind: BTF_KIND.INT, name: 'char', sizeOrType: 1, intData: (1 << 24) | 8 },
      /* 3 */ { kind: BTF_KIND.ARRAY, name: '', sizeOrType: 0, array: { type: 2, indexType: 1, nelems: 4 } },
      /* 4 */ { kind: BTF_KIND.ENUM, name: 'e', sizeOrType: 4, enumValues: [{ name: 'NEG', value: -3n }] },
      /* 5 */ {
        kind: BTF_KIND.STRUCT,
        name: 's',
        sizeOrType: 16,
        members: [
          { name: 'i', type: 1, offset: 0 },
          { name: 's', type: 3, offset: 32 },
          { name: 'e', type: 4, offset: 64 },
          { name: 'bf', type: 1, offset: (5 << 24) | 98 },
          { name: 'p', type: 6, offset: 0 },
        ],
      },
      /* 6 */ { kind: BTF_KIND.PTR, name: '', sizeOrType: 0 },
    ],
    [5],
  );
  const data = Buffer.alloc(16);
  data.writeInt32LE(-7, 0);
  data.write('ab\0', 4, 'latin1');
  data.writeInt32LE(-3, 8);
  data[12] = 0b01111100; // bits 98..102 = 0b11111 (bit 98 is bit 2 of byte 12)
  for (const [plainText, want] of [
    // the pointer member sits at offset 0, so it reads the first 8 bytes: %p in plain text, %lu in JSON
    [true, '{"i":-7,"s":"ab","e":"NEG","bf":0x1f,"p":0x6261fffffff9}'],
    [false, '{"i":-7,"s":"ab","e":"NEG","bf":"0x1f","p":108173046317049}'],
  ] as const) {
    const out = new Collector();
    const w = new JsonWriter(out, false);
    t.equal(dumpBtfType({ btf: withFlag, jw: w, plainText }, 5, data), 0);
    t.equal(out.text(), want);
  }
});

t.test('btf dumper: a NULL pointer prints as (nil) in plain text', async (t) => {
  const btf = model([{ kind: BTF_KIND.PTR, name: '', sizeOrType: 0 }]);
  const out = new Collector();
  dumpBtfType({ btf, jw: new JsonWriter(out), plainText: true }, 1, new Uint8Array(8));
  t.equal(out.text(), '(nil)');
});

t.test('loaded_at: bpftool arithmetic and strftime layout', async (t) => {
  const c = { realSec: 1000n, realNsec: 900_000_000n, bootSec: 10n, bootNsec: 100_000_000n };
  t.equal(loadEpochSeconds(5_300_000_000n, c), 996n); // 990 + (0.8 s + 5.3 s) truncated
  t.match(formatLocalTime(0n), /^19(70|69)-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}$/);
});
