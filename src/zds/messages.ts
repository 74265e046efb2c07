// The ZDS messages as the library speaks them: thin helpers over the protobuf-es code in gen/ (never a
// hand-rolled codec), plus the names errors and logs use for each kind.
import { create, fromBinary, toBinary } from '@bufbuild/protobuf';
import {
  AckSchema,
  AddWorkloadSchema,
  DelWorkloadSchema,
  KeepWorkloadSchema,
  SnapshotSentSchema,
  Version,
  WorkloadInfoSchema,
  WorkloadRequestSchema,
  WorkloadResponseSchema,
  ZdsHelloSchema,
  type WorkloadRequest,
  type ZdsHello,
} from './gen/zds_pb.ts';

/** What the node agent knows of a pod and tells ztunnel (AddWorkload.workload_info). */
export interface WorkloadInfo {
  name: string;
  namespace: string;
  /** The pod's spec.serviceAccountName. */
  serviceAccount: string;
}

/** Kind names used in errors and logs, one per WorkloadRequest payload. */
export type RequestKind = 'add' | 'keep' | 'del' | 'snapshot-sent';

export function addRequest(uid: string, info: WorkloadInfo | undefined): WorkloadRequest {
  const workloadInfo = info === undefined ? undefined : create(WorkloadInfoSchema, info);
  return create(WorkloadRequestSchema, {
    payload: { case: 'add', value: create(AddWorkloadSchema, { uid, workloadInfo }) },
  });
}

export function keepRequest(uid: string): WorkloadRequest {
  return create(WorkloadRequestSchema, { payload: { case: 'keep', value: create(KeepWorkloadSchema, { uid }) } });
}

export function delRequest(uid: string): WorkloadRequest {
  return create(WorkloadRequestSchema, { payload: { case: 'del', value: create(DelWorkloadSchema, { uid }) } });
}

export function snapshotSentRequest(): WorkloadRequest {
  return create(WorkloadRequestSchema, { payload: { case: 'snapshotSent', value: create(SnapshotSentSchema) } });
}

export function encodeRequest(req: WorkloadRequest): Uint8Array {
  return toBinary(WorkloadRequestSchema, req);
}

/** Throws (protobuf-es's error) on bytes that are not a WorkloadRequest. */
export function decodeRequest(bytes: Uint8Array): WorkloadRequest {
  return fromBinary(WorkloadRequestSchema, bytes);
}

export function encodeAck(error: string): Uint8Array {
  return toBinary(
    WorkloadResponseSchema,
    create(WorkloadResponseSchema, { payload: { case: 'ack', value: create(AckSchema, { error }) } }),
  );
}

/** The Ack's error text ('' = success), or undefined when the response carries no Ack. Throws on malformed bytes. */
export function decodeAck(bytes: Uint8Array): string | undefined {
  const resp = fromBinary(WorkloadResponseSchema, bytes);
  return resp.payload.case === 'ack' ? resp.payload.value.error : undefined;
}

export function encodeHello(version: Version = Version.V1): Uint8Array {
  return toBinary(ZdsHelloSchema, create(ZdsHelloSchema, { version }));
}

export function decodeHello(bytes: Uint8Array): ZdsHello {
  return fromBinary(ZdsHelloSchema, bytes);
}

export function requestKind(req: WorkloadRequest): RequestKind | undefined {
  switch (req.payload.case) {
    case 'add':
      return 'add';
    case 'keep':
      return 'keep';
    case 'del':
      return 'del';
    case 'snapshotSent':
      return 'snapshot-sent';
    default:
      return undefined;
  }
}

/** Version enum value -> its proto name ("V1"), for logs. */
export function versionName(v: number): string {
  const name = Object.entries(Version).find(([, value]) => value === v)?.[0];
  return name ?? `unknown(${v})`;
}

export { Version };
