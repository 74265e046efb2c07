// The ZDS client-side shapes the stand-in codes against (coord contract of src/zds). Kept in one file
// so the switch to `src/zds/index.ts` is one line once that library has landed.
export interface WorkloadInfo {
  readonly name: string;
  readonly namespace: string;
  readonly serviceAccount: string;
}

export type ZdsRequest =
  | { kind: 'add'; uid: string; info: WorkloadInfo | undefined; netnsFd: number | undefined; fdCount: number }
  | { kind: 'keep'; uid: string }
  | { kind: 'del'; uid: string }
  | { kind: 'snapshot-sent' };

/** ack (error '' = success), reconnect (nack, then drop the connection) or exit (nack, then exit 1). */
export type ZdsVerdict = { ack: string } | { reconnect: string } | { exit: string };
