// The ZDS client-side shapes the stand-in codes against, from the ZDS library (src/zds).
export type { WorkloadInfo, ZdsRequest, ZdsVerdict } from '../../zds/index.ts';
