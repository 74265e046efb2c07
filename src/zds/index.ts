// src/zds: the ZDS protocol (Istio's node agent <-> ztunnel workload discovery), both sides. Import from
// here only. The wire format is src/zds/zds.proto (generated into gen/); README.md lists the behaviours.
export { ZDS_MAX_MESSAGE, SeqpacketSocket, type Datagram, type PeerCred } from './transport.ts';
export { ZdsError, ZdsTimeoutError, ZdsNackError, ZdsClosedError, ZdsProtocolError, ZdsNoPeerError } from './errors.ts';
export type { WorkloadInfo } from './messages.ts';
export {
  ZDS_DEFAULT_SOCKET,
  ZDS_ACK_TIMEOUT_MS,
  ZdsServer,
  type SnapshotItem,
  type ZdsPeer,
  type ZdsServerOptions,
  type ZdsServerEvents,
} from './server.ts';
export { ZdsClient, type ZdsRequest, type ZdsVerdict, type ZdsClientOptions } from './client.ts';
/** The generated messages, for peers built by hand (tests playing a misbehaving agent or ztunnel). */
export * as zdsProto from './gen/zds_pb.ts';
/** Encoders/decoders over zdsProto used by both sides (raw peers in tests use them too). */
export {
  addRequest,
  keepRequest,
  delRequest,
  snapshotSentRequest,
  encodeRequest,
  decodeRequest,
  encodeAck,
  decodeAck,
  encodeHello,
  decodeHello,
} from './messages.ts';
