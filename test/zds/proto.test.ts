// zds.proto against the wire contract (ztunnel's proto/zds.proto): field numbers, oneof cases, the
// reserved field, the wire bytes of the messages whose numbers are easy to get wrong; every message
// kind survives encode/decode; and the committed src/zds/gen/ is exactly what buf generates today.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { create, fromBinary, toBinary } from '@bufbuild/protobuf';
import {
  addRequest,
  decodeAck,
  decodeHello,
  decodeRequest,
  delRequest,
  encodeAck,
  encodeHello,
  encodeRequest,
  keepRequest,
  snapshotSentRequest,
  zdsProto,
} from '../../src/zds/index.ts';

const repo = resolve(import.meta.dirname, '../..');

t.test('field numbers and oneof cases match the wire contract', async (t) => {
  // Proto names (not the TS field names): the names are part of the contract too.
  const fields = (schema: { fields: readonly { name: string; number: number }[] }): Record<string, number> =>
    Object.fromEntries(schema.fields.map((f) => [f.name, f.number]));
  t.same(fields(zdsProto.ZdsHelloSchema), { version: 1 });
  t.same(fields(zdsProto.WorkloadInfoSchema), { name: 1, namespace: 2, service_account: 3 });
  t.same(fields(zdsProto.AddWorkloadSchema), { uid: 1, workload_info: 2 });
  t.same(fields(zdsProto.KeepWorkloadSchema), { uid: 1 });
  t.same(fields(zdsProto.DelWorkloadSchema), { uid: 2 }, 'DelWorkload.uid is field 2');
  t.same(fields(zdsProto.SnapshotSentSchema), {});
  t.same(fields(zdsProto.AckSchema), { error: 1 });
  t.same(fields(zdsProto.WorkloadRequestSchema), { add: 1, del: 2, snapshot_sent: 3, keep: 5 });
  t.same(fields(zdsProto.WorkloadResponseSchema), { ack: 1 });
  t.same(
    zdsProto.WorkloadRequestSchema.oneofs.map((o) => o.name),
    ['payload'],
  );
  t.same(zdsProto.Version, { NOT_USED: 0, V1: 1 });
  t.equal(zdsProto.WorkloadInfoSchema.typeName, 'istio.workload.zds.WorkloadInfo');
  // WorkloadInfo reserves 4 (the old trust_domain): the descriptor proto carries the range.
  const proto = zdsProto.WorkloadInfoSchema.proto;
  t.same(
    proto.reservedRange.map((r) => [r.start, r.end]),
    [[4, 5]],
  );
  t.same(proto.reservedName, ['trust_domain']);
});

t.test('wire bytes: Del uid is tag 2, Keep is oneof 5, hello V1 and an empty ack', async (t) => {
  // WorkloadRequest{del(2): DelWorkload{uid(2): "u"}} = 12 03 12 01 75
  t.same([...encodeRequest(delRequest('u'))], [0x12, 3, 0x12, 1, 0x75]);
  // WorkloadRequest{keep(5): KeepWorkload{uid(1): "u"}} = 2a 03 0a 01 75
  t.same([...encodeRequest(keepRequest('u'))], [0x2a, 3, 0x0a, 1, 0x75]);
  t.same([...encodeRequest(snapshotSentRequest())], [0x1a, 0]);
  t.same([...encodeHello()], [0x08, 1]);
  t.same([...encodeAck('')], [0x0a, 0]);
});

t.test('every message kind survives encode and decode', async (t) => {
  const info = { name: 'web-0', namespace: 'shop', serviceAccount: 'web' };
  const add = decodeRequest(encodeRequest(addRequest('uid-a', info)));
  t.equal(add.payload.case, 'add');
  if (add.payload.case === 'add') {
    t.equal(add.payload.value.uid, 'uid-a');
    t.match(add.payload.value.workloadInfo, info);
  }
  const bare = decodeRequest(encodeRequest(addRequest('uid-b', undefined)));
  t.ok(
    bare.payload.case === 'add' && bare.payload.value.workloadInfo === undefined,
    'an Add without workload_info stays without',
  );
  const keep = decodeRequest(encodeRequest(keepRequest('uid-k')));
  t.ok(keep.payload.case === 'keep' && keep.payload.value.uid === 'uid-k');
  const del = decodeRequest(encodeRequest(delRequest('uid-d')));
  t.ok(del.payload.case === 'del' && del.payload.value.uid === 'uid-d');
  t.equal(decodeRequest(encodeRequest(snapshotSentRequest())).payload.case, 'snapshotSent');
  t.equal(decodeHello(encodeHello()).version, zdsProto.Version.V1);
  t.equal(decodeAck(encodeAck('')), '');
  t.equal(decodeAck(encodeAck('bind: EADDRINUSE')), 'bind: EADDRINUSE');
  const empty = toBinary(zdsProto.WorkloadResponseSchema, create(zdsProto.WorkloadResponseSchema));
  t.equal(decodeAck(empty), undefined, 'a response without an Ack is told apart');
  t.throws(
    () => fromBinary(zdsProto.WorkloadRequestSchema, new Uint8Array([0x0a, 0x05, 0x01])),
    'truncated bytes do not decode',
  );
});

t.test('src/zds/gen is what buf generates from zds.proto', async (t) => {
  const out = mkdtempSync(join(tmpdir(), 'ambpf-zds-gen-'));
  t.teardown(() => rmSync(out, { recursive: true, force: true }));
  const bin = join(repo, 'node_modules/.bin');
  const nodeBin = join(repo, 'node_modules/node/bin');
  const r = spawnSync(join(bin, 'buf'), ['generate', '--output', out], {
    cwd: join(repo, 'src/zds'),
    encoding: 'utf8',
    timeout: 60_000,
    env: { ...process.env, PATH: `${nodeBin}:${bin}:${process.env['PATH'] ?? ''}` },
  });
  t.equal(r.status, 0, `buf generate: ${r.stderr}`);
  const fresh = readFileSync(join(out, 'gen/zds_pb.ts'), 'utf8');
  const committed = readFileSync(join(repo, 'src/zds/gen/zds_pb.ts'), 'utf8');
  t.ok(fresh === committed, 'src/zds/gen/zds_pb.ts is stale: run `npm run gen:zds` and commit the result');
  t.match(committed, /@generated by protoc-gen-es/);
  t.match(committed, /do not edit it/);
});
