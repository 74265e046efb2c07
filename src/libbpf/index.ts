// libbpf-ts: a typed binding of the system libbpf.so.1 over koffi. Every handle is a class with an
// explicit close(); failures are LibbpfError (function, errno, names, verifier log).
export { BpfObject, BpfObjectFileError, type OpenOptions } from './object.ts';
export { BpfProgram, SkMsgAttachment, type TestRunOptions, type TestRunResult } from './program.ts';
export { BpfMap, numPossibleCpus, type MapCreateOptions } from './map.ts';
export { BpfLink } from './link.ts';
export {
  TcAttachment,
  attachTcx,
  attachClsact,
  destroyClsact,
  resolveIfindex,
  type TcDirection,
  type TcMode,
  type TcAttachOptions,
} from './tc.ts';
export {
  LibbpfError,
  MapFullError,
  UnknownNameError,
  ClosedHandleError,
  libbpfStrerror,
  verifierTail,
} from './errors.ts';
export {
  mapInfoByFd,
  progInfoByFd,
  progFuncInfo,
  attachedProgIds,
  linkInfoByFd,
  btfInfoByFd,
  listIds,
  fdById,
  withFdById,
  fdinfo,
  kindOfFd,
  openPinnedFd,
  pinFd,
  type MapInfo,
  type ProgInfo,
  type FuncInfo,
  type LinkInfo,
  type BtfInfo,
  type ObjKind,
} from './info.ts';
export { BpfRunTimeStats, bpfStatsSysctl, progRunStats, statsCostPerRunNs, type ProgRunStats } from './stats.ts';
export { clockGettime, bootTimeNs, bootEpochParts, CLOCKS, type ClockName, type Timespec } from './clock.ts';
export { withNetns, inNetns } from './netns.ts';
export { copyFdOf, withFdOf } from './pidfd.ts';
export { netnsCookie, currentNetnsCookie, socketCookie, ifIndex, ifName, isTransparent } from './sockets.ts';
export { Btf, BTF_KINDS, type BtfTypeInfo, type BtfMemberInfo, type BtfKindName } from './btf.ts';
export { probeProgType, probeMapType, probeHelper, probeHelperByLoad } from './probe.ts';
export { RawProgram, insn, MOV64_IMM, CALL, EXIT, type RawLoadResult } from './rawprog.ts';
export * from './constants.ts';
